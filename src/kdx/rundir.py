"""A run directory: the names of the files a run writes, and `load_run`, which rebuilds a finished one.

    config.yaml    the resolved config (a resume must match it)
    log.jsonl      the loop's log; checkpoint.pt its resumable state, deleted once the run finishes
    student.pt     the trained student
    metrics.json   eval per held-out distribution, train stats, teacher; its presence marks a finished run
    train_labels.npz  with data.train_size or data.label_noise: the train index, clean and noisy labels
    error.json     a study's run that failed: its error and traceback (removed once it finishes)
    probes/        what `kdx probe` writes: deviation.json (and deviation_<distribution>.png), regions.csv/png,
                   map.parquet/png, map_arrays.npz, summary.json
                   (an LM run: deviation.json, deviation_<distribution>.png, regions.csv, tokens.npz)
    ../.NAME.lock  held by the process writing the run (`locked`), its pid and host in .NAME.lock.json
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import time
from pathlib import Path

import filelock
import torch
from omegaconf import OmegaConf

import kdx
from kdx import config as kconfig
from kdx.data import Dataset, load_dataset
from kdx.device import prepare_model, resolve_device
from kdx.distill.loop import CHECKPOINT, LOG  # noqa: F401 - the loop's own files, named where it writes them
from kdx.distill.teacher import Teacher, cache_root, get_teacher
from kdx.errors import KdxError
from kdx.io import read_json, reading, write_json, write_text
from kdx.models import build_model, read_state_dict
from kdx.registry import SOURCES

CONFIG = "config.yaml"
WRITTEN_SECTIONS = ("data", "teacher", "student", "distill", "seed")  # what every config.yaml kdx writes holds
STUDENT = "student.pt"
METRICS = "metrics.json"
ERROR = "error.json"
PROBES = "probes"
DEVIATION = "deviation.json"
TRAIN_LABELS = "train_labels.npz"  # a train subset or noisy labels (kdx.data.difficulty): index, clean, noisy
DRAWS = "draws.npz"  # an adaptive source's picks per pool row (kdx.sampling.adaptive), for the explorer
# probes/ holds DEVIATION and these (kdx.probes.probe writes them; the explorer, studies and `kdx probe` read them)
DEVIATION_PLOT = "deviation_{}.png"  # .format(distribution)
REGIONS = "regions.csv"
MAP = "map.parquet"
MAP_ARRAYS = "map_arrays.npz"  # each map row's projected teacher features and the distillation inputs shown
TOKENS = "tokens.npz"  # an LM run's sequences and per-position probe results for the explorer (kdx.probes.tokens)
SUMMARY = "summary.json"


def write_config(run_dir: Path, cfg: kconfig.RunConfig) -> None:
    """config.yaml: the resolved config and the kdx version that ran it."""
    write_text(Path(run_dir) / CONFIG, kconfig.to_yaml(cfg).rstrip() + f"\nkdx_version: {kdx.__version__}\n")


_HELD: dict[Path, int] = {}  # folders this process holds -> depth (a study holds a run across run and probe)


def _holder_files(folder: Path) -> tuple[Path, Path]:
    """The lock file and its holder record, beside the folder (inside, --overwrite would delete them)."""
    return folder.with_name(f".{folder.name}.lock"), folder.with_name(f".{folder.name}.lock.json")


def _holder(record: Path, wait: float = 2.0) -> dict | None:
    """The live holder's record: one that just took the lock may not have written it yet, and a process that
    was killed leaves its record behind (its lock went with it), so wait a moment for a live holder's."""
    deadline = time.monotonic() + wait
    while True:
        try:
            info = json.loads(record.read_text())
            if info.get("host") != socket.gethostname() or _alive(int(info["pid"])):
                return info
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


