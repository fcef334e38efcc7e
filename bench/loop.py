"""Throughput of the one loop against its parts and against torchdistill, in one process on the
same data, models, batch size, optimizer, KL loss (same temperature) and precision.

  python bench/loop.py [CONFIG] [overrides...] [--steps 60] [--repeats 3]   (default: configs/fashion_mnist.yaml)

(a) student-only training (one-hot loss), (b) teacher inference, (c) kdx distillation per source,
(d) torchdistill 1.1.5's DistillationBox (`pip install 'kdx[bench]'`) on the same source's batches.
kdx+ct: kdx with distill.compile_teacher for the sources that run the teacher per batch.
Ideal for a source that runs the teacher per batch is 1 / (1/a + 1/b); for cached sources it is a.
Each figure is the median of `repeats` rounds of `steps` steps after a warm-up round; a round
times every figure once, interleaved, so the ratios compare measurements taken side by side. The ratios
come last: kdx / ideal and kdx / torchdistill per source.

torchdistill gets each batch from the same kdx source (so both sides pay the same input cost), is
fed it through forward_process/post_forward_process as its own training loop does, and, having no
teacher-output cache of that kind, runs the teacher on every batch, cached source included.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from kdx import config as kconfig
from kdx.data import load_dataset
from kdx.device import autocast, prepare_model, resolve_device
from kdx.distill.loop import distill
from kdx.models import build_model, predict
from kdx.distill.teacher import get_teacher
from kdx.registry import LOSSES, SOURCES


def interleaved_medians(fns: dict, repeats: int) -> dict:
    """Median rate of each fn over `repeats` rounds after a warm-up round; every round runs every fn,
    in an order rotated each round, so that slow drift of a shared machine hits all of them alike
    (timed one after another, 3 repeats each, the cached source once read 0.81 of student-only
    speed; interleaved it read 1.09 and the two overlap)."""
    names = list(fns)
    for name in names:
        fns[name]()
    rates = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            rates[name].append(fns[name]())
    return {name: statistics.median(v) for name, v in rates.items()}


def torchdistill_rate(cfg, data, teacher, device, source_spec: dict, steps: int) -> float:
    """samples/s of torchdistill's DistillationBox: KDLoss at cfg's temperature, weighted by T^2 as
    kdx's `kl` is, the same SGD, a per-step cosine schedule, bf16 autocast on CUDA as kdx."""
    from torchdistill.core.distillation import get_distillation_box

    d, b = cfg.distill, cfg.distill.batch_size
    student = prepare_model(build_model(cfg.student.model, data, "student.model", 0), device, data.is_image)
    source = SOURCES.build(source_spec, "source", data=data, seed=0)
    source.setup(device, None)
    kd = {"key": "KDLoss", "kwargs": {"student_module_path": ".", "student_module_io": "output",
                                      "teacher_module_path": ".", "teacher_module_io": "output",
                                      "temperature": d.temperature, "alpha": 0.0, "reduction": "batchmean"}}
    train_config = {
        "num_epochs": 1,
        "teacher": {"requires_grad": False, "forward_proc": "forward_batch_only"},
        "student": {"forward_proc": "forward_batch_only"},
        "optimizer": {"key": "SGD", "kwargs": {"lr": d.lr, "momentum": d.momentum, "weight_decay": d.weight_decay}},
        "scheduler": {"key": "CosineAnnealingLR", "kwargs": {"T_max": steps}, "scheduling_step": 1},
        "criterion": {"key": "WeightedSumLoss",
                      "kwargs": {"sub_terms": {"kd": {"criterion": kd, "weight": d.temperature ** 2}}}},
    }
    box = get_distillation_box(teacher, student, {}, train_config, device, None, False, 1)
    box.pre_epoch_process(epoch=0)  # teacher.eval(), student.train()
    x0 = source.batch(0, b).x.contiguous(memory_format=torch.channels_last) if data.is_image else source.batch(0, b).x
    with torch.no_grad():  # the very loss kdx minimises (`kl`, x T^2), checked once before timing
        ref = LOSSES.get("kl").fn(student(x0), teacher(x0), None, d.temperature)
        assert torch.allclose(box.forward_process(x0, None, None), ref, rtol=1e-4, atol=1e-5)
    t = time.perf_counter()
    for step in range(steps):
        batch = source.batch(step, b)
        x = batch.x.contiguous(memory_format=torch.channels_last) if data.is_image else batch.x
        with autocast(device):
            loss = box.forward_process(x, batch.y, None)
        box.post_forward_process(loss)
    loss.item()  # wait for the device, as kdx's loop does at its last log step
    return steps * b / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("args", nargs="*", help="[CONFIG] then dotted overrides")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=5)
    opts = ap.parse_args(argv)
    argv, steps, repeats = opts.args, opts.steps, opts.repeats
    path = argv[0] if argv and "=" not in argv[0] else "configs/fashion_mnist.yaml"
    cfg = kconfig.load_config(path, [a for a in argv if "=" in a])
    data = load_dataset(cfg.data)
    teacher = get_teacher(cfg, data)
    device = resolve_device(cfg.distill.device)
    b = cfg.distill.batch_size
    loop_cfg = dataclasses.replace(cfg.distill, samples=steps * b, log_every=steps, checkpoint_every=10**9)

    def loop_rate(source_spec: dict, loss: str, with_teacher: bool, compile_teacher: bool = False) -> float:
        student = build_model(cfg.student.model, data, "student.model", 0)
        source = SOURCES.build(source_spec, "source", data=data, seed=0)
        stats = distill(student, source, dataclasses.replace(loop_cfg, loss=loss, compile_teacher=compile_teacher),
                        teacher=teacher if with_teacher else None)
        return stats["samples_per_s"]

    def teacher_rate() -> float:
        x = data.x_train[: steps * b].to(device)
        t = time.perf_counter()
        predict(teacher.model, x, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(x) / (time.perf_counter() - t)

    try:
        import torchdistill
    except ImportError:
        torchdistill = None
        print("torchdistill is not installed (pip install 'kdx[bench]'): no torchdistill column")

    sources = [("train (cached)", {"name": "train"}, True),
               ("train flip_crop", {"name": "train", "augment": "flip_crop"}, False),
               ("train mixup", {"name": "train", "augment": "mixup"}, False),
               ("noise uniform", {"name": "noise"}, False)]
    fns = {"a": lambda: loop_rate({"name": "train"}, "onehot", False), "b": teacher_rate}
    for label, spec, cached in sources:
        fns["kdx " + label] = lambda spec=spec: loop_rate(spec, cfg.distill.loss, True)
        if not cached:  # distill.compile_teacher: the teacher's per-batch forward compiled (in the warm-up round)
            fns["kdx+ct " + label] = lambda spec=spec: loop_rate(spec, cfg.distill.loss, True, True)
        if torchdistill:
            fns["td " + label] = lambda spec=spec: torchdistill_rate(cfg, data, teacher.model, device, spec, steps)
    med = interleaved_medians(fns, repeats)
    a, t = med["a"], med["b"]
    per_batch_ideal = 1 / (1 / a + 1 / t)
    rows = [(label, med["kdx " + label], med.get("kdx+ct " + label), a if cached else per_batch_ideal,
             med.get("td " + label)) for label, _, cached in sources]
    # (source, kdx samples/s, kdx with compiled teacher, ideal, torchdistill samples/s)
    print(f"device {device}, threads {torch.get_num_threads()}, batch {b}, torch {torch.__version__}, "
          f"torchdistill {torchdistill.__version__ if torchdistill else 'absent'}, teacher "
          f"{cfg.teacher.model['name']} student {cfg.student.model['name']}, {steps} steps x {repeats} interleaved rounds (median)")
    print(f"{'student-only training (a)':34s} {a:12,.0f} samples/s")
    print(f"{'teacher inference (b)':34s} {t:12,.0f} samples/s")
    print(f"{'distillation, samples/s':34s} {'kdx':>12s} {'kdx+ct':>12s} {'ideal':>12s} {'torchdistill':>12s}")
    fmt = lambda v: f"{v:,.0f}" if v else "-"  # noqa: E731
    for label, rate, rate_ct, ideal, td in rows:
        print(f"{'  ' + label:34s} {rate:12,.0f} {fmt(rate_ct):>12s} {ideal:12,.0f} {fmt(td):>12s}")
    print("kdx+ct: distill.compile_teacher=true (the teacher's per-batch forward compiled; compile time not counted)")
    print("ratios (goals: kdx/ideal >= 0.9, the cached source's ideal being student-only speed; "
          "kdx/torchdistill >= 1.5 on CPU, >= 3 on GPU)")
    print(f"{'  source':34s} {'kdx/ideal':>12s} {'kdx/td':>12s} {'kdx+ct/td':>12s}")
    for label, rate, rate_ct, ideal, td in rows:
        ratio = lambda num: f"{num / td:.2f}" if num and td else "-"  # noqa: E731
        print(f"{'  ' + label:34s} {rate / ideal:12.2f} {ratio(rate):>12s} {ratio(rate_ct):>12s}")


if __name__ == "__main__":
    main()
