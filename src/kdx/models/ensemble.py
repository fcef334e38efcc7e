"""Ensemble teachers (Bucilă et al. 2006 compressed one): `teacher.model: {name: ensemble, members: [...],
combine: mean_probs | mean_logits}` over any registered teachers, torch or black-box. Each member is trained
(or fit, or loaded) and cached on its own by kdx.distill.teacher; this module combines their logits."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from kdx.data.base import Dataset
from kdx.errors import KdxError
from kdx.registry import MODELS

COMBINE = ("mean_probs", "mean_logits")


def combine_logits(member_logits: list[torch.Tensor], combine: str) -> torch.Tensor:
    """mean_probs: log of the members' mean probabilities; mean_logits: the members' mean logits."""
    stacked = torch.stack([lg.float() for lg in member_logits])
    if combine == "mean_logits":
        return stacked.mean(0)
    return torch.logsumexp(torch.log_softmax(stacked, -1), 0) - math.log(len(member_logits))


class EnsembleClassifier(nn.Module):
    def __init__(self, members: list[nn.Module], combine: str):
        super().__init__()
        self.members, self.combine = nn.ModuleList(members), combine
        self.black_box = any(getattr(m, "black_box", False) for m in members)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        if return_features:
            raise KdxError("an ensemble teacher has no one penultimate feature space; use a source or probe that "
                           "needs only its outputs")
        return combine_logits([m(x) for m in self.members], self.combine)


def check_ensemble(spec: dict[str, Any], where: str = "teacher.model") -> None:
    """An ensemble spec's members and combine rule, before any member is trained."""
    members, combine = spec.get("members") or [], spec.get("combine", "mean_probs")
    if combine not in COMBINE:
        raise KdxError(f"{where}.combine must be one of {', '.join(COMBINE)}, got '{combine}'")
    if len(members) < 2:
        raise KdxError(f"{where}: an ensemble needs at least 2 members, got {len(members)}; list them in {where}.members")
    for i, m in enumerate(members):
        if not isinstance(m, dict) or m.get("name") == "ensemble":
            raise KdxError(f"{where}.members[{i}] must be a model spec {{name: ..., ...}} (not an ensemble), got {m!r}")
        MODELS.validate(m, f"{where}.members[{i}]")


@MODELS.register(context=("data",))
def ensemble(data: Dataset, members: list[dict[str, Any]] = [], combine: str = "mean_probs") -> EnsembleClassifier:
    """Teachers only: the members (any registered teachers) combined by mean_probs or mean_logits."""
    check_ensemble({"members": members, "combine": combine})
    return EnsembleClassifier([MODELS.build(m, f"teacher.model.members[{i}]", data=data) for i, m in enumerate(members)],
                              combine)
