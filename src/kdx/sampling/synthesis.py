"""Inputs the teacher helps make (science.md, "Teacher-guided synthesis"): what the four synthesis
sources (inversion, adversarial, langevin, boundary) share.

A synthesis source makes inputs one batch at a time (`synthesize(step)`) and keeps them in a ring
pool that the loop samples from: every `refresh_every` student steps one new batch replaces the
oldest, so the student trains on the pool while synthesis goes on (a one-batch pool refreshed every
step is online synthesis: each student step gets fresh inputs). Every batch stays finite and inside
the dataset's input box: values pushed out are clipped and counted, non-finite ones are reset and
counted, and a batch with more than `max_nonfinite` of its values non-finite stops the run with the
method and step named. Random draws are functions of (seed, step) and the pool is checkpointed with
the source, so a resumed run goes on exactly as an uninterrupted one.
"""
from __future__ import annotations

import torch

from kdx.data.base import Dataset
from kdx.errors import KdxError
from kdx.models import predict
from kdx.sampling.base import Batch, Source, step_generator


class SynthesisSource(Source):
    method = "synthesis"  # the registered name, for messages
    hint = "lower its step size"  # what to change when values go non-finite
    needs_student = False
    needs_teacher_internals = True  # every synthesis method follows the teacher's gradients
    modalities: tuple[str, ...] = ("image", "signal")  # synthesis in a continuous input box

    def __init__(self, data: Dataset, seed: int, *, batch: int, pool_size: int, refresh_every: int,
                 max_nonfinite: float):
        super().__init__(data, seed)
        data.require(self.modalities, f"source '{self.method}'",
                     "hotflip (token substitutions), noise, train or downstream" if data.is_text else "")
        if min(batch, pool_size, refresh_every) < 1:
            raise KdxError(f"source '{self.method}': batch, pool_size and refresh_every must be >= 1")
        self.synth_batch, self.refresh_every, self.max_nonfinite = batch, refresh_every, max_nonfinite
        self.slots = max(1, pool_size // batch)  # the pool holds whole batches
        self.pool_x = self.pool_logits = None
        self.written, self.last_refresh = 0, -1  # batches made so far; the step of the last one
        self.totals = {"values": 0, "clipped": 0, "nonfinite": 0}
        self.record = None  # `kdx synth` sets a list (or deque) that collects every new (x, logits)
        self.teacher = self.student = None

    def setup(self, device, teacher_logits_fn, teacher=None, student=None) -> None:
        super().setup(device, teacher_logits_fn)
        if teacher is None:
            raise KdxError(f"source '{self.method}' makes inputs with the teacher, so it cannot train one; "
                           "use it to distil a student")
        if self.needs_student and student is None:
            raise KdxError(f"source '{self.method}' plays against the student being trained, but got none")
        self.teacher, self.student = teacher, student
        d = self.data
        self.lo, self.hi, self.mean, self.std = (d.channel_view(v).to(device) for v in (d.lo, d.hi, d.mean, d.std))

    def synthesize(self, step: int) -> torch.Tensor:
        """One new batch of `synth_batch` inputs; keep iterates in the box with `keep_in_box`."""
        raise NotImplementedError

    def noise(self, n: int, g: torch.Generator) -> torch.Tensor:
        """Uniform noise over the input box (the `noise` source's default)."""
        return self.data.uniform_in_box(n, g, self.device)

    def keep_in_box(self, x: torch.Tensor) -> torch.Tensor:
        """x with non-finite values reset to the box's middle and the rest clipped into the box; both
        counted on the device (read once per batch, so no host sync per iteration)."""
        bad = ~torch.isfinite(x)
        x = torch.where(bad, (self.lo + self.hi) / 2, x)
        out = torch.minimum(torch.maximum(x, self.lo), self.hi)
        self._counts += torch.stack([(out != x).sum(), bad.sum()])
        self._values += x.numel()
        return out

    def make(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A new checked batch and the teacher's logits on exactly those inputs."""
        self._counts = torch.zeros(2, dtype=torch.long, device=self.device)
        self._values = 0
        x = self.keep_in_box(self.synthesize(step).detach())  # the final guarantee, whatever the method did
        clipped, bad = self._counts.tolist()  # the one host sync per batch
        self.totals = {"values": self.totals["values"] + self._values, "clipped": self.totals["clipped"] + clipped,
                       "nonfinite": self.totals["nonfinite"] + bad}
        if bad > self.max_nonfinite * self._values:
            raise KdxError(f"source '{self.method}': {bad / self._values:.2%} of input values went non-finite "
                           f"while making the batch for step {step} (limit {self.max_nonfinite:.2%}); {self.hint}")
        logits = predict(self.teacher, x, batch_size=max(1024, len(x)))
        if self.record is not None:
            self.record.append((x.cpu(), logits.cpu()))
        return x, logits

    def refresh(self, step: int) -> None:
        x, logits = self.make(step)
        if self.pool_x is None:
            self.pool_x = x.new_empty((self.slots * len(x), *x.shape[1:]))
            self.pool_logits = logits.new_empty((self.slots * len(x), logits.shape[1]))
        i = (self.written % self.slots) * len(x)
        self.pool_x[i:i + len(x)], self.pool_logits[i:i + len(x)] = x, logits
        self.written, self.last_refresh = self.written + 1, step

    def batch(self, step: int, n: int) -> Batch:
        if self.pool_x is None or (step % self.refresh_every == 0 and step > self.last_refresh):
            self.refresh(step)
        filled = min(self.written, self.slots) * self.synth_batch
        g = step_generator(self.seed, step, self.device, "pool")
        idx = (torch.randperm(filled, generator=g, device=self.device)[:n] if n <= filled
               else torch.randint(filled, (n,), generator=g, device=self.device))
        return Batch(self.pool_x[idx], None, self.pool_logits[idx])

    def stats(self) -> dict:
        """Shares of checked values that were clipped into the box or were non-finite, so far."""
        v = max(1, self.totals["values"])
        return {"values_checked": self.totals["values"], "clipped_fraction": self.totals["clipped"] / v,
                "nonfinite_fraction": self.totals["nonfinite"] / v}

    def state_dict(self) -> dict:
        pool = None if self.pool_x is None else (self.pool_x.cpu(), self.pool_logits.cpu())
        return {"pool": pool, "written": self.written, "last_refresh": self.last_refresh, "totals": dict(self.totals)}

    def load_state_dict(self, state: dict) -> None:
        if state["pool"] is not None:
            self.pool_x, self.pool_logits = (t.to(self.device) for t in state["pool"])
        self.written, self.last_refresh, self.totals = state["written"], state["last_refresh"], dict(state["totals"])


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Predictive entropy of softmax(logits), per row."""
    logp = logits.log_softmax(1)
    return -(logp.exp() * logp).sum(1)
