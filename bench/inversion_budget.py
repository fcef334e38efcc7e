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
import sys

from synthesis import Bench  # bench/synthesis.py: the same data, teacher, students and scores


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?", default="configs/fashion_mnist.yaml")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--grid", default="256x200,1024x50,512x100,2560x200", help="INPUTSxITERATIONS,...")
    ap.add_argument("--lr", type=float, default=0.25)
    ap.add_argument("--augment", default="cutmix")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    bench = Bench.from_args(args)
    print(f"# teacher test acc {bench.teacher.test_acc:.4f}; student budget {bench.base.distill.samples} samples, "
          f"augment {args.augment}; inversion lr {args.lr}; seed {args.seed}", flush=True)
    print(f"{'inputs':>7s} {'iters':>6s} {'seconds':>8s} {'conf':>6s} {'acc':>7s} {'agree':>7s}", flush=True)
    for cell in args.grid.split(","):
        n, iterations = (int(v) for v in cell.lower().split("x"))
        made = bench.made_by({"name": "inversion", "iterations": iterations, "lr": args.lr}, n)
        acc, agree = bench.student_on(bench.pool(made["x"]))
        conf, _ = bench.describe(made["logits"])
        print(f"{n:7d} {iterations:6d} {made['seconds']:8.1f} {conf:6.3f} {acc:7.4f} {agree:7.4f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