@contextlib.contextmanager
def locked(folder: str | Path):
    """Hold a run (or study) folder for this process's work on it: a second process gets a KdxError naming
    the holder. The lock is the OS's (filelock, flock on POSIX), released by the kernel when the holder
    dies, so a killed run never blocks `--resume`; the holder's pid and host are written beside it."""
    folder = Path(os.path.abspath(folder))
    if folder in _HELD:
        _HELD[folder] += 1
        try:
            yield
        finally:
            _HELD[folder] -= 1
        return
    lock_file, record = _holder_files(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(lock_file), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        info = _holder(record)
        who = (f"process {info['pid']} on host {info['host']} (since {info.get('since', '?')})" if info
               else "another process")
        raise KdxError(f"{folder} is in use by {who}; two processes must not write one run. Wait for it to end, "
                       "or stop it, then run the command again (`kdx run ... --resume` continues a killed run; "
                       "a study resumes by itself); or give this run another --name / --runs-dir") from None
    try:
        write_json(record, {"pid": os.getpid(), "host": socket.gethostname(),
                            "since": time.strftime("%Y-%m-%dT%H:%M:%S")})
        _HELD[folder] = 1
        yield
    finally:
        _HELD.pop(folder, None)
        record.unlink(missing_ok=True)
        lock.release()


def redo(run_dir: str | Path) -> str:
    """The fix for a damaged file of a run: what a reader's KdxError tells the user to do."""
    return f"delete {run_dir} and run it again (or `kdx run ... --overwrite`)"


def read_metrics(run_dir: str | Path) -> dict:
    """metrics.json, with its eval and source tables (a damaged one is a KdxError naming it)."""
    path = Path(run_dir) / METRICS
    metrics = read_json(path, redo(run_dir))
    with reading(path, redo(run_dir)):
        if not all(isinstance(metrics[k], dict) for k in ("eval", "source", "teacher", "student", "train")):
            raise TypeError("eval, source, teacher, student and train must be tables")
    return metrics


def read_config(run_dir: str | Path) -> dict:
    """config.yaml as written (kdx_version included), a mapping; a damaged one is a KdxError naming it."""
    path = Path(run_dir) / CONFIG
    with reading(path, redo(run_dir)):
        raw = OmegaConf.to_container(OmegaConf.create(path.read_bytes().decode("utf-8")))
        if not isinstance(raw, dict):
            raise TypeError(f"a {type(raw).__name__}, not a mapping")
        # kdx writes every section; one that is missing would otherwise fall back to its default and
        # rebuild (train) a teacher the run never had before the student failed to load
        missing = [k for k in WRITTEN_SECTIONS if k not in raw]
        if missing:
            raise ValueError(f"it lacks {', '.join(missing)}")
        return raw


def read_run_config(run_dir: str | Path) -> kconfig.RunConfig:
    """config.yaml as the typed, validated run config it was written from."""
    raw = read_config(run_dir)
    raw.pop("kdx_version", None)
    with reading(Path(run_dir) / CONFIG, redo(run_dir)):
        return kconfig.load_config(None, [], layers=[(str(Path(run_dir) / CONFIG), raw)])


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
        return SOURCES.build(self.cfg.source, "source", data=self.data, seed=self.cfg.seed, cache_dir=cache_root(self.cfg))


def load_student(run_dir: Path, cfg: kconfig.RunConfig, data: Dataset) -> torch.nn.Module:
    """The run's trained student, on the CPU, as built by its config."""
    student = build_model(cfg.student.model, data, "student.model", cfg.seed)
    state = read_state_dict(Path(run_dir) / STUDENT, "the run's student")  # weights_only=True
    with reading(Path(run_dir) / STUDENT, f"it does not match {CONFIG}: {redo(run_dir)}"):
        student.load_state_dict(state)
    return student


def load_run(run_dir: str | Path) -> FinishedRun:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise KdxError(f"run directory {run_dir} does not exist; pass a directory written by `kdx run` "
                       "(runs/NAME by default)")
    if not (run_dir / METRICS).exists():
        raise KdxError(f"{run_dir} is not a finished kdx run (no metrics.json); run `kdx run` first"
                       + (", or `kdx run ... --resume` to finish it" if (run_dir / CONFIG).exists() else ""))
    cfg = read_run_config(run_dir)
    data = load_dataset(cfg.data)
    teacher = get_teacher(cfg, data)
    student = prepare_model(load_student(run_dir, cfg, data), resolve_device(cfg.distill.device), data.is_image).eval()
    metrics = read_metrics(run_dir)
    return FinishedRun(run_dir, cfg, data, teacher, student, metrics)
