"""Samples from the distribution the teacher implicitly defines: a classifier's logits f(x) give an
energy E(x) = -logsumexp_y f(x)[y] and p(x) proportional to exp(-E(x)) (JEM, arXiv 1912.03263).
Stochastic gradient Langevin dynamics, x <- x - step_size * grad E(x) + noise * N(0, I), in JEM's
decoupled form (a step size and a noise scale instead of one tied temperature), started from uniform
noise over the box or, with `start: buffer`, from the pool of earlier samples (a replay buffer;
`reinit` of each batch restarts from noise), as persistent chains mix far better than fresh ones.
With `conditional`, each input descends E(x | y) = -f(x)[y] for a class y drawn evenly (JEM's
class-conditional sampler): the unconditional chains stay in the few classes noise falls into.
"""
from __future__ import annotations

import torch

from kdx.data.base import Dataset
from kdx.errors import KdxError
from kdx.registry import SOURCES
from kdx.sampling.base import step_generator
from kdx.sampling.synthesis import SynthesisSource


def energy(logits: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """-logsumexp_y f(x)[y] per row, or the class-conditional -f(x)[target]."""
    return -torch.logsumexp(logits, 1) if targets is None else -logits.gather(1, targets[:, None])[:, 0]


class LangevinSource(SynthesisSource):
    method, hint = "langevin", "lower its step_size or noise"

    def __init__(self, data, seed, *, steps, step_size, noise, start, reinit, conditional, **pool):
        super().__init__(data, seed, **pool)
        if start not in ("noise", "buffer"):
            raise KdxError(f"source 'langevin': start must be noise or buffer, got '{start}'")
        self.steps, self.step_size, self.noise_scale = steps, step_size, noise
        self.start, self.reinit, self.conditional = start, reinit, conditional
        self.trace: dict[str, list[float]] = {}

    def synthesize(self, step: int) -> torch.Tensor:
        g = step_generator(self.seed, step, self.device, "langevin")
        x = self.noise(self.synth_batch, g)
        targets = (torch.randperm(self.synth_batch, generator=g, device=self.device) % self.data.num_classes
                   if self.conditional else None)
        if self.start == "buffer" and self.written > 0:  # continue earlier chains, restart a `reinit` share
            filled = min(self.written, self.slots) * self.synth_batch
            old = self.pool_x[torch.randint(filled, (self.synth_batch,), generator=g, device=self.device)]
            keep = torch.rand(self.synth_batch, generator=g, device=self.device) >= self.reinit
            x = torch.where(keep.view(-1, *[1] * (x.ndim - 1)), old, x)
        energies = []
        for _ in range(self.steps):
            x = x.detach().requires_grad_(True)
            e = energy(self.teacher(x), targets)
            grad, = torch.autograd.grad(e.sum(), x)
            energies.append(e.detach().mean())
            noise = torch.randn(x.shape, generator=g, device=self.device)
            x = self.keep_in_box(x.detach() - self.step_size * grad + self.noise_scale * noise)
        with torch.no_grad():
            energies.append(energy(self.teacher(x), targets).mean())
        self.trace = {"energy": torch.stack(energies).tolist()}
        return x


@SOURCES.register(context=("data", "seed"))
def langevin(data: Dataset, seed: int, *, steps: int = 20, step_size: float = 1.0, noise: float = 0.01,
             start: str = "buffer", reinit: float = 0.05, conditional: bool = False, batch: int = 256,
             pool_size: int = 10240, refresh_every: int = 1, max_nonfinite: float = 1e-3) -> LangevinSource:
    """SGLD on the teacher's energy -logsumexp f(x), from noise or a replay buffer of earlier samples."""
    return LangevinSource(data, seed, steps=steps, step_size=step_size, noise=noise, start=start, reinit=reinit,
                          conditional=conditional, batch=batch, pool_size=pool_size, refresh_every=refresh_every,
                          max_nonfinite=max_nonfinite)
