"""A study's table of every run (runs.parquet, runs.csv): one row per run x held-out distribution x metric,
the resolved config as columns, status, cost and error; a failing run is kept with its error and the study
goes on, or with --fail-fast stops it. Reached the way a user reaches it: `kdx study` and `--table`."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import FAST
from kdx.cli import app
from kdx.study.table import failures

# the student axis: one that trains, and one that fails when the run builds it (a negative layer width
# passes the type check of the plan; torch refuses it)
STUDY = """name: tabled
base: {base}
overrides: {overrides}
seeds: [0]
sources: [{{name: train}}]
student: [{{name: mlp, hidden: [-3], label: broken}}, {{name: cnn, channels: [8, 16], hidden: 32, label: cnn}}]
probe: false
report_distributions: [test]
"""


@pytest.fixture
def study_file(tmp_path):
    f = tmp_path / "tabled.yaml"
    f.write_text(STUDY.format(base=os.path.abspath("configs/fashion_mnist.yaml"),
                              overrides=json.dumps(FAST + ["distill.samples=2000"])))
    return f


def kdx(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_runs_table_keeps_a_failed_run_and_the_study_goes_on(digits_teacher, study_file, tmp_path):
    runs = tmp_path / "runs"
    out = runs / "studies" / "tabled"
    # --fail-fast: the first run fails, the study stops there; the table says so
    res = kdx("study", study_file, "--runs-dir", runs, "--fail-fast")
    assert isinstance(res.exception, RuntimeError) and "negative dimension" in str(res.exception)
    first = pd.read_parquet(out / "runs.parquet")
    assert dict(zip(first.run, first.status)) == {"train-broken-s0": "failed", "train-cnn-s0": "pending"}
    assert not (out / "summary.md").exists()

    # by default the failed run is kept with its error, the other runs, and the command exits 1 naming it
    res = kdx("study", study_file, "--runs-dir", runs)
    assert res.exit_code == 1, res.output
    assert "run train-broken-s0 failed: RuntimeError: " in res.stderr and "negative dimension" in res.stderr
    table = pd.read_parquet(out / "runs.parquet")
    csv = pd.read_csv(out / "runs.csv")
    assert len(csv) == len(table) and list(csv.columns) == list(table.columns)
    broken = table[table.run == "train-broken-s0"]
    assert len(broken) == 1 and broken.status.item() == "failed" and "negative dimension" in broken.error.item()
    assert broken.value.isna().all() and broken["config.student.model.name"].item() == "mlp"
    assert failures(out) == {"train-broken-s0": broken.error.item()}

    # the finished run: one row per distribution x metric, each the number in its metrics.json
    done = table[table.run == "train-cnn-s0"]
    metrics = json.loads((out / "runs" / "train-cnn-s0" / "metrics.json").read_text())
    expected = {(dist, k): v for dist, e in metrics["eval"].items() for k, v in e.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for dist, e in metrics["eval"].items():
        if e.get("acc_diff_ci"):
            expected[dist, "acc_diff_lo"], expected[dist, "acc_diff_hi"] = e["acc_diff_ci"]
    got = {(d, m): v for d, m, v in zip(done.distribution, done.metric, done.value)}
    assert got == pytest.approx(expected, rel=1e-12)
    assert set(done.distribution) == {"test", "train_subset", "gaussian_noise-2", "blur-1", "uniform_noise"}
    assert (done.status == "finished").all() and done.error.isna().all()
    assert (done.train_seconds == metrics["train"]["seconds"]).all()
    assert (done.samples_trained == metrics["train"]["samples"]).all()
    assert (done.teacher_queries == metrics["train"]["accounting"]["teacher_queries"]).all()
    # the resolved config as columns, and the study's axes
    assert (done["config.distill.samples"] == 2000).all() and (done["config.data.name"] == "digits").all()
    assert json.loads(done["config.student.model.channels"].iloc[0]) == [8, 16]
    assert set(done.student) == {"cnn"} and set(done.seed) == {0}
    assert "## test" in (out / "summary.md").read_text()  # the report over the finished runs

    # --table prints it as it stands, running nothing
    res = kdx("study", study_file, "--runs-dir", runs, "--table")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split()[:4] == ["run", "source", "student", "seed"] and "config." not in lines[0]
    assert sum("train-cnn-s0" in line and "finished" in line for line in lines) == len(done)
    assert any("train-broken-s0" in line and "negative dimension" in line for line in lines)
    assert f"{len(table)} rows" in lines[-1]


def test_a_study_with_a_samples_axis_tables_its_budgets_beside_each_runs_cost(tmp_path):
    """The `samples` axis (a budget) and the cost column `samples_trained` are two columns (they once collided
    in the merge and the table could not be written); planned runs not started are `pending`."""
    from kdx.study import plan
    from kdx.study.table import runs_table

    f = tmp_path / "budgets.yaml"
    f.write_text(STUDY.format(base=os.path.abspath("configs/fashion_mnist.yaml"), overrides=json.dumps(FAST))
                 .replace("student: [", "samples: [512, 1024]\nstudent: [").replace("{name: mlp, hidden: [-3], label: broken}, ", ""))
    _, runs = plan(f, build_sources=False)
    table = runs_table(runs, tmp_path / "out")
    assert sorted(table["samples"]) == [512, 1024] and table["samples_trained"].isna().all()
    assert (table["status"] == "pending").all() and (table["config.distill.samples"] == table["samples"]).all()
