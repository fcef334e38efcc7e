"""Measurements the findings page makes on finished runs beyond their metrics.json: the teacher's outputs on
uniform noise, a student's confidence, and a student's accuracy once BatchNorm is re-estimated on train inputs."""
from __future__ import annotations

import numpy as np
import torch

from kdx.data import Dataset, model_input
from kdx.eval import heldout
from kdx.models import predict
from kdx.rundir import FinishedRun, load_student
from kdx.study.folders import Run


def entropy(logits: torch.Tensor) -> np.ndarray:
    logp = torch.log_softmax(logits.float(), 1)
    return (-(logp.exp() * logp).sum(1)).numpy()


def outputs_on(model_logits: torch.Tensor) -> dict:
    """Mean entropy (nats), mean top-1 probability and the share of inputs given to each class."""
    p = torch.softmax(model_logits.float(), 1)
    return {"entropy": float(entropy(model_logits).mean()), "confidence": float(p.max(1).values.mean()),
            "top1_share": np.bincount(p.argmax(1).numpy(), minlength=p.shape[1]) / len(p)}


def teacher_outputs(run: FinishedRun) -> tuple[dict, dict]:
    """outputs_on of the run's teacher on uniform noise (eval.n inputs of the eval seed) and on test."""
    data, teacher = run.data, run.teacher
    noise = heldout.load("uniform_noise", data, run.cfg.eval.n, run.cfg.eval.seed).x
    return outputs_on(teacher.logits(noise).cpu()), outputs_on(teacher.logits(data.x_test).cpu())


def student_confidence(run: Run, data: Dataset) -> dict:
    """outputs_on of the run's student on test."""
    return outputs_on(predict(load_student(run.dir, run.planned.cfg, data), data.x_test).cpu())


def recalibrated_acc(run: Run, data: Dataset) -> float:
    """Test accuracy after BatchNorm's running statistics are re-estimated on the train inputs alone (a
    student trained on mixed batches normalises with statistics that include the noise)."""
    student = load_student(run.dir, run.planned.cfg, data)
    norms = [m for m in student.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the pass
    student.train()
    with torch.no_grad():
        for i in range(0, len(data.x_train), 256):
            student(model_input(data.x_train[i:i + 256]))
    return float((predict(student, data.x_test).argmax(1).cpu() == data.y_test).float().mean())
