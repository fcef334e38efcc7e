"""A study's table of every run: runs.parquet and runs.csv in its folder, one row per run x held-out
distribution x metric (a run that has no metrics, failed, still running or not started, one row), with
its status, cost (training seconds, teacher queries, samples), error, and its resolved config as columns."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from kdx import config as kconfig
from kdx.config import flatten
from kdx.io import read_json, reading, save_csv, save_parquet
from kdx.rundir import CONFIG, ERROR, METRICS, read_metrics
from kdx.study.plan import PlannedRun

TABLE, TABLE_CSV = "runs.parquet", "runs.csv"
# the cost columns are named apart from the study's axes (a `samples` axis is a budget, not this run's count)
COLUMNS = ["run", "status", "distribution", "metric", "value", "train_seconds", "teacher_queries", "samples_trained",
           "error"]


def status(run_dir: Path) -> str:
    """failed (error.json: the run or its probe failed), finished (metrics.json), running (started: config.yaml,
    no result yet) or pending (not started)."""
    if (run_dir / ERROR).exists():
        return "failed"
    if (run_dir / METRICS).exists():
        return "finished"
    return "running" if (run_dir / CONFIG).exists() else "pending"


def run_rows(planned: PlannedRun, run_dir: Path) -> list[dict]:
    """The run's rows: one per distribution x metric of its metrics.json, or one without metrics."""
    base = {"run": planned.name, "status": status(run_dir), "distribution": None, "metric": None, "value": None,
            "train_seconds": None, "teacher_queries": None, "samples_trained": None, "error": None}
    if base["status"] == "failed":
        base["error"] = read_json(run_dir / ERROR, f"delete {run_dir / ERROR}")["error"]
    if not (run_dir / METRICS).exists():
        return [base]
    metrics = read_metrics(run_dir)
    train = metrics["train"]
    base.update(train_seconds=train.get("seconds"), samples_trained=train.get("samples"),
                teacher_queries=train.get("accounting", {}).get("teacher_queries"))
    rows = []
    for dist, values in metrics["eval"].items():
        if not isinstance(values, dict):
            continue
        flat = flatten({k: v for k, v in values.items() if k != "acc_diff_ci"}, numeric=True)
        if values.get("acc_diff_ci"):  # the paired bootstrap interval, as two metrics
            flat["acc_diff_lo"], flat["acc_diff_hi"] = values["acc_diff_ci"]
        rows += [{**base, "distribution": dist, "metric": k, "value": float(v)} for k, v in flat.items()]
    return rows or [base]


def config_columns(runs: list[PlannedRun]) -> pd.DataFrame:
    """Each run's resolved config, one column a key (`config.distill.lr`); a column whose values are not all
    numbers (or all strings) is written as JSON text, so that parquet gets one type a column."""
    flat = [{f"config.{k}": v for k, v in flatten(kconfig.to_dict(r.cfg)).items()} for r in runs]
    frame = pd.DataFrame(flat)
    for col in frame.columns:
        values = [v for v in frame[col] if v is not None]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if not (numbers or all(isinstance(v, str) for v in values) or all(isinstance(v, bool) for v in values)):
            frame[col] = [None if v is None else json.dumps(v) for v in frame[col]]
    frame.insert(0, "run", [r.name for r in runs])
    return frame


def runs_table(runs: list[PlannedRun], out: Path) -> pd.DataFrame:
    """The table of the study in folder `out` as it stands (axes, then COLUMNS, then the config)."""
    rows = pd.DataFrame([row for r in runs for row in run_rows(r, Path(out) / "runs" / r.name)], columns=COLUMNS)
    axes = pd.DataFrame([{"run": r.name, **r.axes} for r in runs])
    table = axes.merge(rows, on="run").merge(config_columns(runs), on="run")
    return table[["run", *[c for c in axes.columns if c != "run"], *COLUMNS[1:],
                  *[c for c in table.columns if c.startswith("config.")]]]


def write_runs_table(runs: list[PlannedRun], out: Path) -> pd.DataFrame:
    table = runs_table(runs, out)
    save_parquet(table, Path(out) / TABLE)
    save_csv(table, Path(out) / TABLE_CSV)
    return table


def failures(out: Path) -> dict[str, str]:
    """{run: error} of the failed runs in the study folder's runs.parquet."""
    with reading(Path(out) / TABLE, "run the study again (kdx study) to rewrite it"):
        table = pd.read_parquet(Path(out) / TABLE, columns=["run", "status", "error"])
        return dict(table[table.status == "failed"].groupby("run", sort=False)["error"].first())
