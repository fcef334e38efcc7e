"""Throughput of the one loop against its parts, in one process on the same data and models.

  python bench/loop.py [CONFIG] [overrides...]     (default: configs/fashion_mnist.yaml)

(a) student-only training (one-hot loss), (b) teacher inference, (c) kdx distillation per source.
Ideal for a source that runs the teacher per batch is 1 / (1/a + 1/b); for cached sources it is a.
Each figure is the median of 3 repeats of 60 steps, after a warm-up repeat.
"""
from __future__ import annotations

import dataclasses
import statistics
import sys
import time

import torch

import kdx.cli
from kdx import config as kconfig
from kdx.data import load
from kdx.distill.loop import distill, resolve_device
from kdx.distill.teacher import build_model, get_teacher, predict
from kdx.registry import SOURCES

REPEATS, STEPS = 3, 60


def median_rate(fn) -> float:
    fn()  # warm-up
    return statistics.median(fn() for _ in range(REPEATS))


def main(argv: list[str]) -> None:
    kdx.cli._register_all()
    path = argv[0] if argv and "=" not in argv[0] else "configs/fashion_mnist.yaml"
    cfg = kconfig.load_config(path, [a for a in argv if "=" in a])
    data = load(cfg.data)
    teacher = get_teacher(cfg, data)
    device = resolve_device(cfg.distill.device)
    b = cfg.distill.batch_size
    loop_cfg = dataclasses.replace(cfg.distill, samples=STEPS * b, log_every=STEPS, checkpoint_every=10**9)

    def loop_rate(source_spec: dict, loss: str, with_teacher: bool) -> float:
        student = build_model(cfg.student.model, data, "student.model", 0)
        source = SOURCES.build(source_spec, "source", data=data, seed=0)
        stats = distill(student, source, dataclasses.replace(loop_cfg, loss=loss), 0,
                        teacher=teacher.model if with_teacher else None,
                        teacher_logits_fn=teacher.outputs if with_teacher else None)
        return stats["samples_per_s"]

    def teacher_rate() -> float:
        x = data.x_train[: STEPS * b].to(device)
        t = time.perf_counter()
        predict(teacher.model, x, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(x) / (time.perf_counter() - t)

    a = median_rate(lambda: loop_rate({"name": "train"}, "onehot", False))
    t = median_rate(teacher_rate)
    per_batch_ideal = 1 / (1 / a + 1 / t)
    rows = [("student-only training (a)", a, None), ("teacher inference (b)", t, None)]
    for label, spec, ideal in [("distill train (cached)", {"name": "train"}, a),
                               ("distill train flip_crop", {"name": "train", "augment": "flip_crop"}, per_batch_ideal),
                               ("distill train mixup", {"name": "train", "augment": "mixup"}, per_batch_ideal),
                               ("distill noise uniform", {"name": "noise"}, per_batch_ideal)]:
        rows.append((label, median_rate(lambda: loop_rate(spec, cfg.distill.loss, True)), ideal))
    print(f"device {device}, threads {torch.get_num_threads()}, batch {b}, torch {torch.__version__}, "
          f"teacher {cfg.teacher.model['name']} student {cfg.student.model['name']}")
    print(f"{'what':28s} {'samples/s':>10s} {'ideal':>10s} {'kdx/ideal':>10s}")
    for label, rate, ideal in rows:
        extra = f"{ideal:10,.0f} {rate / ideal:10.2f}" if ideal else ""
        print(f"{label:28s} {rate:10,.0f} {extra}")


if __name__ == "__main__":
    main(sys.argv[1:])
