"""A run directory: the names of the files a run writes, and `load_run`, which rebuilds a finished one.

    config.yaml    the resolved config (a resume must match it)
    log.jsonl      the loop's log; checkpoint.pt its resumable state, deleted once the run finishes
    student.pt     the trained student
    metrics.json   eval per held-out distribution, train stats, teacher; its presence marks a finished run
    probes/        what `kdx probe` writes
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from kdx import config as kconfig
from kdx.data import Dataset, load_dataset
from kdx.device import prepare_model, resolve_device
from kdx.distill.loop import CHECKPOINT, LOG  # noqa: F401 - the loop's own files, named where it writes them
from kdx.distill.teacher import Teacher, get_teacher
from kdx.errors import KdxError
from kdx.models import build_model, read_state_dict
from kdx.registry import SOURCES

CONFIG = "config.yaml"
STUDENT = "student.pt"
METRICS = "metrics.json"
PROBES = "probes"
DRAWS = "draws.npz"  # an adaptive source's picks per pool row (kdx.sampling.adaptive), for the explorer


def read_metrics(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / METRICS).read_text())


@dataclasses.dataclass
class FinishedRun:
    """Everything a finished run directory holds, rebuilt: for probes, studies and the explorer."""

    dir: Path
    cfg: kconfig.RunConfig
    data: Dataset
    teacher: Teacher
    student: torch.nn.Module
    metrics: dict

    def source(self):
        """The run's sample source, rebuilt with its seed (a fresh stream from step 0)."""
        return SOURCES.build(self.cfg.source, "source", data=self.data, seed=self.cfg.seed)


def load_student(run_dir: Path, cfg: kconfig.RunConfig, data: Dataset) -> torch.nn.Module:
    """The run's trained student, on the CPU, as built by its config."""
    student = build_model(cfg.student.model, data, "student.model", cfg.seed)
    student.load_state_dict(read_state_dict(Path(run_dir) / STUDENT, "the run's student"))  # weights_only=True
    return student


def load_run(run_dir: str | Path) -> FinishedRun:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise KdxError(f"run directory {run_dir} does not exist; pass a directory written by `kdx run` "
                       "(runs/NAME by default)")
    if not (run_dir / METRICS).exists():
        raise KdxError(f"{run_dir} is not a finished kdx run (no metrics.json); run `kdx run` first"
                       + (", or `kdx run ... --resume` to finish it" if (run_dir / CONFIG).exists() else ""))
    raw = OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG))
    raw.pop("kdx_version", None)
    cfg = kconfig.load_config(None, [], layers=[(str(run_dir / CONFIG), raw)])
    data = load_dataset(cfg.data)
    teacher = get_teacher(cfg, data)
    student = prepare_model(load_student(run_dir, cfg, data), resolve_device(cfg.distill.device), data.is_image).eval()
    metrics = read_metrics(run_dir)
    return FinishedRun(run_dir, cfg, data, teacher, student, metrics)
