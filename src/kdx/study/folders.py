"""Reading a study's folder (RUNS/studies/NAME): its finished runs, their metrics, learning curves and
deviation probes, and its wall time; for the study's own report and for the findings page alike."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import shlex
from pathlib import Path

import numpy as np

from kdx import config as kconfig
from kdx.data import load_dataset
from kdx.errors import KdxError
from kdx.io import read_json, reading
from kdx.rundir import DEVIATION, DEVIATION_PLOT, LOG, METRICS, PROBES, read_metrics, redo
from kdx.study.plan import PlannedRun, StudyConfig, plan


TIMING = "timing.json"  # in the study folder: wall seconds of each invocation of `kdx study`
KD, ONEHOT = 0.0, 1.0  # switch_at: distillation throughout, one-hot throughout


def study_dir(runs_dir: Path, name: str) -> Path:
    return Path(runs_dir) / "studies" / name


@dataclasses.dataclass
class Run:
    """One finished run of a study: its plan, its folder and its metrics.json."""

    planned: PlannedRun
    dir: Path
    metrics: dict

    @classmethod
    def read(cls, planned: PlannedRun, study_folder: Path) -> Run:
        run_dir = Path(study_folder) / "runs" / planned.name
        return cls(planned, run_dir, read_metrics(run_dir))

    @property
    def name(self) -> str:
        return self.planned.name

    @property
    def axes(self) -> dict:
        return self.planned.axes

    def acc(self, dist: str = "test") -> float:
        return self.metrics["eval"][dist]["student_acc"]

    def curve(self) -> list[tuple[int, dict]]:
        """(samples, {test_acc, test_agreement}) from log.jsonl, the last record per step (a resumed
        run logs the steps after its checkpoint twice)."""
        points = {}
        with reading(self.dir / LOG, redo(self.dir)):
            for line in (self.dir / LOG).read_bytes().decode("utf-8").splitlines():
                rec = json.loads(line)
                if "curve" in rec:
                    points[int(rec["samples"])] = dict(rec["curve"])
            return sorted(points.items())

    def deviation(self) -> dict | None:
        """{distribution: fit} of the run's deviation probe (`kdx probe`), None if it was not probed."""
        path = self.dir / PROBES / DEVIATION
        if not path.exists():
            return None
        dev = read_json(path, f"run `kdx probe {self.dir} --remap` again")
        with reading(path, f"run `kdx probe {self.dir} --remap` again"):
            return dict(dev.get("distributions", dev))  # files written before the probe grouped them lack the key

    def deviation_plot(self, dist: str) -> Path:
        """The probe's scatter plot on one distribution."""
        return self.dir / PROBES / DEVIATION_PLOT.format(dist)


def curves(runs: list[Run]) -> tuple[np.ndarray, np.ndarray]:
    """(samples, test accuracy seeds x points) for runs logged at the same points."""
    logged = [r.curve() for r in runs]
    samples = np.array([n for n, _ in logged[0]])
    return samples, np.array([[c["test_acc"] for _, c in cur] for cur in logged])


@dataclasses.dataclass
class Study:
    name: str
    path: Path  # the study's YAML file
    config: StudyConfig
    runs: list[Run]
    base: Path  # the run config the study's runs override
    dir: Path  # its folder: RUNS/studies/NAME

    @functools.cached_property
    def base_cfg(self) -> kconfig.RunConfig:
        return kconfig.load_config(self.base)

    @functools.cached_property
    def train_size(self) -> int:
        return len(load_dataset(self.runs[0].planned.cfg.data).x_train)

    def select(self, **axes) -> list[Run]:
        """Runs whose axes equal these (seed order kept)."""
        return [r for r in self.runs if all(r.axes.get(k) == v for k, v in axes.items())]

    def command(self, run: Run, seeds: bool = True) -> str:
        """The `kdx run` that makes this run (seed=S over the study's seeds when `seeds`)."""
        ov = [o for o in kconfig.overrides_between(self.base_cfg, run.planned.cfg) if not o.startswith("seed=")]
        seed = f" seed=S (S = {', '.join(map(str, self.config.seeds))})" if seeds else f" seed={run.axes['seed']}"
        return f"`kdx run {self.base} {' '.join(shlex.quote(o) for o in ov)}{seed}`".replace("  ", " ")

    def timing(self) -> str:
        """The study's wall time, from timing.json (kdx study adds one record per invocation); for how many of
        its runs, where its invocations ran fewer than it holds (runs copied in, a killed invocation)."""
        path = self.dir / TIMING
        if not path.exists():
            return "wall time not recorded"
        t = [x for x in json.loads(path.read_text()) if x["runs_done"]]  # not the re-runs that found all done
        if not t:
            return "wall time not recorded"
        done = sum(x["runs_done"] for x in t)
        return (f"{sum(x['seconds'] for x in t) / 60:.1f} min wall" + (f" over {len(t)} invocations" if len(t) > 1 else "")
                + (f" for {done} of its {len(self.runs)} runs" if done < len(self.runs) else "")
                + f", --workers {t[-1]['workers']} on {t[-1]['cpus']} CPUs")


def load_study(name: str, runs_dir: Path, configs: Path) -> Study:
    """The finished study `name` (configs/studies/NAME.yaml) from its folder under runs_dir."""
    path = Path(configs) / "studies" / f"{name}.yaml"
    cfg, planned = plan(path, build_sources=False)  # finished runs are read: their sources were built
    out = study_dir(runs_dir, cfg.name)
    for p in planned:
        if not (out / "runs" / p.name / METRICS).exists():
            raise KdxError(f"findings: {out / 'runs' / p.name} is not finished; run `kdx study {path} --runs-dir "
                           f"{runs_dir} --workers 2` (or `make findings`, which runs every findings study) first")
    return Study(name, path, cfg, [Run.read(p, out) for p in planned], Path(os.path.normpath(path.parent / cfg.base)), out)
