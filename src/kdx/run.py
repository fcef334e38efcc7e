"""One run: config -> data -> teacher (cached) -> source -> the loop -> student.pt -> eval -> metrics.json.

Under torchrun (RANK and WORLD_SIZE set) every rank runs this: rank 0 prepares the run directory
and finds or trains the teacher while the others wait, all ranks train (DistributedDataParallel)
and evaluate (sharded, gathered on rank 0), and rank 0 alone writes files.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist

import kdx
from kdx import config as kconfig
from kdx import trackers
from kdx.data import difficulty, load_dataset
from kdx.data.text import anchor_accuracy
from kdx.device import resolve_device
from kdx.distill.loop import distill
from kdx.distill.losses import NEEDS_LABELS, check_loss_fits
from kdx.distill.teacher import Teacher, cache_root, get_teacher
from kdx.errors import KdxError
from kdx.eval import distribution_names, heldout, heldout_metrics
from kdx.eval.lm import evaluate_lm, lm_curve
from kdx.io import save_arrays, save_torch, write_json
from kdx.models import build_model, load_weights, num_params, predict, read_state_dict
from kdx.models.blackbox import is_black_box
from kdx.models.ensemble import check_ensemble
from kdx.models.gpt import check_vocabularies
from kdx.registry import DATASETS, HELDOUT, LOSSES, MODELS, SOURCES
from kdx.rundir import CHECKPOINT, CONFIG, DRAWS, METRICS, STUDENT, TRAIN_LABELS, locked, read_config, write_config
from kdx.sampling.base import GRADIENT_SOURCES, Source


def validate_training(cfg: kconfig.RunConfig) -> dict:
    """What a run needs beyond its models and data: values in range, the loss, the held-out distributions
    and the source. Returns the resolved source spec (its defaults filled in)."""
    kconfig.check_domains(cfg, "config")
    LOSSES.validate({"name": cfg.distill.loss, **cfg.distill.loss_args}, "distill.loss_args")
    for name in cfg.eval.distributions:
        if name != "default":
            HELDOUT.validate(heldout.parse(name), f"eval.distributions: '{name}'")
    trackers.check(cfg.report)
    return {"name": cfg.source["name"], **SOURCES.validate(cfg.source, "source")}


def validate(cfg: kconfig.RunConfig) -> dict:
    """Check every value, file and registry reference before any work starts; return the source spec."""
    DATASETS.validate(difficulty.split_spec(cfg.data)[0], "data")  # train_size, label_noise: any dataset's
    MODELS.validate(cfg.teacher.model, "teacher.model")
    check_black_boxes(cfg)  # before the student's arguments: a black box named as student is refused for that
    MODELS.validate(cfg.student.model, "student.model")
    for key, f in (("teacher.checkpoint", cfg.teacher.checkpoint), ("student.init", cfg.student.init)):
        if f:
            read_state_dict(f, key)  # a missing or unreadable file is named now, before any work
    return validate_training(cfg)


def check_black_boxes(cfg: kconfig.RunConfig) -> None:
    """Black boxes and ensembles teach only: a student is a differentiable torch module."""
    if cfg.teacher.model["name"] == "ensemble":
        check_ensemble(cfg.teacher.model)
    name = cfg.student.model["name"]
    if is_black_box(cfg.student.model) or name == "ensemble":
        raise KdxError(f"student.model '{name}' can only teach: a student is a differentiable torch module trained by "
                       "the loop; use mlp (tables), cnn, or another registered network")


def check_source_fits_teacher(cfg: kconfig.RunConfig, source) -> None:
    """A black-box teacher (predict_proba only) gives no gradients or features: refuse the sources that need them."""
    if is_black_box(cfg.teacher.model) and source.needs_teacher_internals:
        ok = [n for n in SOURCES.names() if n not in GRADIENT_SOURCES]
        raise KdxError(f"source '{cfg.source['name']}' needs the teacher's gradients or penultimate features, and "
                       f"teacher.model '{cfg.teacher.model['name']}' is a black box (predict_proba only); use a source "
                       f"that needs only its outputs: {', '.join(ok)} (adaptive without score=region)")


def check_source_fits_loss(cfg: kconfig.DistillConfig, source) -> None:
    """One-hot loss (distill.loss=onehot, switch_at, alpha) needs a source with labels."""
    onehot_part = cfg.loss in NEEDS_LABELS or cfg.switch_at is not None or cfg.alpha > 0
    if onehot_part and not source.has_labels:
        what = f"distill.alpha={cfg.alpha} mixes in one-hot loss" if cfg.alpha > 0 and cfg.loss not in NEEDS_LABELS \
            and cfg.switch_at is None else "the loss is one-hot for part of training (distill.loss=onehot or switch_at)"
        raise KdxError(f"{what}, but source '{source.__class__.__name__}' has no labels; use source.name=train, "
                       "or drop switch_at and set alpha=0")


def default_name(config_path: str | None, cfg: kconfig.RunConfig) -> str:
    stem = Path(config_path).stem if config_path else "default"
    return f"{stem}-{cfg.source['name']}-s{cfg.seed}"


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an existing run directory unless resuming or overwriting; creates nothing."""
    if run_dir.exists() and any(run_dir.iterdir()) and not (resume or overwrite):
        raise KdxError(f"run directory {run_dir} exists; pass --resume to continue it (or skip it if "
                       "finished) or --overwrite to start again")


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    check_run_dir(run_dir, resume, overwrite)
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def run(config_path: str | None, overrides: list[str], runs_dir: str = "runs", name: str | None = None,
        resume: bool = False, overwrite: bool = False) -> Path:
    cfg = kconfig.load_config(config_path, overrides)
    ddp = "RANK" in os.environ  # launched by torchrun
    if ddp:
        device = resolve_device(cfg.distill.device)
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # one GPU a rank: "cuda" means this one now
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return execute(cfg, Path(runs_dir) / (name or default_name(config_path, cfg)), resume, overwrite)
    finally:
        if ddp:
            dist.destroy_process_group()


