"""Held-out distributions and fidelity evaluation."""
from __future__ import annotations

import torch

from kdx.config import EvalConfig
from kdx.data.base import Dataset
from kdx.eval import heldout
from kdx.eval.fidelity import fidelity_metrics


def distribution_names(cfg: EvalConfig, data: Dataset) -> list[str]:
    names = []
    for n in cfg.distributions:
        names += data.default_heldout if n == "default" else [n]
    return list(dict.fromkeys(names))


def evaluate(teacher_outputs, student: torch.nn.Module, data: Dataset, cfg: EvalConfig) -> dict:
    """Metrics for every held-out distribution; the teacher's logits come from its cache."""
    from kdx.distill.teacher import predict

    results = {}
    for name in distribution_names(cfg, data):
        ho = heldout.load(name, data, cfg.n, cfg.seed)
        t_logits = teacher_outputs(ho.x)
        s_logits = predict(student, ho.x, cfg.batch_size)
        results[name] = fidelity_metrics(t_logits, s_logits, ho.y, cfg.bootstrap, cfg.seed)
    return results
