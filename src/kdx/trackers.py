"""Experiment trackers: `report: [tensorboard, mlflow, trackio, wandb]` in a run config, all offline.

log.jsonl and metrics.json stay the source of truth; a tracker is a copy for the tools researchers
already look at. Each tracker here is one registered class (`kdx list` shows them) that gets, on rank 0
only: every log.jsonl record (loss, learning rate, throughput, the learning curve), the config as
hyper-parameters, every numeric field of metrics.json at the end (eval/DIST/METRIC for each held-out distribution, the
rest as summary/...),
student.pt and, when `kdx probe` runs, the probe figures, as artifacts where the tracker keeps files.

Where each writes (a study's runs share their study's folder, named after it as project and group):
    tensorboard  RUN/tensorboard/ event files (scalars, the config as text and hparams, figures as images)
    mlflow       RUNS/mlflow.db (SQLite store) and RUNS/mlartifacts/, RUNS the run directory's parent
    trackio      RUNS/trackio/ (its local SQLite store; $TRACKIO_DIR where set)
    wandb        RUN/wandb/offline-run-*/ (mode=offline; `wandb sync` uploads it later)
Each tracker's identity in a run (MLflow's run id, W&B's id) is kept in RUN/trackers.json, so that a
resumed run and its probe figures go to the same tracker run. A tracker that fails warns once and is
dropped for the rest of the process; the run never fails for it.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import time
import uuid
import warnings
from pathlib import Path

from kdx import config as kconfig
from kdx.config import flatten
from kdx.errors import KdxError, first_line
from kdx.io import read_json, write_json
from kdx.registry import TRACKERS

STATE = "trackers.json"  # in the run directory: each tracker's identity of this run
DEFAULT_PROJECT = "kdx"


def step_values(record: dict) -> dict:
    """A log.jsonl record's numbers under the names the trackers show: train/loss, train/lr,
    train/samples_per_s, train/epoch, and curve/test_acc ... for learning-curve records."""
    if "curve" in record:
        return flatten({"curve": {**record["curve"], "samples": record.get("samples")}}, "/", numeric=True)
    return flatten({"train": {k: v for k, v in record.items() if k != "step"}}, "/", numeric=True)


class Tracker:
    """One run's copy in one tracker library; `package` is the module it needs, `extra` kdx's pip extra."""

    package = extra = ""

    def __init__(self, run_dir: Path, *, project: str, name: str, config: dict, state: dict):
        self.run_dir, self.project, self.name, self.config, self.state = run_dir, project, name, config, state

    def log(self, step: int, values: dict) -> None:
        raise NotImplementedError

    def summary(self, values: dict) -> None:
        raise NotImplementedError

    def artifact(self, path: Path) -> None:
        """Keep a file (student.pt) with the run; trackers that keep no files skip it."""

    def images(self, paths: list[Path]) -> None:
        raise NotImplementedError

    def close(self, failed: bool = False) -> None:
        """End the tracker's run (`failed`: the kdx run raised before it finished)."""
        raise NotImplementedError


@TRACKERS.register("tensorboard")
class TensorBoard(Tracker):
    """TensorBoard event files in RUN/tensorboard (pip install 'kdx[tensorboard]')."""

    package = extra = "tensorboard"

    def __init__(self, run_dir, **kw):
        super().__init__(run_dir, **kw)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if not self.state.get("config_logged"):
            self.writer.add_text("config", "```\n" + json.dumps(self.config, indent=2) + "\n```")
            self.state["config_logged"] = True

    def log(self, step, values):
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def summary(self, values):
        for key, value in values.items():
            self.writer.add_scalar(key, value, 0)
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                   for k, v in flatten(self.config, ".").items() if v is not None}
        self.writer.add_hparams(hparams, {k: v for k, v in values.items() if k.startswith("eval/")}, run_name=".")

    def images(self, paths):
        import numpy as np
        from PIL import Image

        for p in paths:
            self.writer.add_image(f"probes/{p.stem}", np.asarray(Image.open(p).convert("RGB")), 0, dataformats="HWC")

    def close(self, failed=False):
        self.writer.close()


@TRACKERS.register("mlflow")
class MLflow(Tracker):
    """MLflow, SQLite store RUNS/mlflow.db, artifacts in RUNS/mlartifacts (pip install 'kdx[mlflow]')."""

    package = extra = "mlflow"

    def __init__(self, run_dir, **kw):
        super().__init__(run_dir, **kw)
        from mlflow import MlflowClient

        root = run_dir.resolve().parent
        self.client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
        if "run_id" in self.state:
            self.run_id = self.state["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        exp = self.client.get_experiment_by_name(self.project)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(
            self.project, artifact_location=(root / "mlartifacts").as_uri())
        tags = {"mlflow.runName": self.name, "kdx.run_dir": str(run_dir.resolve()), "kdx.project": self.project}
        self.run_id = self.state["run_id"] = self.client.create_run(exp_id, run_name=self.name, tags=tags).info.run_id
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in flatten(self.config, ".").items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def _metrics(self, step, values):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k.replace("/", "."), float(v), now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def log(self, step, values):
        self._metrics(step, values)

    def summary(self, values):
        self._metrics(0, values)

    def artifact(self, path):
        self.client.log_artifact(self.run_id, str(path))

    def images(self, paths):
        for p in paths:
            self.client.log_artifact(self.run_id, str(p), artifact_path="probes")

    def close(self, failed=False):
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


