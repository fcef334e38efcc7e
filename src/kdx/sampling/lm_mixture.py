"""GKD's mixture for causal LMs: every batch holds each component's exact share of examples (lambda
as a weight: `components: [{name: student_samples, weight: 0.25}, {name: corpus, weight: 0.75}]`),
the rounding carried across steps, not one coin a batch (TRL's GKDTrainer flips one per step). Each
component makes only its own share, so no teacher generation is wasted when the student's share fires."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from kdx.data.base import Dataset
from kdx.registry import SOURCES
from kdx.sampling.base import Batch
from kdx.sampling.mixture import MixtureSource, mixture


class LMMixtureSource(MixtureSource):
    def split(self, step: int, n: int) -> list[int]:
        """Component i's rows at this step: its cumulative share's boundary at step+1 minus at step."""
        edges = torch.cumsum(self.weights, 0).tolist()
        upto = [[math.floor(e * n * s + 0.5) for e in [0.0, *edges]] for s in (step, step + 1)]
        return [(upto[1][i + 1] - upto[1][i]) - (upto[0][i + 1] - upto[0][i]) for i in range(len(self.parts))]

    def batch(self, step: int, n: int) -> Batch:
        batches = [p.batch(step, c) for p, c in zip(self.parts, self.split(step, n)) if c > 0]
        return Batch(torch.cat([b.x for b in batches]), torch.cat([b.y for b in batches]), None,
                     mask=torch.cat([b.mask for b in batches]))

    def accounting(self) -> dict:
        """Each component's costs, summed over components key by key."""
        out: dict[str, int] = {}
        for p in self.parts:
            for k, v in p.accounting().items():
                out[k] = out.get(k, 0) + v
        return out


@SOURCES.register(context=("data", "seed", "cache_dir"))
def lm_mixture(data: Dataset, seed: int, *, components: list[dict[str, Any]] = [],
               cache_dir: Path | None = None) -> LMMixtureSource:
    """LM: exact per-batch shares of LM sources by weight (GKD's lambda as the student_samples weight)."""
    data.require("lm", "source 'lm_mixture'", "source mixture")
    built = mixture(data, seed, components=components, cache_dir=cache_dir)  # the components built and checked as `mixture` does
    return LMMixtureSource(data, seed, built.parts, built.weights.tolist())
