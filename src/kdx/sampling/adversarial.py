"""An adversarial generator (ZSKT arXiv 1905.09768, DFAD arXiv 1912.11006): a small generator is trained
online to maximise the student-teacher discrepancy on its outputs while the student, in the loop,
minimises it; about one generator step per five student steps in those papers (`ratio`).

Online by default: a one-batch pool refreshed every student step, so set `batch` to distill.batch_size.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdx.data.base import Dataset
from kdx.errors import KdxError
from kdx.registry import SOURCES
from kdx.sampling.base import step_generator
from kdx.sampling.synthesis import SynthesisSource


class Generator(nn.Module):
    """z -> a coarse map (linear) -> two upsample-conv-BN-LeakyReLU blocks -> conv -> sigmoid onto the
    input box, so what it makes is inside the box by construction (2-D for images, 1-D for signals)."""

    def __init__(self, data: Dataset, z_dim: int, width: int):
        super().__init__()
        conv, bn = (nn.Conv2d, nn.BatchNorm2d) if data.is_image else (nn.Conv1d, nn.BatchNorm1d)
        channels, *self.size = data.input_shape
        self.coarse = [math.ceil(s / 4) for s in self.size]  # two 2x upsamplings, then crop to size
        self.fc = nn.Linear(z_dim, 2 * width * math.prod(self.coarse))
        self.net = nn.Sequential(
            bn(2 * width), nn.Upsample(scale_factor=2), conv(2 * width, 2 * width, 3, padding=1), bn(2 * width),
            nn.LeakyReLU(0.2), nn.Upsample(scale_factor=2), conv(2 * width, width, 3, padding=1), bn(width),
            nn.LeakyReLU(0.2), conv(width, channels, 3, padding=1))
        self.register_buffer("lo", data.channel_view(data.lo).clone())
        self.register_buffer("hi", data.channel_view(data.hi).clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.net(self.fc(z).view(len(z), -1, *self.coarse))
        h = h[(..., *(slice(0, s) for s in self.size))]
        return self.lo + (self.hi - self.lo) * torch.sigmoid(h)


def discrepancy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """What the generator maximises: mean L1 between logits (DFAD), or KL(teacher || student) (ZSKT)."""
    if kind == "l1":
        return (student_logits - teacher_logits).abs().mean()
    return F.kl_div(student_logits.log_softmax(1), teacher_logits.log_softmax(1), log_target=True, reduction="batchmean")


class AdversarialSource(SynthesisSource):
    method, hint, needs_student = "adversarial", "lower its lr", True

    def __init__(self, data, seed, *, loss, ratio, lr, z_dim, width, **pool):
        super().__init__(data, seed, **pool)
        if loss not in ("l1", "kl"):
            raise KdxError(f"source 'adversarial': loss must be l1 or kl, got '{loss}'")
        self.loss, self.ratio, self.z_dim = loss, ratio, z_dim
        with torch.random.fork_rng(devices=[]):  # the generator's init is a function of the seed alone
            torch.manual_seed(seed)
            self.generator = Generator(data, z_dim, width)
        self.opt = torch.optim.Adam(self.generator.parameters(), lr=lr)
        self.trace: dict[str, list[float]] = {}

    def setup(self, device, teacher_logits_fn, teacher=None, student=None) -> None:
        super().setup(device, teacher_logits_fn, teacher, student)
        self.generator.to(device)

    def z(self, step: int, salt: str) -> torch.Tensor:
        g = step_generator(self.seed, step, self.device, salt)
        return torch.randn((self.synth_batch, self.z_dim), generator=g, device=self.device)

    def generator_step(self, z: torch.Tensor) -> torch.Tensor:
        """One ascent step of the discrepancy on the generator only; returns the discrepancy before it."""
        x = self.generator(z)
        d = discrepancy(self.student(x), self.teacher(x), self.loss)
        params = list(self.generator.parameters())
        for p, grad in zip(params, torch.autograd.grad(-d, params)):  # never touch the models' gradients
            p.grad = grad
        self.opt.step()
        return d.detach()

    def synthesize(self, step: int) -> torch.Tensor:
        # Generator steps due since the last batch: `ratio` per student step, spread evenly.
        due = math.floor((step + self.refresh_every) * self.ratio) - math.floor(step * self.ratio)
        self.generator.train()
        self.trace = {"discrepancy": [self.generator_step(self.z(step, f"gen{i}")) for i in range(due)]}
        self.trace = {k: torch.stack(v).tolist() if v else [] for k, v in self.trace.items()}
        with torch.no_grad():
            return self.generator(self.z(step, "sample"))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "generator": self.generator.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.generator.load_state_dict(state["generator"])
        self.opt.load_state_dict(state["opt"])


@SOURCES.register(context=("data", "seed"))
def adversarial(data: Dataset, seed: int, *, loss: str = "l1", ratio: float = 0.2, lr: float = 1e-3, z_dim: int = 100,
                width: int = 64, batch: int = 256, pool_size: int = 256, refresh_every: int = 1,
                max_nonfinite: float = 1e-3) -> AdversarialSource:
    """A generator trained online to maximise student-teacher discrepancy (l1|kl), `ratio` steps per student step."""
    return AdversarialSource(data, seed, loss=loss, ratio=ratio, lr=lr, z_dim=z_dim, width=width, batch=batch,
                             pool_size=pool_size, refresh_every=refresh_every, max_nonfinite=max_nonfinite)
