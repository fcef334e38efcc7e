"""Text distillation throughput against its ideal, all measured in one process on the same data and models.

  python bench/text.py [CONFIG] [overrides...] [--steps 40] [--repeats 3] [--append bench/RESULTS.md]
  (default: configs/text_debian.yaml: BERT 2x128 teacher, bag-of-embeddings student, 64 tokens)

(a) student-only training (one-hot loss on the train set), (b) teacher inference on train inputs,
(c) kdx distillation per text source. Ideal for a source whose teacher outputs are cached (the train
set without augmentation) is (a); for one that runs the teacher on every batch (word-dropout views,
noise) it is 1 / (1/a + 1/b); hotflip also pays its synthesis (teacher forward-backward per flip), so
its ratio to that ideal says what synthesis costs. Figures are medians over interleaved rounds
(bench/loop.py's `interleaved_medians`), so slow drift of a shared machine hits all of them alike.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from loop import interleaved_medians  # noqa: E402 - bench/loop.py, next to this file

from kdx import config as kconfig  # noqa: E402
from kdx.data import load_dataset  # noqa: E402
from kdx.device import resolve_device  # noqa: E402
from kdx.distill.loop import distill  # noqa: E402
from kdx.distill.teacher import get_teacher  # noqa: E402
from kdx.models import build_model, predict  # noqa: E402
from kdx.registry import SOURCES  # noqa: E402

SOURCES_TO_TIME = [("train (cached)", {"name": "train"}, "cached"),
                   ("train word_dropout", {"name": "train", "augment": "word_dropout", "p": 0.15}, "per-batch"),
                   ("noise unigram", {"name": "noise", "kind": "unigram"}, "per-batch"),
                   ("hotflip (4 flips, refresh 10)", {"name": "hotflip", "flips": 4, "refresh_every": 10,
                                                      "pool_size": 2560}, "per-batch")]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("args", nargs="*", help="[CONFIG] then dotted overrides")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--append", default="", help="append the table to this markdown file")
    ap.add_argument("--note", default="", help="a line about the machine (shared? quiet?) for the appended table")
    opts = ap.parse_args(argv)
    path = opts.args[0] if opts.args and "=" not in opts.args[0] else "configs/text_debian.yaml"
    overrides = [a for a in opts.args if "=" in a]
    cfg = kconfig.load_config(path, overrides)
    data = load_dataset(cfg.data)
    teacher = get_teacher(cfg, data)
    device = resolve_device(cfg.distill.device)
    b, steps = cfg.distill.batch_size, opts.steps
    loop_cfg = dataclasses.replace(cfg.distill, samples=steps * b, log_every=steps, checkpoint_every=10**9)

    def loop_rate(spec: dict, loss: str, with_teacher: bool) -> float:
        student = build_model(cfg.student.model, data, "student.model", 0)
        source = SOURCES.build(spec, "source", data=data, seed=0)
        return distill(student, source, dataclasses.replace(loop_cfg, loss=loss),
                       teacher=teacher if with_teacher else None)["samples_per_s"]

    def teacher_rate() -> float:
        x = data.x_train[: steps * b].to(device)
        t = time.perf_counter()
        predict(teacher.model, x, b)
        return len(x) / (time.perf_counter() - t)

    fns = {"a": lambda: loop_rate({"name": "train"}, "onehot", False), "b": teacher_rate}
    for label, spec, _ in SOURCES_TO_TIME:
        fns[label] = lambda spec=spec: loop_rate(spec, cfg.distill.loss, True)
    med = interleaved_medians(fns, opts.repeats)
    a, t = med["a"], med["b"]
    per_batch = 1 / (1 / a + 1 / t)
    head = (f"device {device}, {torch.get_num_threads()} thread(s), batch {b}, max_length {data.max_length}, "
            f"teacher {cfg.teacher.model} student {cfg.student.model}, {steps} steps x {opts.repeats} interleaved rounds (median)")
    lines = [head, "", "| what | samples/s | ideal | kdx / ideal |", "|---|---|---|---|",
             f"| student-only training (a) | {a:,.0f} | - | - |", f"| teacher inference (b) | {t:,.0f} | - | - |"]
    for label, _, kind in SOURCES_TO_TIME:
        ideal = a if kind == "cached" else per_batch
        lines.append(f"| distill, {label} | {med[label]:,.0f} | {ideal:,.0f} | {med[label] / ideal:.2f} |")
    text = "\n".join(lines)
    print(text)
    if opts.append:
        when = datetime.date.today().isoformat()
        cmd = "python bench/text.py " + " ".join(argv if argv is not None else sys.argv[1:])
        with open(opts.append, "a") as f:
            f.write(f"\n## Text distillation throughput: `{cmd.strip()}`\n\n{when}, {opts.note or 'machine state not given'}.\n\n"
                    f"{text}\n")


if __name__ == "__main__":
    main()
