"""Model inversion in the style of DeepInversion (arXiv 1912.08795): optimise a batch from noise so the
teacher assigns it sampled classes, its BatchNorm layers see their training statistics, and image
priors (total variation, L2) hold; optionally ("adaptive") push teacher and student apart.

As in DeepInversion the optimised variable is the input in the teacher's normalised units (so the
published loss weights mean what they meant there), started from N(0, 1), with a random jitter
(roll) per iteration. The loss weights default to the paper's CIFAR-10 ones (bn 10, tv 2.5e-5); the
paper's 2,000 iterations at lr 0.05 are replaced by 20 at lr 0.25, so an online pool refreshes fast.
For a pool made once (`kdx synth`), polish pays: on Fashion-MNIST a 240k-sample student reached 84.4%
test accuracy from 10,000 inputs at 20 iterations (176 s on 2 CPU threads) and 84.3-85.0% from 2,560
at 200 (346-418 s); at equal seconds the split hardly matters. Against the DeepInversion-2k reference,
256 inputs at 150 iterations taught 83.5% (mean of seeds 1-3) vs its 82.8%, a tie within the seeds'
spread, in 1/14.5 of its seconds (bench/RESULTS.md, bench/inversion_budget.py). `cosine` anneals the
step size to 0 over the iterations (DeepInversion's ImageNet schedule): +0.3 pp in one seed alone, and
no better than the constant step over three seeds with lr 0.5 and bn 3, so it is off by default.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from kdx.data.base import Dataset
from kdx.registry import SOURCES
from kdx.sampling.base import step_generator
from kdx.sampling.synthesis import SynthesisSource


def total_variation(z: torch.Tensor) -> torch.Tensor:
    """DeepInversion's TV prior: L2 norms of neighbour differences (both axes and both diagonals for images)."""
    if z.ndim == 3:
        return torch.norm(z[..., 1:] - z[..., :-1])
    return (torch.norm(z[..., :, 1:] - z[..., :, :-1]) + torch.norm(z[..., 1:, :] - z[..., :-1, :])
            + torch.norm(z[..., 1:, :-1] - z[..., :-1, 1:]) + torch.norm(z[..., :-1, :-1] - z[..., 1:, 1:]))


