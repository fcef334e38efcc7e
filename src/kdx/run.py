"""One run: config -> data -> teacher (cached) -> source -> the loop -> student.pt -> eval -> metrics.json.

Under torchrun (RANK and WORLD_SIZE set) every rank runs this: rank 0 prepares the run directory
and finds or trains the teacher while the others wait, all ranks train (DistributedDataParallel)
and evaluate (sharded, gathered on rank 0), and rank 0 alone writes files.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist

import kdx
from kdx import config as kconfig
from kdx.data import load as load_data
from kdx.distill.loop import distill, resolve_device
from kdx.distill.teacher import build_model, get_teacher
from kdx.errors import KdxError
from kdx.eval import distribution_names, evaluate, heldout
from kdx.io import save_torch, write_json, write_text
from kdx.models.base import num_params
from kdx.registry import DATASETS, HELDOUT, LOSSES, MODELS, SOURCES


def validate(cfg: kconfig.RunConfig) -> dict:
    """Check every registry reference before any work starts; return the resolved source spec."""
    DATASETS.validate(cfg.data, "data")
    MODELS.validate(cfg.teacher.model, "teacher.model")
    MODELS.validate(cfg.student.model, "student.model")
    LOSSES.get(cfg.distill.loss)
    if cfg.distill.switch_order not in ("onehot_first", "distill_first"):
        raise KdxError(f"distill.switch_order must be onehot_first or distill_first, got '{cfg.distill.switch_order}'")
    if cfg.distill.switch_at is not None and not 0 <= cfg.distill.switch_at <= 1:
        raise KdxError(f"distill.switch_at must be in [0, 1], got {cfg.distill.switch_at}")
    for name in cfg.eval.distributions:
        if name != "default":
            HELDOUT.validate(heldout.parse(name), f"eval.distributions: '{name}'")
    return {"name": cfg.source["name"], **SOURCES.validate(cfg.source, "source")}


def default_name(config_path: str | None, cfg: kconfig.RunConfig) -> str:
    stem = Path(config_path).stem if config_path else "default"
    return f"{stem}-{cfg.source['name']}-s{cfg.seed}"


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    if run_dir.exists() and any(run_dir.iterdir()):
        if overwrite:
            shutil.rmtree(run_dir)
        elif not resume:
            raise KdxError(f"run directory {run_dir} exists; pass --resume to continue it (or skip it if "
                           "finished) or --overwrite to start again")
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
    """Run one resolved config into run_dir (refusing an existing one unless resume/overwrite)."""
    ddp = dist.is_initialized()
    main = not ddp or dist.get_rank() == 0  # the process that writes files and prints
    source_spec = validate(cfg)
    if main:
        prepare_run_dir(run_dir, resume, overwrite)
    if ddp:
        dist.barrier()  # the others look at run_dir once rank 0 has prepared it
    if (run_dir / "metrics.json").exists():
        if main:
            print(f"{run_dir}: finished already; nothing to do")
        return run_dir
    resolved = kconfig.to_dict(cfg)
    resolved["kdx_version"] = kdx.__version__
    config_file = run_dir / "config.yaml"
    if main and resume and config_file.exists():
        from omegaconf import OmegaConf

        old = OmegaConf.to_container(OmegaConf.load(config_file))
        if old != resolved:
            raise KdxError(f"{run_dir} was started with another config; --resume needs the same config and "
                           "overrides (compare with its config.yaml), or use --overwrite")
    if main:
        write_text(config_file, kconfig.to_yaml(cfg).rstrip() + f"\nkdx_version: {kdx.__version__}\n")

    data = load_data(cfg.data)
    t0 = time.perf_counter()
    if ddp and not main:
        dist.barrier()  # rank 0 finds or trains (in one process) the teacher; the others then load it
    teacher = get_teacher(cfg, data)
    if ddp and main:
        dist.barrier()
    teacher_seconds = time.perf_counter() - t0
    source = SOURCES.build(cfg.source, "source", data=data, seed=cfg.seed)
    student = build_model(cfg.student.model, data, "student.model", cfg.seed)
    torch.manual_seed(cfg.seed)
    train_stats = distill(student, source, cfg.distill, cfg.seed, teacher=teacher.model,
                          teacher_logits_fn=teacher.outputs, run_dir=run_dir, resume=resume,
                          desc=f"{run_dir.name}", ddp=ddp)
    if main:
        save_torch(run_dir / "student.pt", {"model": student.state_dict(), "spec": cfg.student.model})
    eval_results = evaluate(teacher.outputs, student, data, cfg.eval, ddp)
    if main:
        metrics = {
            "source": source_spec,
            "teacher": {"arch": cfg.teacher.model["name"], "params": num_params(teacher.model),
                        "checkpoint": str(teacher.checkpoint), "test_acc": teacher.test_acc,
                        "seconds_to_load_or_train": teacher_seconds},
            "student": {"arch": cfg.student.model["name"], "params": num_params(student)},
            "train": train_stats,
            "eval": eval_results,
        }
        write_json(run_dir / "metrics.json", metrics)
        (run_dir / "checkpoint.pt").unlink(missing_ok=True)
    if ddp:
        dist.barrier()  # every rank returns once rank 0 has written everything
    return run_dir


@dataclasses.dataclass
class FinishedRun:
    """Everything a finished run directory holds, rebuilt: for probes, studies and the explorer."""

    dir: Path
    cfg: kconfig.RunConfig
    data: object  # kdx.data.Dataset
    teacher: object  # kdx.distill.teacher.Teacher
    student: torch.nn.Module
    metrics: dict

    def source(self):
        """The run's sample source, rebuilt with its seed (a fresh stream from step 0)."""
        return SOURCES.build(self.cfg.source, "source", data=self.data, seed=self.cfg.seed)


def load_run(run_dir: str | Path) -> FinishedRun:
    from omegaconf import OmegaConf

    from kdx.distill.loop import prepare_model, resolve_device

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").exists():
        raise KdxError(f"{run_dir} is not a finished kdx run (no metrics.json); run `kdx run` first"
                       + (", or `kdx run ... --resume` to finish it" if (run_dir / "config.yaml").exists() else ""))
    raw = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    raw.pop("kdx_version", None)
    cfg = kconfig.load_config(None, [], layers=[(str(run_dir / "config.yaml"), raw)])
    data = load_data(cfg.data)
    teacher = get_teacher(cfg, data)
    student = build_model(cfg.student.model, data, "student.model", cfg.seed)
    student.load_state_dict(torch.load(run_dir / "student.pt", map_location="cpu")["model"])
    student = prepare_model(student, resolve_device(cfg.distill.device), data.is_image).eval()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return FinishedRun(run_dir, cfg, data, teacher, student, metrics)
