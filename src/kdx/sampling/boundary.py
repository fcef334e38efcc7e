"""Boundary sampling: start from train inputs (or noise) and ascend the teacher's predictive entropy,
to sample where the teacher is unsure, the region where students are known to underfit (Nagarajan
et al., arXiv 2301.12923). Signed-gradient steps (as in PGD) make `step_size` a per-value distance in
the input's own units, whatever the scale of the gradient.
"""
from __future__ import annotations

import torch

from kdx.data.base import Dataset, model_input
from kdx.errors import KdxError
from kdx.registry import SOURCES
from kdx.sampling.base import step_generator
from kdx.sampling.synthesis import SynthesisSource, entropy


class BoundarySource(SynthesisSource):
    method, hint = "boundary", "lower its step_size"

    def __init__(self, data, seed, *, start, steps, step_size, **pool):
        super().__init__(data, seed, **pool)
        if start not in ("train", "noise"):
            raise KdxError(f"source 'boundary': start must be train or noise, got '{start}'")
        self.start, self.steps, self.step_size = start, steps, step_size
        self.trace: dict[str, list[float]] = {}

    def synthesize(self, step: int) -> torch.Tensor:
        g = step_generator(self.seed, step, self.device, "boundary")
        if self.start == "train":
            idx = torch.randint(len(self.data.x_train), (self.synth_batch,), generator=g, device=self.device)
            x = model_input(self.data.x_train[idx.cpu()].to(self.device))
        else:
            x = self.noise(self.synth_batch, g)
        entropies = []
        for _ in range(self.steps):
            x = x.detach().requires_grad_(True)
            h = entropy(self.teacher(x))
            grad, = torch.autograd.grad(h.sum(), x)
            entropies.append(h.detach().mean())
            x = self.keep_in_box(x.detach() + self.step_size * grad.sign())
        with torch.no_grad():
            entropies.append(entropy(self.teacher(x)).mean())
        self.trace = {"entropy": torch.stack(entropies).tolist()}
        return x


@SOURCES.register(context=("data", "seed"))
def boundary(data: Dataset, seed: int, *, start: str = "train", steps: int = 10, step_size: float = 0.01,
             batch: int = 256, pool_size: int = 10240, refresh_every: int = 1,
             max_nonfinite: float = 1e-3) -> BoundarySource:
    """Inputs where the teacher is unsure: ascend its predictive entropy from train inputs or noise."""
    return BoundarySource(data, seed, start=start, steps=steps, step_size=step_size, batch=batch, pool_size=pool_size,
                          refresh_every=refresh_every, max_nonfinite=max_nonfinite)
