"""A mixture whose weights adapt while the student trains: a bandit over component sources.

Each batch splits its samples among the components by the current weights (as `mixture` does),
then rewards each component with the mean per-input KL(teacher || student) at T=1 its inputs
exposed in that batch: the teacher's logits come with the batch where a component has them cached,
else the teacher runs here once and they go on in the Batch (the loop does not run it again); the
student's come from one no-grad, eval-mode forward of the drawn batch (counted in `accounting`).

Policy: a running reward per component, r_k <- (1 - ema) r_k + ema * (this batch's mean KL on
k's inputs), the first observation taken as is; every `refresh_every` draws the weights become

    w = (1 - floor) * softmax(r / (tau * mean_j r_j)) + floor / K

(temperature relative to the mean reward, so the policy does not depend on KL's scale; a
component not yet observed scores as the best observed one; before any observation the
components' `weight`s). `floor` keeps every component drawn, so a reward that drops is noticed.
`history` maps each refresh's draw (the step, with one process) to the weights used from it on,
kept in the state (and so in checkpoints) and in `accounting()`. Under DDP `skip` makes and drops
the batch, so every rank's rewards, weights and component streams stay equal.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kdx.data.base import Dataset
from kdx.errors import KdxError
from kdx.registry import SOURCES
from kdx.sampling.adaptive import COUNTS, Scorer, kl_rows
from kdx.sampling.base import Batch, Source
from kdx.sampling.mixture import MixtureSource, build_part, component_weight


class AdaptiveMixture(MixtureSource):
    def __init__(self, data: Dataset, seed: int, parts: list[Source], weights: list[float], *, tau: float,
                 floor: float, ema: float, refresh_every: int):
        super().__init__(data, seed, parts, weights)
        if tau <= 0 or not 0 <= floor <= 1 or not 0 < ema <= 1 or refresh_every < 1:
            raise KdxError("source 'adaptive_mixture': needs tau > 0, 0 <= floor <= 1, 0 < ema <= 1 and "
                           f"refresh_every >= 1; got tau={tau}, floor={floor}, ema={ema}, refresh_every={refresh_every}")
        self.tau, self.floor, self.ema, self.refresh_every = tau, floor, ema, refresh_every
        self.initial = self.weights.clone()
        self.rewards = torch.full((len(parts),), float("nan"), dtype=torch.float64)
        self.refreshed = -1
        self.history: dict[int, list[float]] = {}
        self.scorer = Scorer()

    def setup(self, device, teacher_logits_fn, teacher=None, student=None) -> None:
        super().setup(device, teacher_logits_fn, teacher=teacher, student=student)
        if teacher is None or student is None:
            raise KdxError("source 'adaptive_mixture' rewards components by the teacher-student KL, so it needs "
                           "both; use it to distil a student")
        self.scorer.teacher, self.scorer.student = teacher, student

    def policy(self) -> torch.Tensor:
        r = self.rewards
        seen = ~torch.isnan(r)
        if not bool(seen.any()):
            return self.initial.clone()
        r = torch.where(seen, r, r[seen].max())
        scale = float(r.mean())
        z = r / (self.tau * scale) if scale > 0 else torch.zeros_like(r)
        return (1 - self.floor) * torch.softmax(z, 0) + self.floor / len(r)

    def _draw(self, step: int, n: int) -> Batch:
        if step // self.refresh_every != self.refreshed:
            self.weights, self.refreshed = self.policy(), step // self.refresh_every
            self.history[step] = self.weights.tolist()
        sizes = self.split(step, n)
        batches = []
        for p, c in zip(self.parts, sizes):
            if c > 0:
                b = p.batch(step, c)
                if b.teacher_logits is None:
                    b.teacher_logits = self.scorer.run_teacher(b.x)
                elif not b.counted:
                    self.scorer.counts["teacher_cache_lookups"] += len(b.x)
                batches.append(b)
        x = torch.cat([b.x for b in batches])
        t = torch.cat([b.teacher_logits for b in batches])
        kl = kl_rows(t, self.scorer.run_student(x))
        self.scorer.counts["candidates_drawn"] += len(x)
        arm = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).to(kl.device)
        count = torch.tensor(sizes, dtype=torch.float64)
        mean = (torch.zeros(len(sizes), dtype=torch.float64, device=kl.device).index_add_(0, arm, kl).cpu()
                / count.clamp_min(1))
        old = self.rewards
        upd = torch.where(torch.isnan(old), mean, (1 - self.ema) * old + self.ema * mean)
        self.rewards = torch.where(count > 0, upd, old)
        y = None
        if self.has_labels:
            ys = [b.y for b in batches]
            y = torch.cat(ys) if all(v.ndim == 1 for v in ys) else torch.cat(
                [v if v.ndim == 2 else F.one_hot(v, self.data.num_classes).float() for v in ys])
        return Batch(x, y, t, counted=True)

    def batch(self, step: int, n: int) -> Batch:
        return self._draw(step, n)

    def skip(self, step: int, n: int) -> None:
        self._draw(step, n)  # the rewards must move on every rank alike

    def accounting(self) -> dict:
        out = dict(self.scorer.counts)
        for p in self.parts:
            for k, v in p.accounting().items():
                out[k] = out[k] + v if k in out and isinstance(v, (int, float)) else v
        return {**out, "weights": self.weights.tolist(), "history": {str(k): v for k, v in self.history.items()}}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "counts": dict(self.scorer.counts), "rewards": self.rewards.clone(),
                "weights": self.weights.clone(), "refreshed": self.refreshed, "history": dict(self.history)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.scorer.counts = {k: int(state["counts"].get(k, 0)) for k in COUNTS}
        self.rewards = state["rewards"].to(torch.float64).cpu()
        self.weights = state["weights"].to(torch.float64).cpu()
        self.refreshed = int(state["refreshed"])
        self.history = {int(k): list(v) for k, v in state["history"].items()}


@SOURCES.register(context=("data", "seed", "cache_dir"))
def adaptive_mixture(data: Dataset, seed: int, *, components: list[dict[str, Any]] = [], tau: float = 0.5,
                     floor: float = 0.1, ema: float = 0.2, refresh_every: int = 1,
                     cache_dir: Path | None = None) -> AdaptiveMixture:
    """A mixture whose weights follow each component's teacher-student KL (a bandit with a floor)."""
    if not components:
        raise KdxError("source 'adaptive_mixture' needs components: a list of {name: SOURCE, weight: W, ...} "
                       "(weight: the starting weight)")
    parts, weights = [], []
    for i, comp in enumerate(components):
        comp = dict(comp)
        weights.append(component_weight(comp.pop("weight", 1.0), f"source 'adaptive_mixture': components[{i}]"))
        if comp.get("name") in ("mixture", "adaptive_mixture"):
            raise KdxError("source 'adaptive_mixture' cannot contain another mixture; flatten the components")
        parts.append(build_part(comp, f"source.components[{i}]", data, seed * 1000 + i, cache_dir=cache_dir))
    if min(weights) < 0 or sum(weights) <= 0:
        raise KdxError(f"source 'adaptive_mixture': weights must be non-negative with a positive sum, got {weights}")
    return AdaptiveMixture(data, seed, parts, weights, tau=tau, floor=floor, ema=ema, refresh_every=refresh_every)
