"""Inversion's accuracy for its compute: pools of INPUTS x ITERATIONS, each distilled into a student.

  python bench/inversion_budget.py [--grid 256x200,1024x50,512x100,2560x200] [--lr 0.25] [--augment cutmix]
         [CONFIG] [overrides...]   (default CONFIG: configs/fashion_mnist.yaml)

bench/synthesis.py compares each method at one pool size (and the DeepInversion-2k reference at 256
inputs); this sweeps how inversion spends its synthesis seconds, many rough inputs or few polished
ones, at kdx's learning rate. Every student gets the config's budget and `--augment` with the teacher
on each view, as in bench/synthesis.py, so its rows can be read next to that table's.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import kdx.cli
from kdx import config as kconfig
from kdx.data import load
from kdx.distill.loop import distill
from kdx.distill.teacher import build_model, get_teacher, predict
from kdx.sampling.base import PoolSource
from kdx.synth import synthesize


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?", default="configs/fashion_mnist.yaml")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--grid", default="256x200,1024x50,512x100,2560x200", help="INPUTSxITERATIONS,...")
    ap.add_argument("--lr", type=float, default=0.25)
    ap.add_argument("--augment", default="cutmix")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if "=" in args.config:
        args.overrides, args.config = [args.config, *args.overrides], "configs/fashion_mnist.yaml"
    kdx.cli._register_all()
    base = kconfig.load_config(args.config, args.overrides + [f"seed={args.seed}"])
    data = load(base.data)
    teacher = get_teacher(base, data)
    t_pred = predict(teacher.model, data.x_test).argmax(1)
    y_test = data.y_test.to(t_pred.device)
    print(f"# teacher test acc {teacher.test_acc:.4f}; student budget {base.distill.samples} samples, "
          f"augment {args.augment}; inversion lr {args.lr}; seed {args.seed}", flush=True)
    print(f"{'inputs':>7s} {'iters':>6s} {'seconds':>8s} {'conf':>6s} {'acc':>7s} {'agree':>7s}", flush=True)
    for cell in args.grid.split(","):
        n, iterations = (int(v) for v in cell.lower().split("x"))
        spec = {"name": "inversion", "iterations": iterations, "lr": args.lr}
        made = synthesize(dataclasses.replace(base, source=spec), data, teacher, n)
        student = build_model(base.student.model, data, "student.model", args.seed)
        distill(student, PoolSource(data, args.seed, made["x"], None, args.augment), base.distill, args.seed,
                teacher=teacher.model, teacher_logits_fn=lambda x: predict(teacher.model, x), desc="budget")
        pred = predict(student, data.x_test).argmax(1)
        acc, agree = float((pred == y_test).float().mean()), float((pred == t_pred).float().mean())
        conf = float(made["logits"].softmax(1).max(1).values.mean())
        print(f"{n:7d} {iterations:6d} {made['seconds']:8.1f} {conf:6.3f} {acc:7.4f} {agree:7.4f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
