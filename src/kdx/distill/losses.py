"""Distillation losses, registered. Each takes (student_logits, teacher_logits, labels, temperature)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from kdx.errors import KdxError
from kdx.registry import LOSSES

_ARGS = ("student_logits", "teacher_logits", "labels", "temperature")
NEEDS_LABELS = {"onehot"}  # every other loss needs the teacher and ignores labels


@LOSSES.register(context=_ARGS)
def kl(student_logits, teacher_logits, labels, temperature) -> torch.Tensor:
    """KL(teacher_T || student_T) on softened probabilities, times T^2 (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * t * t


@LOSSES.register(context=_ARGS)
def soft_ce(student_logits, teacher_logits, labels, temperature) -> torch.Tensor:
    """Cross-entropy to the teacher's softened probabilities, times T^2 (KL plus the teacher's entropy)."""
    t = temperature
    return -(F.softmax(teacher_logits / t, 1) * F.log_softmax(student_logits / t, 1)).sum(1).mean() * t * t


@LOSSES.register(context=_ARGS)
def mse_logits(student_logits, teacher_logits, labels, temperature) -> torch.Tensor:
    """Squared L2 between logits, averaged over classes and inputs."""
    return F.mse_loss(student_logits, teacher_logits)


@LOSSES.register(context=_ARGS)
def smooth_l1_logits(student_logits, teacher_logits, labels, temperature) -> torch.Tensor:
    """Smooth L1 (Huber, beta 1) between logits."""
    return F.smooth_l1_loss(student_logits, teacher_logits)


@LOSSES.register(context=(*_ARGS, "mask"))
def onehot(student_logits, teacher_logits, labels, temperature, mask=None) -> torch.Tensor:
    """Cross-entropy to the labels (hard, or soft after mixup); no teacher. LM: next-token cross-entropy."""
    if student_logits.ndim == 3:  # (N, L, V) logits, (N, L) next-token labels, counted where `mask`
        ce = F.cross_entropy(student_logits.flatten(0, 1), labels.flatten(), reduction="none")
        weight = torch.ones_like(ce) if mask is None else mask.flatten().to(ce.dtype)
        return (ce * weight).sum() / weight.sum().clamp_min(1.0)
    return F.cross_entropy(student_logits, labels)


# ---------------------------------------------------------------------------------------------- tokens
# Token-level losses for causal LMs: logits (N, L, V), `mask` (N, L) bool marks the positions whose
# next-token distribution counts (for prompted samples: the completion only); the value is the mean
# over counted positions. Positions are processed in chunks of TOKEN_CHUNK rows, each under activation
# checkpointing, so the softmaxes, the mixture and their gradients of both models exist for one chunk
# at a time, never for the whole (N, L, V) tensor (only the two logits tensors are whole).
TOKEN_ARGS = (*_ARGS, "mask")
TOKEN_CHUNK = 1024  # positions per chunk
TOKEN_LOSSES: set[str] = {"onehot"}  # losses that take (N, L, V) logits and a mask (kdx.run refuses others on LM data)


def check_loss_fits(loss: str, data) -> None:
    """Token losses on LM data only, and only they (and onehot) on it: refused before any training."""
    lm = data.modality == "lm"
    if lm and loss not in TOKEN_LOSSES:
        raise KdxError(f"distill.loss={loss} compares one distribution per input; LM data (dataset '{data.name}') "
                       f"needs a token-level loss: {', '.join(sorted(TOKEN_LOSSES))}")
    if not lm and loss in TOKEN_LOSSES - {"onehot"}:
        raise KdxError(f"distill.loss={loss} is a token-level loss for causal LMs; dataset '{data.name}' holds "
                       f"{data.modality} data: use kl, soft_ce, mse_logits or smooth_l1_logits")


def _token_mean(per_position, student_logits, teacher_logits, mask, temperature) -> torch.Tensor:
    """Mean over the masked positions of `per_position(log_p_student, log_p_teacher) -> (rows,)`, chunked."""
    vocab = student_logits.shape[-1]
    s, t = student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab)
    m = (torch.ones(s.shape[0], dtype=torch.bool, device=s.device) if mask is None else mask.reshape(-1))
    weight = m.to(s.dtype)

    def chunk(sc, tc, wc):
        ls, lt = F.log_softmax(sc / temperature, -1), F.log_softmax(tc / temperature, -1)
        return (per_position(ls, lt) * wc).sum()

    total = s.new_zeros(())
    for i in range(0, s.shape[0], TOKEN_CHUNK):
        args = (s[i:i + TOKEN_CHUNK], t[i:i + TOKEN_CHUNK], weight[i:i + TOKEN_CHUNK])
        total = total + (checkpoint(chunk, *args, use_reentrant=False) if torch.is_grad_enabled() else chunk(*args))
    return total / weight.sum().clamp_min(1.0)


