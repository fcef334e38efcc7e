"""The one training loop, for every source, every loss, and for teachers too (loss `onehot`).

Read top to bottom: set up device and models, draw a batch from the source, get the teacher's
logits (cached by the source for fixed inputs, else computed on this exact view), pick the loss
for this point of training (late distillation switches from one-hot to distillation at
`switch_at`), step, log every `log_every` steps (the only host syncs), checkpoint atomically;
every `curve_every` samples the caller's `curve` scores the student (the learning curve).
A killed run resumes from its checkpoint to the same result as an uninterrupted one: the
source's cursor is checkpointed and every random draw is a function of (seed, step).

Under torchrun (`ddp=True`) the student is wrapped in DistributedDataParallel and each of the
`world` ranks trains on batch_size / world inputs a step: the source's stream is cut into draws of
that size, draw `step * world + rank` is the rank's and the others are skipped, so the ranks' shares
are disjoint and every rank's source state is the same (rank 0's checkpoint resumes them all). From
a fixed pool without augmentation a step trains on the very inputs of one process's step; random
draws (augmentation, noise) are keyed by draw, so they differ from one process's. Only rank 0
writes the log and checkpoints.
"""
from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from kdx.config import DistillConfig
from kdx.device import autocast, prepare_model, resolve_device
from kdx.distill.losses import NEEDS_LABELS
from kdx.distill.schedules import build_optimizer, build_schedule
from kdx.errors import KdxError, first_line
from kdx.io import append_text, reading, save_torch
from kdx.registry import LOSSES
from kdx.sampling.base import Batch, Source

CHECKPOINT = "checkpoint.pt"  # the loop's resumable state, in the run (or teacher cache) directory
LOG = "log.jsonl"


PLAIN = (bool, int, float, str, type(None))


