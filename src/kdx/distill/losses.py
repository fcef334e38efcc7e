"""Distillation losses, registered. Each takes (student_logits, teacher_logits, labels, temperature)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdx.registry import LOSSES

_ARGS = ("student_logits", "teacher_logits", "labels", "temperature")
NEEDS_LABELS = {"onehot"}  # every other loss needs the teacher and ignores labels


@LOSSES.register(context=_ARGS)
def kl(student_logits, teacher_logits, labels, temperature) -> torch.Tensor:
    """KL(teacher_T || student_T) on softened probabilities, times T^2 (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * t * t


@LOSSES.register(context=_ARGS)
def soft_ce(student_logits, teacher_logits, labels, temperature) -> torch.Tensor:
    """Cross-entropy to the teacher's softened probabilities, times T^2 (KL plus the teacher's entropy)."""
    t = temperature
    return -(F.softmax(teacher_logits / t, 1) * F.log_softmax(student_logits / t, 1)).sum(1).mean() * t * t


@LOSSES.register(context=_ARGS)
def mse_logits(student_logits, teacher_logits, labels, temperature) -> torch.Tensor:
    """Squared L2 between logits, averaged over classes and inputs."""
    return F.mse_loss(student_logits, teacher_logits)


@LOSSES.register(context=_ARGS)
def smooth_l1_logits(student_logits, teacher_logits, labels, temperature) -> torch.Tensor:
    """Smooth L1 (Huber, beta 1) between logits."""
    return F.smooth_l1_loss(student_logits, teacher_logits)


@LOSSES.register(context=_ARGS)
def onehot(student_logits, teacher_logits, labels, temperature) -> torch.Tensor:
    """Cross-entropy to the labels (hard, or soft after mixup); no teacher."""
    return F.cross_entropy(student_logits, labels)
