"""Optimizers and learning-rate schedules, by step."""
from __future__ import annotations

import math

import torch

from kdx.errors import KdxError


def build_optimizer(params, name: str, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise KdxError(f"distill.optimizer '{name}' is unknown; valid: sgd, adamw")


def build_schedule(opt: torch.optim.Optimizer, name: str, steps: int, warmup: float):
    if name == "cosine":
        warm = max(1, int(warmup * steps))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                   total_steps=max(steps, 2), pct_start=0.25)
    raise KdxError(f"schedule '{name}' is unknown; valid: cosine, onecycle")