def plain(obj, where: str = "checkpoint"):
    """The checkpoint's state as tensors and plain values only (numpy scalars become Python numbers, numpy
    arrays tensors), so that it loads with weights_only=True: a checkpoint that holds code is refused on
    resume, never run. Anything else is refused now, naming where it sits."""
    if isinstance(obj, (torch.Tensor, *PLAIN)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict):
        return {plain(k, where): plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise KdxError(f"{where} is a {type(obj).__name__}: a checkpoint holds only tensors and plain values (numbers, "
                   "strings, None, lists, tuples, dicts), so a source's state_dict() must return those")


def load_checkpoint(path: Path, device: torch.device) -> dict:
    """The loop's checkpoint, loaded with weights_only=True (tensors and plain values; never code)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle and zip each raise their own types
        raise KdxError(f"{path} is not a checkpoint kdx resumes from ({type(e).__name__}: "
                       f"{first_line(e, 200, 'unreadable')}): it holds more than tensors and "
                       "plain values, or is damaged, and was not loaded; start the run again with --overwrite") from None


def loss_for_step(cfg: DistillConfig, step: int, steps: int) -> str:
    """The late-distillation protocol: one-hot before switch_at (fraction of steps), cfg.loss after."""
    if cfg.switch_at is None:
        return cfg.loss
    before = step < cfg.switch_at * steps
    first, second = ("onehot", cfg.loss) if cfg.switch_order == "onehot_first" else (cfg.loss, "onehot")
    return first if before else second


def rank_batch(source: Source, step: int, batch_size: int, rank: int, world: int) -> Batch:
    """This rank's share of the step: draw `step * world + rank` of batch_size / world inputs, the
    other ranks' draws skipped (with one process, simply source.batch(step, batch_size))."""
    batch = None
    for r in range(world):
        if r == rank:
            batch = source.batch(step * world + r, batch_size // world)
        else:
            source.skip(step * world + r, batch_size // world)
    return batch


def distill(student: torch.nn.Module, source: Source, cfg: DistillConfig, *, teacher=None,
            run_dir: Path | None = None, resume: bool = False, desc: str = "distill", ddp: bool = False,
            curve=None, on_log=None) -> dict:
    """Train `student` on `source` for cfg.samples inputs; the config was checked by kdx.run.validate.
    `teacher` (a kdx.distill.teacher.Teacher: model and cached logits) is needed by every loss but
    one-hot; the checkpoint and the log go to run_dir. `curve(student) -> dict` (eval mode, no
    gradients, no randomness: training is unchanged) is logged every cfg.curve_every samples; `on_log(record)`
    gets each record appended to log.jsonl (the run's experiment trackers, kdx.trackers)."""
    device = resolve_device(cfg.device)
    image = source.data.is_image
    steps = max(1, math.ceil(cfg.samples / cfg.batch_size))
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    if cfg.batch_size % world:
        raise KdxError(f"distill.batch_size={cfg.batch_size} must be a multiple of the {world} processes")

    # Models: the teacher in eval mode (BatchNorm statistics frozen), never with gradients.
    student = prepare_model(student, device, image).train()
    teacher_model = None if teacher is None else prepare_model(teacher.model, device, image).eval().requires_grad_(False)
    teacher_forward = torch.compile(teacher_model) if teacher_model is not None and cfg.compile_teacher else teacher_model
    forward = DDP(student) if ddp else student  # DDP averages the gradients over ranks in backward()
    forward = torch.compile(forward) if cfg.compile else forward
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # so peak_gpu_mb is this training's, not the teacher's
    source.setup(device, teacher.logits if teacher else None, teacher=teacher_model, student=student)
    opt = build_optimizer(student.parameters(), cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
    sched = build_schedule(opt, cfg.schedule, steps, cfg.warmup)

    start = 0
    # Inputs the teacher ran on here, and inputs whose logits the source looked up (cached for fixed inputs)
    counts = {"teacher_forwards": 0, "teacher_cache_lookups": 0}
    ckpt_path = run_dir / CHECKPOINT if run_dir else None
    if resume and ckpt_path and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, device)
        with reading(ckpt_path, "delete it (the run starts again from step 0) or start the run again with --overwrite"):
            student.load_state_dict(state["student"])  # a checkpoint of another model or loop, or one that loads damaged
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["schedule"])
            source.load_state_dict(state["source"])
            counts = dict(state.get("counts", counts))
            start = int(state["step"])

    def save_checkpoint(step: int):
        if ckpt_path:
            save_torch(ckpt_path, plain({"student": student.state_dict(), "optimizer": opt.state_dict(),
                                         "schedule": sched.state_dict(), "source": source.state_dict(), "step": step,
                                         "counts": dict(counts)}))

    log = run_dir / LOG if run_dir and rank == 0 else None  # appended through kdx.io: a full disk is named

    def write_log(record: dict) -> None:
        append_text(log, json.dumps(record) + "\n")
        if on_log:
            on_log(record)

    bar = tqdm(total=steps, initial=start, desc=desc, disable=rank > 0 or not sys.stderr.isatty(), leave=False)
    t_start = t_last = time.perf_counter()
    last_logged, value = start, None
    for step in range(start, steps):
        batch = rank_batch(source, step, cfg.batch_size, rank, world)
        x = batch.x.contiguous(memory_format=torch.channels_last) if image else batch.x
        loss_name = loss_for_step(cfg, step, steps)
        with autocast(device):
            t_logits = batch.teacher_logits
            if t_logits is None and loss_name not in NEEDS_LABELS:
                with torch.no_grad():
                    t_logits = teacher_forward(x)
                counts["teacher_forwards"] += len(x)
            elif t_logits is not None and not batch.counted:
                counts["teacher_cache_lookups"] += len(x)
            s_logits = forward(x)
            positions = {} if batch.mask is None else {"mask": batch.mask}  # LM: the positions the loss counts
            loss_args = cfg.loss_args if loss_name == cfg.loss else {}
            loss = LOSSES.get(loss_name).fn(s_logits.float(), None if t_logits is None else t_logits.float(),
                                            batch.y, cfg.temperature, **positions, **loss_args)
            if cfg.alpha > 0 and loss_name not in NEEDS_LABELS:
                loss = (1 - cfg.alpha) * loss + cfg.alpha * LOSSES.get("onehot").fn(s_logits.float(), None, batch.y,
                                                                                  1.0, **positions)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.update(1)

        done = step + 1
        if done % cfg.log_every == 0 or done == steps or done % cfg.checkpoint_every == 0:
            value = loss.detach().clone()
            if ddp:  # the mean over ranks, so that every rank sees (and stops on) the same value
                dist.all_reduce(value)
                value /= world
            value = value.item()  # the only host sync: every log_every steps
            if not math.isfinite(value):
                raise KdxError(f"{desc}: loss is {value} at step {done}; the last good checkpoint "
                               f"{'is kept in ' + str(ckpt_path) if ckpt_path and ckpt_path.exists() else 'was never written'}. "
                               "Lower distill.lr, or check the source's inputs.")
            now = time.perf_counter()
            rate = (done - last_logged) * cfg.batch_size / max(now - t_last, 1e-9)
            t_last, last_logged = now, done
            bar.set_postfix(loss=f"{value:.4f}", rate=f"{rate:,.0f}/s")
            if log:
                epoch = done * cfg.batch_size / source.epoch_size if source.epoch_size else None
                write_log({"step": done, "epoch": epoch, "loss": value, "loss_name": loss_name,
                           "lr": sched.get_last_lr()[0], "samples_per_s": rate})
            if done % cfg.checkpoint_every == 0 and done < steps and rank == 0:
                save_checkpoint(done)
        if log and curve and cfg.curve_every and (done * cfg.batch_size // cfg.curve_every
                                                  > step * cfg.batch_size // cfg.curve_every or done == steps):
            write_log({"step": done, "samples": done * cfg.batch_size, "curve": curve(student)})
    bar.close()
    seconds = time.perf_counter() - t_start
    trained = (steps - start) * cfg.batch_size
    return {"steps": steps, "samples": steps * cfg.batch_size, "seconds": seconds,
            "samples_per_s": trained / max(seconds, 1e-9), "resumed_from_step": start,
            "final_loss": value, "accounting": accounting(counts, source, steps * cfg.batch_size, ddp, device),
            **peak_memory(device, ddp)}


def accounting(counts: dict, source: Source, samples: int, ddp: bool, device: torch.device) -> dict:
    """What the run cost in model forwards, so studies can compare sources at equal teacher queries, not
    only at equal steps: the loop's own counts plus the source's (an adaptive source scores candidates;
    logits it passes on are counted once, by it). Counts are inputs, summed over ranks; `teacher_queries`
    = forwards + cache lookups (a looked-up row counts as a query: the cache only saves recomputing it)."""
    extra = source.accounting()
    numbers = {k: v for k, v in extra.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    teacher = counts["teacher_forwards"] + numbers.get("teacher_forwards", 0)
    lookups = counts["teacher_cache_lookups"] + numbers.get("teacher_cache_lookups", 0)
    student = numbers.get("student_forwards", 0)  # scoring forwards (no grad); training adds `samples`
    totals = [teacher, lookups, student]
    if ddp:
        t = torch.tensor(totals, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        totals = [int(v) for v in t.tolist()]
    return {"samples_trained": samples, "teacher_forwards": totals[0], "teacher_cache_lookups": totals[1],
            "teacher_queries": totals[0] + totals[1], "student_forwards": samples + totals[2],
            "source": extra}


def peak_memory(device: torch.device, ddp: bool = False) -> dict:
    """The process's peak resident memory so far (data and teacher included) and, on CUDA, the peak
    memory PyTorch allocated on the device since training started; in MiB, the largest over ranks."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    if ddp:
        peaks = torch.tensor([rss, gpu or 0.0], device=device)
        dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
        rss, gpu = peaks[0].item(), None if gpu is None else peaks[1].item()
    return {"peak_rss_mb": round(rss, 1), "peak_gpu_mb": None if gpu is None else round(gpu, 1)}