def execute(cfg: kconfig.RunConfig, run_dir: Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Run one resolved config into run_dir (refusing an existing one unless resume/overwrite), holding the
    run directory's lock throughout (a second process on it is refused, naming this one)."""
    ddp = dist.is_initialized()
    main = not ddp or dist.get_rank() == 0  # the process that writes files and prints
    source_spec = validate(cfg)
    with locked(run_dir) if main else contextlib.nullcontext():
        return _execute_locked(cfg, run_dir, resume, overwrite, source_spec, ddp, main)


def _execute_locked(cfg: kconfig.RunConfig, run_dir: Path, resume: bool, overwrite: bool, source_spec: dict,
                    ddp: bool, main: bool) -> Path:
    check_run_dir(run_dir, resume, overwrite)
    if resume and (run_dir / METRICS).exists():
        if main:
            print(f"{run_dir}: finished already; nothing to do")
        return run_dir
    config_file = run_dir / CONFIG
    if resume and config_file.exists():
        old = read_config(run_dir)
        if old != {**kconfig.to_dict(cfg), "kdx_version": kdx.__version__}:
            raise KdxError(f"{run_dir} was started with another config; --resume needs the same config and "
                           "overrides (compare with its config.yaml), or use --overwrite")

    # Everything that can fail on bad input (data, teacher, student weights) runs before the run directory
    # is made, so a refused run leaves nothing behind to --overwrite.
    data = load_dataset(cfg.data)
    if data.modality == "lm":  # teacher and student predict over one vocabulary, checked before any training
        check_vocabularies(cfg.teacher.model, cfg.student.model, data)
    heldout.check(distribution_names(cfg.eval, data), data, cfg.eval.n, cfg.eval.seed)  # fits the data? before training
    source = build_source(cfg, data)  # its values checked against the data; it needs no teacher, so before one
    t0 = time.perf_counter()
    if ddp and not main:
        dist.barrier()  # rank 0 finds or trains (in one process) the teacher; the others then load it
    teacher = get_teacher(cfg, data)
    if ddp and main:
        dist.barrier()
    teacher_seconds = time.perf_counter() - t0
    student = build_model(cfg.student.model, data, "student.model", cfg.seed)
    if cfg.student.init:
        load_weights(student, cfg.student.init, "student.init")
    if main:
        prepare_run_dir(run_dir, resume, overwrite)
        write_config(run_dir, cfg)
    if ddp:
        dist.barrier()  # the others write into run_dir once rank 0 has made it
    distill_and_evaluate(cfg, data, teacher, student, source, source_spec=source_spec, run_dir=run_dir, resume=resume,
                         ddp=ddp, teacher_seconds=teacher_seconds)
    if ddp:
        dist.barrier()  # every rank returns once rank 0 has written everything
    return run_dir


def build_source(cfg: kconfig.RunConfig, data) -> Source:
    """The run's source, checked against the loss (one-hot parts need labels)."""
    source = SOURCES.build(cfg.source, "source", data=data, seed=cfg.seed, cache_dir=cache_root(cfg))
    check_source_fits_teacher(cfg, source)
    check_source_fits_loss(cfg.distill, source)
    check_loss_fits(cfg.distill.loss, data)
    return source


def learning_curve(teacher: Teacher, data):
    """The loop's `curve`: the student's accuracy and agreement with the teacher on the whole test set."""
    if data.modality == "lm":  # per token, on the first held-out windows
        return lm_curve(teacher.model, data)
    y, t_top1 = data.y_test, teacher.logits(data.x_test).argmax(1).cpu()

    def score(student: torch.nn.Module) -> dict:
        top1 = predict(student, data.x_test).argmax(1).cpu()
        return {"test_acc": float((top1 == y).float().mean()), "test_agreement": float((top1 == t_top1).float().mean())}
    return score


def member_accuracies(teacher: Teacher, data, cfg: kconfig.EvalConfig, results: dict) -> None:
    """An ensemble teacher: each member's accuracy (`member_acc`, in members' order) on every labelled held-out
    set, beside the ensemble's (teacher_acc) and the student's."""
    for name, m in results.items():
        ho = heldout.load(name, data, cfg.n, cfg.seed)
        if ho.y is not None:
            m["member_acc"] = [float((predict(member, ho.x, cfg.batch_size).argmax(1).cpu() == ho.y).float().mean())
                               for member in teacher.model.members]


def distill_and_evaluate(cfg: kconfig.RunConfig, data, teacher: Teacher, student: torch.nn.Module, source: Source, *,
                         source_spec: dict, run_dir: Path | None = None, resume: bool = False, ddp: bool = False,
                         teacher_seconds: float | None = None) -> dict | None:
    """The part of a run that both `kdx run` and the Python API (kdx.distill_student) go through: the
    source, the loop, the student saved, eval on the held-out distributions, metrics.json. Returns the
    metrics (None on ranks other than 0)."""
    main = not ddp or dist.get_rank() == 0
    torch.manual_seed(cfg.seed)
    desc = run_dir.name if run_dir else "distill"
    curve = learning_curve(teacher, data) if cfg.distill.curve_every else None
    report = trackers.open_report(run_dir, cfg) if main else None  # rank 0 alone reports
    try:
        train_stats = distill(student, source, cfg.distill, teacher=teacher, run_dir=run_dir, resume=resume, desc=desc,
                              ddp=ddp, curve=curve, on_log=report.step if report else None)
    except BaseException:  # a diverged or interrupted run: its tracker runs end as failed (--resume reopens them)
        if report:
            report.close(failed=True)
        raise
    if main and run_dir:
        save_torch(run_dir / STUDENT, {"model": student.state_dict(), "spec": cfg.student.model})
        draws = source.draw_log() if hasattr(source, "draw_log") else None
        if draws is not None:
            save_arrays(run_dir / DRAWS, steps=train_stats["steps"], **draws)
        if data.train_labels is not None:  # the subset and noisy labels every model of the run trained on
            save_arrays(run_dir / TRAIN_LABELS, **data.train_labels)
    if data.modality == "lm":  # per-token fidelity on held-out text and on the models' own samples
        eval_results = evaluate_lm(teacher.model, student, data, cfg.eval)
    else:
        eval_results = heldout_metrics(teacher.logits, student, data, cfg.eval, ddp=ddp)
        if teacher.members and eval_results is not None:
            member_accuracies(teacher, data, cfg.eval, eval_results)
    if not main:
        return None
    metrics = {
        "source": source_spec,
        "teacher": {"arch": cfg.teacher.model["name"], "params": num_params(teacher.model),
                    "checkpoint": str(teacher.checkpoint), "test_acc": teacher.test_acc,
                    "seconds_to_load_or_train": teacher_seconds,
                    **({"members": teacher.members} if teacher.members else {})},
        "student": {"arch": cfg.student.model["name"], "params": num_params(student)},
        "train": train_stats,
        "eval": eval_results,
    }
    if data.is_text:  # the TF-IDF + logistic-regression anchor on the same split, read beside the teacher
        metrics["teacher"]["anchor_test_acc"] = anchor_accuracy(data)
    if run_dir:
        write_json(run_dir / METRICS, metrics)
        (run_dir / CHECKPOINT).unlink(missing_ok=True)
    if report:
        report.finish(metrics, artifacts=[run_dir / STUDENT])
    return metrics
