"""A mixture of other sources: each batch splits its samples among components by weight."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kdx.data.base import Dataset
from kdx.errors import KdxError
from kdx.registry import SOURCES
from kdx.sampling.base import Batch, Source, step_generator


class MixtureSource(Source):
    def __init__(self, data: Dataset, seed: int, parts: list[Source], weights: list[float]):
        super().__init__(data, seed)
        self.parts = parts
        self.needs_teacher_internals = any(p.needs_teacher_internals for p in parts)
        self.weights = torch.tensor(weights, dtype=torch.float64) / sum(weights)
        self.has_labels = all(p.has_labels for p in parts)

    def setup(self, device, teacher_logits_fn, teacher=None, student=None) -> None:
        super().setup(device, teacher_logits_fn)
        for p in self.parts:
            p.setup(device, teacher_logits_fn, teacher=teacher, student=student)

    def split(self, step: int, n: int) -> list[int]:
        """How many of the step's n samples each component gives (drawn by weight)."""
        g = step_generator(self.seed, step, torch.device("cpu"), "mixture")
        return torch.bincount(torch.multinomial(self.weights, n, replacement=True, generator=g),
                              minlength=len(self.parts)).tolist()

    def skip(self, step: int, n: int) -> None:
        for p, c in zip(self.parts, self.split(step, n)):
            if c > 0:
                p.skip(step, c)

    def batch(self, step: int, n: int) -> Batch:
        batches = [p.batch(step, c) for p, c in zip(self.parts, self.split(step, n)) if c > 0]
        x = torch.cat([b.x for b in batches])
        logits = (torch.cat([b.teacher_logits for b in batches])
                  if all(b.teacher_logits is not None for b in batches) else None)
        y = None
        if self.has_labels:
            k = self.data.num_classes
            ys = [b.y for b in batches]
            y = torch.cat(ys) if all(t.ndim == 1 for t in ys) else torch.cat(
                [t if t.ndim == 2 else F.one_hot(t, k).float() for t in ys])
        return Batch(x, y, logits, counted=logits is not None and all(b.counted for b in batches))

    def state_dict(self) -> dict:
        return {"parts": [p.state_dict() for p in self.parts]}

    def load_state_dict(self, state: dict) -> None:
        for p, s in zip(self.parts, state["parts"]):
            p.load_state_dict(s)


def build_part(spec: dict, where: str, data: Dataset, seed: int, *, cache_dir: Path | None = None) -> Source:
    """A source nested in another (a component, the candidates), its errors prefixed with where it sits."""
    try:
        return SOURCES.build(spec, where, data=data, seed=seed, cache_dir=cache_dir)
    except KdxError as e:
        raise KdxError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None


def component_weight(value, where: str) -> float:
    """A component's weight: a finite number >= 0 (a word or NaN would only fail once training draws)."""
    try:
        w = float(value)
    except (TypeError, ValueError):
        w = math.nan
    if isinstance(value, bool) or not (math.isfinite(w) and w >= 0):
        raise KdxError(f"{where}: weight {value!r} must be a finite number >= 0 (e.g. weight: 0.5)")
    return w


@SOURCES.register(context=("data", "seed", "cache_dir"))
def mixture(data: Dataset, seed: int, *, components: list[dict[str, Any]] = [],
            cache_dir: Path | None = None) -> MixtureSource:
    """Weights over other sources, e.g. components: [{name: train, weight: 0.5}, {name: noise, weight: 0.5}]."""
    if not components:
        raise KdxError("source 'mixture' needs components: a list of {name: SOURCE, weight: W, ...}")
    specs, weights = [], []
    for i, comp in enumerate(components):  # the cheap checks first, then each component built (and checked)
        comp = dict(comp)
        weights.append(component_weight(comp.pop("weight", 1.0), f"source 'mixture': components[{i}]"))
        if comp.get("name") == "mixture":
            raise KdxError("source 'mixture' cannot contain another mixture; flatten the components")
        specs.append(comp)
    if sum(weights) <= 0:
        raise KdxError(f"source 'mixture': weights must be non-negative with a positive sum, got {weights}")
    parts = [build_part(comp, f"source.components[{i}]", data, seed * 1000 + i, cache_dir=cache_dir)
             for i, comp in enumerate(specs)]
    return MixtureSource(data, seed, parts, weights)