def js_divergence(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Jensen-Shannon divergence between softmax(a/T) and softmax(b/T), mean over rows."""
    p, q = F.softmax(a / temperature, 1), F.softmax(b / temperature, 1)
    log_m = (0.5 * (p + q)).clamp_min(1e-8).log()
    return 0.5 * (F.kl_div(log_m, p, reduction="batchmean") + F.kl_div(log_m, q, reduction="batchmean"))


class InversionSource(SynthesisSource):
    method, hint = "inversion", "lower its lr"

    def __init__(self, data, seed, *, iterations, lr, bn, tv, l2, adaptive, temperature, jitter, cosine, **pool):
        super().__init__(data, seed, **pool)
        self.iterations, self.lr, self.jitter, self.temperature = iterations, lr, jitter, temperature
        self.cosine = cosine
        self.weights = {"bn": bn, "tv": tv, "l2": l2, "adaptive": adaptive}
        self.needs_student = adaptive > 0
        self.trace: dict[str, list[float]] = {}  # per-iteration objective terms of the last batch

    def setup(self, device, teacher_logits_fn, teacher=None, student=None) -> None:
        super().setup(device, teacher_logits_fn, teacher, student)
        self.bn_layers = [m for m in teacher.modules()
                          if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None]
        if not self.bn_layers and self.weights["bn"] > 0:
            print("kdx: source 'inversion': the teacher has no BatchNorm layers; synthesising with the class "
                  "and image priors only (cross-entropy, total variation, L2)", file=sys.stderr)

    def synthesize(self, step: int) -> torch.Tensor:
        b, k, dev = self.synth_batch, self.data.num_classes, self.device
        g = step_generator(self.seed, step, dev, "inversion")
        targets = torch.randperm(b, generator=g, device=dev) % k  # balanced classes, shuffled
        z = torch.randn((b, *self.data.input_shape), generator=g, device=dev)  # normalised units
        z = ((self.keep_in_box(self.mean + self.std * z) - self.mean) / self.std).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, self.iterations)) if self.cosine else None
        # Jitter offsets drawn on the CPU up front: no host sync inside the loop.
        spatial = list(range(2, z.ndim))
        offsets = torch.randint(-self.jitter, self.jitter + 1, (self.iterations, len(spatial)),
                                generator=step_generator(self.seed, step, torch.device("cpu"), "jitter")).tolist()
        bn_dist = []  # filled by the hooks on each forward pass

        def hook(module, inputs, output):
            a = inputs[0]
            dims = [0, *range(2, a.ndim)]
            mean, var = a.mean(dims), a.var(dims, unbiased=False)
            bn_dist.append(torch.norm(var - module.running_var) + torch.norm(mean - module.running_mean))

        handles = [m.register_forward_hook(hook) for m in self.bn_layers] if self.weights["bn"] > 0 else []
        trace, lrs = {"loss": [], "bn": [], "target_conf": []}, []
        student_was_training = self.student is not None and self.student.training
        if self.weights["adaptive"]:
            self.student.eval()  # as DeepInversion: synthesis must not move the student's BatchNorm statistics
        try:
            for it in range(self.iterations):
                zj = torch.roll(z, offsets[it], spatial) if self.jitter > 0 else z
                x = self.mean + self.std * zj
                bn_dist.clear()
                logits = self.teacher(x)
                loss = F.cross_entropy(logits, targets)
                bn = torch.stack(bn_dist).sum() if bn_dist else torch.zeros((), device=dev)
                loss = loss + self.weights["bn"] * bn + self.weights["tv"] * total_variation(zj)
                if self.weights["l2"]:
                    loss = loss + self.weights["l2"] * torch.norm(zj)
                if self.weights["adaptive"]:  # adaptive DeepInversion: reward disagreement with the student
                    loss = loss - self.weights["adaptive"] * js_divergence(self.student(x), logits, self.temperature)
                z.grad, = torch.autograd.grad(loss, z)  # gradients for the inputs only, never the models
                opt.step()
                if sched is not None:
                    sched.step()
                with torch.no_grad():  # stay in the box: clip in data space, back to normalised units
                    z.copy_((self.keep_in_box(self.mean + self.std * z) - self.mean) / self.std)
                conf = logits.detach().softmax(1).gather(1, targets[:, None]).mean()
                for name, v in (("loss", loss), ("bn", bn), ("target_conf", conf)):
                    trace[name].append(v.detach())
                lrs.append(opt.param_groups[0]["lr"])  # the step size used next: a float, no sync
        finally:
            for h in handles:
                h.remove()
            if student_was_training:
                self.student.train()
        self.trace = {name: torch.stack(v).tolist() for name, v in trace.items()} if self.iterations else {}
        self.trace["lr"] = lrs
        return (self.mean + self.std * z).detach()


@SOURCES.register(context=("data", "seed"))
def inversion(data: Dataset, seed: int, *, iterations: int = 20, lr: float = 0.25, bn: float = 10.0,
              tv: float = 2.5e-5, l2: float = 0.0, adaptive: float = 0.0, temperature: float = 3.0, jitter: int = 2,
              batch: int = 256, pool_size: int = 10240, refresh_every: int = 10,
              max_nonfinite: float = 1e-3, cosine: bool = False) -> InversionSource:
    """DeepInversion: inputs optimised for sampled classes, BatchNorm statistics, TV/L2 priors (+adaptive JS)."""
    return InversionSource(data, seed, iterations=iterations, lr=lr, bn=bn, tv=tv, l2=l2, adaptive=adaptive,
                           temperature=temperature, jitter=jitter, batch=batch, pool_size=pool_size,
                           refresh_every=refresh_every, max_nonfinite=max_nonfinite, cosine=cosine)
