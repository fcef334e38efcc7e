"""Fidelity and accuracy metrics, as defined in science.md; computed in float64 on the host."""
from __future__ import annotations

import numpy as np
import torch

from kdx.eval.statistics import mcnemar_exact, paired_bootstrap_ci


def _log_softmax(logits: torch.Tensor) -> np.ndarray:
    return torch.log_softmax(logits.double().cpu(), 1).numpy()


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: 15 equal-width confidence bins, weighted mean |accuracy - confidence|."""
    conf, pred = probs.max(1), probs.argmax(1)
    correct = (pred == labels).astype(float)
    which = np.minimum((conf * bins).astype(int), bins - 1)  # conf == 1 falls in the last bin
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def fidelity_metrics(teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor | None,
                     bootstrap: int = 1000, seed: int = 0) -> dict:
    lt, ls = _log_softmax(teacher_logits), _log_softmax(student_logits)
    pt, ps = np.exp(lt), np.exp(ls)
    t_pred, s_pred = pt.argmax(1), ps.argmax(1)
    out = {
        "n": int(len(pt)),
        "agreement": float((t_pred == s_pred).mean()),
        "kl_teacher_student": float((pt * (lt - ls)).sum(1).mean()),
        "tv": float(0.5 * np.abs(pt - ps).sum(1).mean()),
        # how unsure the teacher is here: its mean top-1 probability and mean entropy (nats)
        "teacher_confidence": float(pt.max(1).mean()),
        "teacher_entropy": float(-(pt * np.where(pt > 0, lt, 0.0)).sum(1).mean()),
    }
    keys = ["teacher_acc", "student_acc", "teacher_nll", "student_nll", "teacher_ece", "student_ece",
            "acc_diff", "acc_diff_ci", "mcnemar_p"]
    if labels is None:
        return {**out, **dict.fromkeys(keys)}
    y = labels.cpu().numpy()
    rows = np.arange(len(y))
    t_ok, s_ok = t_pred == y, s_pred == y
    out.update(
        teacher_acc=float(t_ok.mean()), student_acc=float(s_ok.mean()),
        teacher_nll=float(-lt[rows, y].mean()), student_nll=float(-ls[rows, y].mean()),
        teacher_ece=ece(pt, y), student_ece=ece(ps, y),
        acc_diff=float(s_ok.mean() - t_ok.mean()),
        acc_diff_ci=paired_bootstrap_ci(t_ok, s_ok, bootstrap, seed),
        mcnemar_p=mcnemar_exact(t_ok, s_ok),
    )
    return out
