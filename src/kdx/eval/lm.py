"""Fidelity of a causal-LM student, per token, one row per held-out distribution (`eval.distributions`:
held-out corpus windows `test`, `train_subset`; the teacher's and the student's own seeded completions
of held-out prompts, `teacher_samples` and `student_samples`, kdx.eval.heldout).

On each row's counted positions (a window's real next tokens; a sample's completion): KL(t||s) and
KL(s||t), top-1 next-token agreement, total variation, each model's next-token accuracy, NLL and
perplexity of the row's actual tokens (on student samples, the teacher's NLL is the quality proxy),
and on sampled rows distinct-2 of the completions (diversity). Intervals resample whole sequences
(positions within one are not independent). Everything is seeded: a run evaluated twice gives the same numbers.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from kdx.config import EvalConfig
from kdx.data.base import Dataset
from kdx.data.lm_text import lm_targets
from kdx.eval import distribution_names
from kdx.eval import heldout
from kdx.registry import HELDOUT

PER_SEQUENCE = ("kl_teacher_student", "kl_student_teacher", "agreement", "tv", "teacher_acc", "student_acc",
                "teacher_nll", "student_nll")


def heldout_tokens(name: str, data: Dataset, cfg: EvalConfig, teacher, student) -> tuple[torch.Tensor, torch.Tensor]:
    """The row's token ids (N, L) and the mask of its counted positions."""
    spec = heldout.parse(name)
    if "teacher" in HELDOUT.get(spec["name"]).context:  # sampled by the trained models
        x, mask = HELDOUT.build(spec, f"eval.distributions: '{name}'", data=data, n=cfg.n, seed=cfg.seed,
                                teacher=teacher, student=student)
        return x, mask
    x = heldout.load(name, data, cfg.n, cfg.seed).x
    return x, lm_targets(x, data.pad_id, data.tokenizer.eos_id if data.tokenizer else None)[1]


@torch.no_grad()
def per_sequence_sums(teacher, student, x: torch.Tensor, mask: torch.Tensor, batch_size: int = 16) -> dict:
    """Each metric summed over each sequence's counted positions (float64), and the counts."""
    device = next(student.parameters()).device
    was = teacher.training, student.training
    teacher.eval()
    student.eval()
    sums = {k: [] for k in (*PER_SEQUENCE, "positions")}
    for i in range(0, len(x), batch_size):
        xb, mb = x[i:i + batch_size].to(device), mask[i:i + batch_size].to(device)
        seq, pos = mb.nonzero(as_tuple=True)  # the counted positions only go through the float64 softmaxes
        yb = torch.cat([xb[:, 1:], xb[:, :1]], 1)[seq, pos]  # their next tokens
        lt, ls = (torch.log_softmax(m(xb)[seq, pos].double(), -1) for m in (teacher, student))
        pt, ps = lt.exp(), ls.exp()
        rows = {
            "kl_teacher_student": (pt * (lt - ls)).sum(-1), "kl_student_teacher": (ps * (ls - lt)).sum(-1),
            "agreement": (lt.argmax(-1) == ls.argmax(-1)).double(), "tv": 0.5 * (pt - ps).abs().sum(-1),
            "teacher_acc": (lt.argmax(-1) == yb).double(), "student_acc": (ls.argmax(-1) == yb).double(),
            "teacher_nll": -lt.gather(-1, yb[:, None])[:, 0], "student_nll": -ls.gather(-1, yb[:, None])[:, 0],
            "positions": torch.ones_like(yb, dtype=torch.float64),
        }
        for k, v in rows.items():  # summed per sequence of the batch
            sums[k].append(torch.zeros(len(xb), dtype=torch.float64, device=device).index_add_(0, seq, v).cpu())
    teacher.train(was[0])
    student.train(was[1])
    return {k: torch.cat(v).numpy() for k, v in sums.items()}


def distinct_2(x: torch.Tensor, mask: torch.Tensor) -> float:
    """Distinct bigrams over all bigrams of the sampled tokens (the tokens after the counted positions)."""
    grams, total = set(), 0
    for row, m in zip(x.tolist(), mask.tolist()):
        toks = [row[i + 1] for i, keep in enumerate(m) if keep]
        grams.update(zip(toks, toks[1:]))
        total += max(len(toks) - 1, 0)
    return len(grams) / total if total else float("nan")


def sequence_bootstrap_ci(numer: np.ndarray, denom: np.ndarray, n: int, seed: int) -> list[float]:
    """95% percentile interval of sum(numer)/sum(denom) over sequences resampled with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(numer), size=(n, len(numer)))
    stats = numer[idx].sum(1) / np.maximum(denom[idx].sum(1), 1)
    return [float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))]


def lm_metrics(sums: dict, bootstrap: int, seed: int) -> dict:
    tokens = float(sums["positions"].sum())
    out = {"n": int(len(sums["positions"])), "tokens": int(tokens)}
    for k in PER_SEQUENCE:
        out[k] = float(sums[k].sum() / max(tokens, 1))
    out["teacher_ppl"], out["student_ppl"] = math.exp(out["teacher_nll"]), math.exp(out["student_nll"])
    out["kl_teacher_student_ci"] = sequence_bootstrap_ci(sums["kl_teacher_student"], sums["positions"], bootstrap, seed)
    out["agreement_ci"] = sequence_bootstrap_ci(sums["agreement"], sums["positions"], bootstrap, seed)
    # the classifier rows' keys, so the tables and study reports read LM rows too: accuracy is next-token
    out["acc_diff"] = out["student_acc"] - out["teacher_acc"]
    out["acc_diff_ci"] = sequence_bootstrap_ci(sums["student_acc"] - sums["teacher_acc"], sums["positions"], bootstrap, seed)
    out.update(teacher_ece=None, student_ece=None, mcnemar_p=None)
    return out


def evaluate_lm(teacher: torch.nn.Module, student: torch.nn.Module, data: Dataset, cfg: EvalConfig) -> dict:
    """One row of per-token fidelity metrics per held-out distribution of an LM run."""
    results = {}
    for name in distribution_names(cfg, data):
        x, mask = heldout_tokens(name, data, cfg, teacher, student)
        row = lm_metrics(per_sequence_sums(teacher, student, x, mask, max(1, cfg.batch_size // 64)),
                         cfg.bootstrap, cfg.seed)
        if "teacher" in HELDOUT.get(heldout.parse(name)["name"]).context:
            row["distinct_2"] = distinct_2(x, mask)
        results[name] = row
    return results


def lm_curve(teacher: torch.nn.Module, data: Dataset, n: int = 256):
    """The loop's learning curve for LMs: next-token accuracy, agreement and KL(t||s) per token on the
    first n held-out windows (eval mode, no randomness: training is unchanged)."""
    x = data.x_test[:n]
    mask = lm_targets(x, data.pad_id, data.tokenizer.eos_id if data.tokenizer else None)[1]

    def score(student: torch.nn.Module) -> dict:
        sums = per_sequence_sums(teacher, student, x, mask)
        tokens = max(float(sums["positions"].sum()), 1.0)
        return {"test_acc": float(sums["student_acc"].sum() / tokens),
                "test_agreement": float(sums["agreement"].sum() / tokens),
                "test_kl_teacher_student": float(sums["kl_teacher_student"].sum() / tokens)}
    return score
