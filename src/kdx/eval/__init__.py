"""Held-out distributions and fidelity evaluation."""
from __future__ import annotations

import torch
import torch.distributed as dist

from kdx.config import EvalConfig
from kdx.data.base import Dataset
from kdx.eval import heldout
from kdx.eval.fidelity import fidelity_metrics
from kdx.models import predict


def distribution_names(cfg: EvalConfig, data: Dataset) -> list[str]:
    names = []
    for n in cfg.distributions:
        names += data.default_heldout if n == "default" else [n]
    return list(dict.fromkeys(names))


def heldout_metrics(teacher_logits, student: torch.nn.Module, data: Dataset, cfg: EvalConfig, *,
                    ddp: bool = False) -> dict | None:
    """metrics.json's `eval`: the metrics on every held-out distribution of `cfg`, `teacher_logits(x)`
    giving the teacher's (its cache, kdx.distill.teacher.TeacherLogits). Under DDP the ranks predict a
    shard each and rank 0, which alone gets the metrics, gathers them."""
    results = {}
    for name in distribution_names(cfg, data):
        ho = heldout.load(name, data, cfg.n, cfg.seed)
        s_logits = predict_sharded(student, ho.x, cfg.batch_size) if ddp else predict(student, ho.x, cfg.batch_size)
        if not ddp or dist.get_rank() == 0:
            results[name] = fidelity_metrics(teacher_logits(ho.x), s_logits, ho.y, cfg.bootstrap, cfg.seed)
    return results if not ddp or dist.get_rank() == 0 else None


def predict_sharded(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """predict() over all ranks: rank r takes the r-th of `world` equal slices (the last padded by
    wrapping round, as all_gather needs equal sizes) and every rank gets all rows back in order."""
    rank, world = dist.get_rank(), dist.get_world_size()
    per = -(-len(x) // world)
    idx = torch.arange(per * world) % len(x)
    mine = predict(model, x[idx[rank * per:(rank + 1) * per]], batch_size)
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine)
    return torch.cat(parts)[:len(x)]
