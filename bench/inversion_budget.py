"""Inversion's accuracy for its compute: pools of INPUTS x ITERATIONS, each distilled into a student,
over seeds, and (`--reference`) against the DeepInversion-2k reference at 256 inputs, time to accuracy.

  python bench/inversion_budget.py [--grid 256x200,1024x50,512x100,2560x200] [--lr 0.25] [--augment cutmix]
         [--seeds 0[,1,...]] [--reference] [--set KEY=VALUE ...] [CONFIG] [overrides...]
  a grid cell INPUTSxITERATIONS may carry its own inversion arguments: 256x200+cosine=true+bn=3
  (default CONFIG: configs/fashion_mnist.yaml)

bench/synthesis.py compares each method at one pool size (and the reference at 256 inputs, one seed);
this sweeps how inversion spends its synthesis seconds, many rough inputs or few polished ones. Every
student gets the config's budget and `--augment` with the teacher on each view, as in
bench/synthesis.py, so its rows can be read next to that table's. With several seeds it prints the
mean and 95% t-interval of each cell's student accuracy; with `--reference` also each cell's accuracy
minus the reference's, paired by seed, and the reference's seconds over the cell's (the issue's goal:
>= 10x faster at >= the reference's accuracy). `--set KEY=VALUE` passes more inversion arguments to
every cell.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import yaml

from kdx.eval.statistics import mean_interval
from synthesis import REFERENCE, Bench  # bench/synthesis.py: the same data, teacher, students and scores


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?", default="configs/fashion_mnist.yaml")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--grid", default="256x200,1024x50,512x100,2560x200", help="INPUTSxITERATIONS,...")
    ap.add_argument("--lr", type=float, default=0.25)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another inversion argument")
    ap.add_argument("--augment", default="cutmix")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--reference", action="store_true", help="also the DeepInversion-2k reference, 256 inputs")
    ap.add_argument("--ref-iterations", type=int, default=REFERENCE["iterations"],
                    help="the reference's iterations per batch (fewer only to smoke-test this script)")
    args = ap.parse_args(argv)

    def arguments(pairs):
        return {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in pairs)}

    extra = arguments(args.set)
    cells = []  # (name, inputs, inversion spec)
    for cell in args.grid.split(","):
        shape, *pairs = cell.split("+")
        n, iterations = (int(v) for v in shape.lower().split("x"))
        cells.append((cell, n, {"name": "inversion", "iterations": iterations, "lr": args.lr, **extra,
                                **arguments(pairs)}))
    if args.reference:
        cells.append(("reference", REFERENCE["batch"], {**REFERENCE, "iterations": args.ref_iterations}))
    names = [name for name, _, _ in cells]
    results = {name: [] for name in names}  # name -> [(seconds, acc)] in seed order
    head = f"{'seed':>4s} {'pool':>28s} {'seconds':>8s} {'conf':>6s} {'acc':>7s} {'agree':>7s}"
    seeds = [int(s) for s in args.seeds.split(",")]
    args.seed = seeds[0]
    first = Bench.from_args(args)  # data and teacher loaded once; each seed reuses them
    print(f"# teacher test acc {first.teacher.test_acc:.4f}; student budget {first.base.distill.samples} "
          f"samples, augment {args.augment}; inversion lr {args.lr} {extra or ''}\n{head}", flush=True)
    for seed in seeds:
        bench = first.with_seed(seed)
        for name, n, spec in cells:
            made = bench.made_by(spec, n)
            acc, agree = bench.student_on(bench.pool(made["x"]))
            conf, _ = bench.describe(made["logits"])
            results[name].append((made["seconds"], acc))
            print(f"{seed:4d} {name:>28s} {made['seconds']:8.1f} {conf:6.3f} {acc:7.4f} {agree:7.4f}", flush=True)

    print(f"\n{'pool':>28s}  seconds  student acc, mean [95% CI]" + ("   acc - reference [95% CI]   ref s / s"
                                                                  if args.reference else ""))
    for name in names:
        seconds, acc = np.array(results[name]).T
        m, lo, hi = mean_interval(acc)
        line = f"{name:>28s} {seconds.mean():8.1f}  {m:.4f} [{lo:.4f}, {hi:.4f}]"
        if args.reference and name != "reference":
            ref_seconds, ref_acc = np.array(results["reference"]).T
            d, dlo, dhi = mean_interval(acc - ref_acc)
            line += f"   {d:+.4f} [{dlo:+.4f}, {dhi:+.4f}]   {ref_seconds.mean() / seconds.mean():6.1f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