def _kl_rows(log_p, log_q) -> torch.Tensor:
    """KL(p || q) per row, from log-probabilities (0 log 0 = 0)."""
    return torch.where(log_p > -torch.inf, log_p.exp() * (log_p - log_q), 0.0).sum(-1)


def _log_mix(log_p, log_q, w: float) -> torch.Tensor:
    """log(w p + (1 - w) q) from log p and log q, mixing the probabilities (never the log-probabilities)."""
    return torch.logaddexp(log_p + math.log(w), log_q + math.log1p(-w))


def _token_loss(name: str):
    def deco(fn):
        TOKEN_LOSSES.add(name)
        return LOSSES.register(name, context=TOKEN_ARGS)(fn)
    return deco


@_token_loss("forward_kl")
def forward_kl(student_logits, teacher_logits, labels, temperature, mask=None) -> torch.Tensor:
    """Per-token KL(teacher || student) (supervised KD; mean-seeking), times T^2; (N, L, V) logits."""
    return _token_mean(lambda ls, lt: _kl_rows(lt, ls), student_logits, teacher_logits, mask,
                       temperature) * temperature ** 2


@_token_loss("reverse_kl")
def reverse_kl(student_logits, teacher_logits, labels, temperature, mask=None) -> torch.Tensor:
    """Per-token KL(student || teacher) (mode-seeking, MiniLLM's direction), times T^2; (N, L, V) logits."""
    return _token_mean(lambda ls, lt: _kl_rows(ls, lt), student_logits, teacher_logits, mask,
                       temperature) * temperature ** 2


@_token_loss("jsd")
def jsd(student_logits, teacher_logits, labels, temperature, mask=None, beta: float = 0.5) -> torch.Tensor:
    """Generalized JSD(beta) (GKD): beta KL(t||m) + (1-beta) KL(s||m), m = beta p_t + (1-beta) p_s; beta 0/1: forward/reverse KL."""
    if not 0.0 <= beta <= 1.0:
        raise KdxError(f"loss 'jsd': beta={beta} must be in [0, 1] (0: forward KL, 1: reverse KL)")
    # The ends by definition: the interior formula tends to 0 (not to the KLs) as beta -> 0 or 1.
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, labels, temperature, mask)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, labels, temperature, mask)

    def rows(ls, lt):
        lm = _log_mix(lt, ls, beta)
        return beta * _kl_rows(lt, lm) + (1 - beta) * _kl_rows(ls, lm)
    return _token_mean(rows, student_logits, teacher_logits, mask, temperature) * temperature ** 2


def _skewed_kl(student_logits, teacher_logits, temperature, mask, skew: float, reverse: bool) -> torch.Tensor:
    """KL(p || a p + (1-a) q) per token, times T^2: p the teacher (forward) or the student (reverse)."""
    name = "skew_reverse_kl" if reverse else "skew_kl"
    if not 0.0 <= skew < 1.0:
        raise KdxError(f"loss '{name}': skew={skew} must be in [0, 1) (DistiLLM uses 0.1; 0 is the plain KL)")

    def rows(ls, lt):
        p, q = (ls, lt) if reverse else (lt, ls)
        return _kl_rows(p, q if skew == 0.0 else _log_mix(p, q, skew))
    return _token_mean(rows, student_logits, teacher_logits, mask, temperature) * temperature ** 2


@_token_loss("skew_kl")
def skew_kl(student_logits, teacher_logits, labels, temperature, mask=None, skew: float = 0.1) -> torch.Tensor:
    """DistiLLM's skew KL: KL(p_t || a p_t + (1-a) p_s) with a = `skew` (0.1 in the paper; 0: forward KL)."""
    return _skewed_kl(student_logits, teacher_logits, temperature, mask, skew, reverse=False)


@_token_loss("skew_reverse_kl")
def skew_reverse_kl(student_logits, teacher_logits, labels, temperature, mask=None, skew: float = 0.1) -> torch.Tensor:
    """DistiLLM's skew reverse KL: KL(p_s || a p_s + (1-a) p_t) with a = `skew` (0: reverse KL)."""
    return _skewed_kl(student_logits, teacher_logits, temperature, mask, skew, reverse=True)


@_token_loss("tv")
def tv(student_logits, teacher_logits, labels, temperature, mask=None) -> torch.Tensor:
    """Per-token total variation 0.5 sum |p_t - p_s| at temperature T (bounded in [0, 1]; not scaled)."""
    return _token_mean(lambda ls, lt: 0.5 * (lt.exp() - ls.exp()).abs().sum(-1), student_logits, teacher_logits,
                       mask, temperature)