@TRACKERS.register("trackio")
class Trackio(Tracker):
    """trackio's local store in RUNS/trackio ($TRACKIO_DIR where set) (pip install 'kdx[trackio]')."""

    package = extra = "trackio"

    def __init__(self, run_dir, **kw):
        super().__init__(run_dir, **kw)
        if not os.environ.get("TRACKIO_DIR"):  # read once, when trackio is imported
            os.environ["TRACKIO_DIR"] = str(run_dir.resolve().parent / "trackio")
        import trackio

        self.trackio = trackio
        with contextlib.redirect_stdout(io.StringIO()):  # its banner would interleave with kdx's own output
            self.run = trackio.init(project=self.project, name=self.name,
                                    group=self.project if self.project != DEFAULT_PROJECT else None,
                                    config=self.config, resume="allow", embed=False,
                                    auto_log_gpu=False, auto_log_cpu=False)

    def log(self, step, values):
        self.run.log(values, step=step)

    def summary(self, values):
        self.run.log(values)

    def artifact(self, path):
        self.run.log_artifact(str(path), type="model")

    def images(self, paths):
        self.run.log({f"probes/{p.stem}": self.trackio.Image(str(p)) for p in paths})

    def close(self, failed=False):
        with contextlib.redirect_stdout(io.StringIO()):
            self.run.finish()


@TRACKERS.register("wandb")
class WandB(Tracker):
    """Weights & Biases in offline mode, files in RUN/wandb (pip install 'kdx[wandb]'; `wandb sync` uploads)."""

    package = extra = "wandb"

    def __init__(self, run_dir, **kw):
        super().__init__(run_dir, **kw)
        import wandb

        self.wandb = wandb
        self.state.setdefault("id", uuid.uuid4().hex[:8])
        self.run = wandb.init(mode="offline", dir=str(run_dir.resolve()), project=self.project, name=self.name,
                              group=self.project if self.project != DEFAULT_PROJECT else None, id=self.state["id"],
                              resume="allow", config=self.config, reinit="finish_previous",
                              settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))

    def log(self, step, values):
        self.run.log(values, step=step)

    def summary(self, values):
        self.run.summary.update(values)

    def artifact(self, path):
        self.run.save(str(path), base_path=str(path.parent), policy="now")

    def images(self, paths):
        self.run.log({f"probes/{p.stem}": self.wandb.Image(str(p)) for p in paths})

    def close(self, failed=False):
        self.run.finish(exit_code=1 if failed else 0)


def check(names: list[str]) -> None:
    """Each name a registered tracker whose package is installed; else a KdxError naming the fix."""
    for name in names:
        if name not in TRACKERS.names():
            raise KdxError(f"report: unknown tracker '{name}'; the trackers: {', '.join(TRACKERS.names())}")
        cls = TRACKERS.get(name).fn
        if importlib.util.find_spec(cls.package) is None:
            raise KdxError(f"report: tracker '{name}' needs the {cls.package} package: pip install 'kdx[{cls.extra}]' "
                           "(or 'kdx[trackers]' for all of them), or leave it out of report")


class Report:
    """The run's trackers: each call goes to every one; one that fails warns once and is dropped."""

    def __init__(self, run_dir: Path, cfg):
        self.run_dir, self.trackers = Path(run_dir), {}
        path, self.state = self.run_dir / STATE, {}
        if path.exists():
            try:
                self.state = read_json(path, "the trackers start new runs")
            except KdxError as e:  # a damaged trackers.json must not fail the run either
                warnings.warn(str(e), stacklevel=2)
        project, config = cfg.report_project or DEFAULT_PROJECT, kconfig.to_dict(cfg)

        def start(name: str) -> None:
            self.trackers[name] = TRACKERS.get(name).fn(self.run_dir, project=project, name=self.run_dir.name,
                                                        config=config, state=self.state.setdefault(name, {}))

        for name in cfg.report:
            self._call(name, lambda name=name: start(name))
        self._save_state()

    def _save_state(self) -> None:
        if self.state:
            write_json(self.run_dir / STATE, self.state)

    def _call(self, name: str, fn) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - a tracker never fails the run: log.jsonl and metrics.json have it all
            self.trackers.pop(name, None)
            warnings.warn(f"tracker {name} failed ({type(e).__name__}: {first_line(e, 200, 'no message')}); it is off "
                          "for the rest of this run, whose log.jsonl and metrics.json are complete", stacklevel=3)

    def _each(self, method: str, *args) -> None:
        for name, tracker in list(self.trackers.items()):
            self._call(name, lambda t=tracker: getattr(t, method)(*args))

    def step(self, record: dict) -> None:
        """One log.jsonl record (the loop calls it where it appends the record)."""
        values = step_values(record)
        if values:
            self._each("log", int(record["step"]), values)

    def finish(self, metrics: dict | None = None, artifacts: list[Path] = (), images: list[Path] = ()) -> None:
        """metrics.json's numbers, the artifacts and figures, then close every tracker."""
        if metrics is not None:  # eval/DIST/METRIC, and summary/train/seconds ... (not to mix with the step series)
            values = {**flatten({"eval": metrics["eval"]}, "/", numeric=True),
                      **flatten({"summary": {k: v for k, v in metrics.items() if k not in ("eval", "source")}}, "/",
                                numeric=True)}
            self._each("summary", values)
        for path in artifacts:
            self._each("artifact", Path(path))
        if images:
            self._each("images", [Path(p) for p in images])
        self.close()

    def close(self, failed: bool = False) -> None:
        """End every tracker's run (a run that raised: `failed`, where the tracker records it)."""
        self._each("close", failed)
        self.trackers = {}
        self._save_state()


def open_report(run_dir: Path | None, cfg) -> Report | None:
    """The trackers of a run that names any (`report`), else None."""
    return Report(run_dir, cfg) if run_dir and cfg.report else None


def report_figures(run_dir: Path, cfg, figures: list[Path]) -> None:
    """The probe's figures to the run's trackers (`kdx probe` calls it once it has written them)."""
    report = open_report(run_dir, cfg)
    if report:
        report.finish(images=figures)
