"""HotFlip-style token substitutions (Ebrahimi et al., arXiv 1712.06751) as teacher-guided text synthesis.

Start from token sequences (unigram noise shaped like the train set, or train inputs), then `flips`
times substitute one token per sequence: for `positions` random content positions, score every
candidate token v by the first-order change of the objective, (E[v] - E[x_i]) . dL/de_i, from the
gradient at the embedding layer's output, and apply the best (position, token) of each row.
Objectives: `class` lowers the teacher's cross-entropy toward a random target class per sequence;
`discrepancy` raises KL(teacher || student), scoring the change in both models' embeddings (each
model's own table). Only non-special, non-padding tokens are replaced and only by such tokens, so
every output has valid ids and the mask (ids != pad) of its start.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdx.data.base import Dataset, model_input
from kdx.errors import KdxError
from kdx.models import predict
from kdx.registry import SOURCES
from kdx.sampling.base import Source, step_generator
from kdx.sampling.synthesis import SynthesisSource
from kdx.sampling.text import random_sequences


def embedding_layer(model: torch.nn.Module) -> torch.nn.Embedding:
    """The token embedding table: the model's `input_embeddings()` (kdx text models,
    transformers' get_input_embeddings), else its first nn.Embedding."""
    for name in ("input_embeddings", "get_input_embeddings"):
        if hasattr(model, name):
            return getattr(model, name)()
    for m in model.modules():
        if isinstance(m, torch.nn.Embedding):
            return m
    raise KdxError(f"source 'hotflip': {type(model).__name__} has no token embedding layer (nn.Embedding)")


def embedding_grads(models, emb_layers, x, objective):
    """Per model, the gradient of objective(logits...) at its embedding layer's output, (N, L, D)."""
    outs, handles = [], []
    for layer in emb_layers:
        def hook(m, inputs, output, store=outs):
            o = output.detach().requires_grad_(True)
            store.append(o)
            return o
        handles.append(layer.register_forward_hook(hook))
    try:
        logits = [m(x) for m in models]
    finally:
        for h in handles:
            h.remove()
    loss = objective(*logits)
    return torch.autograd.grad(loss, outs), loss.detach()


class HotFlipSource(SynthesisSource):
    method, hint = "hotflip", "check the models"
    modalities = ("text",)

    def __init__(self, data, seed, *, start, objective, flips, positions, **pool):
        super().__init__(data, seed, **pool)
        if start not in ("unigram", "uniform", "train"):
            raise KdxError(f"source 'hotflip': start must be unigram, uniform or train, got '{start}'")
        if objective not in ("class", "discrepancy"):
            raise KdxError(f"source 'hotflip': objective must be class or discrepancy, got '{objective}'")
        if flips < 0 or positions < 1:
            raise KdxError("source 'hotflip': flips must be >= 0 and positions >= 1")
        self.start, self.objective, self.flips, self.positions = start, objective, flips, positions
        self.needs_student = objective == "discrepancy"

    def setup(self, device, teacher_logits_fn, teacher=None, student=None) -> None:
        Source.setup(self, device, teacher_logits_fn)
        if teacher is None:
            raise KdxError("source 'hotflip' makes inputs with the teacher, so it cannot train one; use it to distil a student")
        if self.needs_student and student is None:
            raise KdxError("source 'hotflip' with objective=discrepancy plays against the student, but got none")
        self.teacher, self.student = teacher, student
        self.cand = self.data.candidate_ids().to(device)
        self.specials = torch.tensor(self.data.special_ids or [-1], device=device)

    def synthesize(self, step: int) -> torch.Tensor:
        d, g, n = self.data, step_generator(self.seed, step, self.device, "hotflip"), self.synth_batch
        if self.start == "train":
            idx = torch.randint(len(d.x_train), (n,), generator=g, device=self.device)
            x = model_input(d.x_train[idx.cpu()].to(self.device))
        else:
            x = random_sequences(d, n, g, self.device, self.start)
        content = (x != d.pad_id) & ~torch.isin(x, self.specials)
        rows = torch.arange(n, device=self.device)
        targets = torch.randint(d.num_classes, (n,), generator=g, device=self.device)
        models = [self.teacher] + ([self.student] if self.objective == "discrepancy" else [])
        tables = [embedding_layer(m) for m in models]
        if self.objective == "class":
            objective = lambda t: F.cross_entropy(t.float(), targets, reduction="sum")  # noqa: E731 - lowered
        else:
            objective = lambda t, s: -(F.softmax(t.float(), 1) * (F.log_softmax(t.float(), 1)  # noqa: E731 - KL raised
                                                                  - F.log_softmax(s.float(), 1))).sum()
        was_training = [m.training for m in models]
        for m in models:
            m.eval()  # dropout off: the scores are of the deterministic models
        try:
            for _ in range(self.flips):
                grads, _ = embedding_grads(models, tables, x, objective)
                # `positions` random content positions per row (rows with no content are left alone)
                r = torch.rand(x.shape, generator=g, device=self.device).masked_fill(~content, 2.0)
                pos = r.topk(min(self.positions, x.shape[1]), 1, largest=False).indices  # (n, k)
                valid = content.gather(1, pos)
                score = 0
                for table, grad in zip(tables, grads):
                    gk = grad.gather(1, pos.unsqueeze(-1).expand(-1, -1, grad.shape[-1]))  # (n, k, D)
                    w = table.weight.detach()
                    new = gk @ w[self.cand].T  # (n, k, V')
                    old = (gk * w[x.gather(1, pos)]).sum(-1, keepdim=True)
                    score = score + (new - old)
                score = score.masked_fill(~valid.unsqueeze(-1), float("inf"))
                best = score.flatten(1).argmin(1)  # the largest first-order decrease of the objective
                k_best, v_best = best // len(self.cand), best % len(self.cand)
                ok = valid[rows, k_best]
                p = pos[rows, k_best]
                x = x.clone()
                x[rows[ok], p[ok]] = self.cand[v_best[ok]]
        finally:
            for m, t in zip(models, was_training):
                m.train(t)
        return x

    def make(self, step: int):
        """A new batch and the teacher's logits on it; checks that ids are valid (in the vocabulary,
        padding only at the end) instead of the continuous sources' box."""
        x = self.synthesize(step).detach()
        d = self.data
        mask = x != d.pad_id
        if int(x.min()) < 0 or int(x.max()) >= d.vocab_size or bool((mask[:, 1:] & ~mask[:, :-1]).any()):
            raise KdxError(f"source 'hotflip': invalid token ids made at step {step} (a bug: please report it)")
        logits = predict(self.teacher, x, batch_size=max(1024, len(x)))
        if self.record is not None:
            self.record.append((x.cpu(), logits.cpu()))
        return x, logits


@SOURCES.register(context=("data", "seed"))
def hotflip(data: Dataset, seed: int, *, start: str = "unigram", objective: str = "class", flips: int = 4,
            positions: int = 8, batch: int = 256, pool_size: int = 10240, refresh_every: int = 10,
            max_nonfinite: float = 1e-3) -> HotFlipSource:
    """Text synthesis: HotFlip token substitutions by the embedding gradient, toward a class or student-teacher discrepancy."""
    return HotFlipSource(data, seed, start=start, objective=objective, flips=flips, positions=positions, batch=batch,
                         pool_size=pool_size, refresh_every=refresh_every, max_nonfinite=max_nonfinite)
