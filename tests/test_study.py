import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar

from conftest import FAST, strip_timing
from kdx.errors import KdxError
from kdx.rundir import read_metrics
from kdx.study import plan, run_study
from kdx.study.findings import load_manifest


def _study(tmp_path, extra="", sources="[{name: train}, {name: noise, label: uniform}]"):
    f = tmp_path / "tiny.yaml"
    overrides = ", ".join(json.dumps(o) for o in FAST + ["distill.samples=4000"])
    f.write_text(f"name: tiny\nbase: {os.path.abspath('configs/fashion_mnist.yaml')}\noverrides: [{overrides}]\n"
                 f"seeds: [0, 1]\nsources: {sources}\nprobe: false\n"
                 f"report_distributions: [test, uniform_noise]\n{extra}")
    return f


def test_tiny_study_rows_and_statistics(digits_teacher, tmp_path):
    f = _study(tmp_path)
    f.write_text(f.read_text().replace("[test, uniform_noise]", "[test, uniform_noise, rotation-9]"))
    out = run_study(f, tmp_path / "runs")
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert {(r["source"], r["seed"]) for r in rows} == {("train", "0"), ("train", "1"), ("uniform", "0"), ("uniform", "1")}
    assert len(rows) == 4 * 5  # four runs x the five FAST distributions
    # the summary's interval over seeds is scipy's t-interval on the same per-seed numbers
    acc = [float(r["student_acc"]) for r in rows if r["source"] == "train" and r["distribution"] == "test"]
    lo, hi = stats.t.interval(0.95, 1, loc=np.mean(acc), scale=stats.sem(acc))
    md = (out / "summary.md").read_text()
    assert f"| train | {100 * np.mean(acc):.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" in md
    # a report distribution no run evaluated is named, not printed as an empty table
    assert "Not evaluated by these runs (see `eval.distributions`): rotation-9." in md and "## rotation-9" not in md
    # the per-seed McNemar p-value agrees with statsmodels on the run's own predictions
    from kdx.rundir import load_run
    from kdx.models import predict

    run = load_run(out / "runs" / "train-s0")
    t_ok = (run.teacher.logits(run.data.x_test).argmax(1).cpu() == run.data.y_test).numpy()
    s_ok = (predict(run.student, run.data.x_test).argmax(1).cpu() == run.data.y_test).numpy()
    table = [[np.sum(t_ok & s_ok), np.sum(t_ok & ~s_ok)], [np.sum(~t_ok & s_ok), np.sum(~t_ok & ~s_ok)]]
    p = next(float(r["mcnemar_p"]) for r in rows if r["run"] == "train-s0" and r["distribution"] == "test")
    assert np.isclose(p, mcnemar(table, exact=True).pvalue)
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "http" not in html.replace("http-equiv", "")


def test_killed_study_resumes_without_redoing_finished_runs(digits_teacher, tmp_path):
    f = _study(tmp_path)
    cmd = [sys.executable, "-m", "kdx", "study", str(f), "--runs-dir", str(tmp_path / "runs")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "runs" / "studies" / "tiny" / "runs" / "train-s0" / "metrics.json"
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists()
    stamp = first.stat().st_mtime_ns
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "finished" in out.stdout and first.stat().st_mtime_ns == stamp
    assert len(list(csv.DictReader((first.parents[2] / "summary.csv").open()))) == 20


def test_unknown_axis_or_source_fails_before_any_run(tmp_path):
    with pytest.raises(KdxError, match="temperatures"):
        plan(_study(tmp_path, extra="temperatures: [1, 2]\n"))
    with pytest.raises(KdxError, match="unknown source 'nosie'"):
        plan(_study(tmp_path, sources="[{name: train}, {name: nosie}]"))
    with pytest.raises(KdxError, match="--executor must be local or ray, got 'dask'"):
        run_study(_study(tmp_path), tmp_path / "runs", executor="dask")
    assert not (tmp_path / "runs").exists()


def test_a_source_entry_sets_its_own_loss_and_the_grid_stays_a_subset(tmp_path):
    """`loss` in a source entry: that source's runs use it, named by it; the study's loss axis and a source's
    loss together are refused, as is a loss that is not a name."""
    sources = "[{name: train}, {name: train, loss: soft_ce}, {name: noise, label: uniform}]"
    _, runs = plan(_study(tmp_path, sources=sources), build_sources=False)
    assert {(r.name, r.cfg.distill.loss) for r in runs} == {
        (f"{src}-{loss}-s{seed}", loss) for src, loss in (("train", "kl"), ("train", "soft_ce"), ("uniform", "kl"))
        for seed in (0, 1)}
    assert all(r.axes["loss"] == r.cfg.distill.loss and "loss" not in r.cfg.source for r in runs)
    with pytest.raises(KdxError, match="both as the study's axis and in a source entry"):
        plan(_study(tmp_path, sources=sources, extra="loss: [kl]\n"), build_sources=False)
    with pytest.raises(KdxError, match="`loss` in an entry must be a loss name"):
        plan(_study(tmp_path, sources="[{name: train, loss: [kl]}]"), build_sources=False)
    with pytest.raises(KdxError, match="nope"):  # an unknown loss is named by the run validation
        plan(_study(tmp_path, sources="[{name: train, loss: nope}]"), build_sources=False)


def test_ray_executor_runs_the_grid_as_tasks(digits_teacher, tmp_path):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'kdx[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(KdxError, match="no node of the Ray cluster has that many CPUs"):
            run_study(_study(tmp_path), tmp_path / "runs", executor="ray", cpus_per_run=3)  # not a wait for ever
        out = run_study(_study(tmp_path), tmp_path / "runs", executor="ray")
    finally:
        ray.shutdown()
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert {(r["source"], r["seed"]) for r in rows} == {("train", "0"), ("train", "1"), ("uniform", "0"), ("uniform", "1")}
    assert len(rows) == 4 * 5
    # A task's run is the same run as `kdx run` in a local process of one thread, as the task's (Ray gives a
    # 1-CPU task OMP_NUM_THREADS=1, the executor sets torch's threads to 1): the same config, the same code
    # at the same thread count, so the same result bit for bit. (At another thread count float sums, the
    # data's mean among them, go in another order: after these 32 steps weights differed by up to 2.5e-4.)
    cmd = [sys.executable, "-m", "kdx", "run", *FAST, "distill.samples=4000", "source.name=train", "seed=1",
           "--runs-dir", str(tmp_path), "--name", "local"]
    subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, capture_output=True)
    task, local = out / "runs" / "train-s1", tmp_path / "local"
    assert (task / "config.yaml").read_text() == (local / "config.yaml").read_text()
    assert strip_timing(read_metrics(task)) == strip_timing(read_metrics(local))
    w_task, w_local = (torch.load(d / "student.pt", weights_only=True)["model"] for d in (task, local))
    assert all(torch.equal(w_task[k], w_local[k]) for k in w_local)


def check_shipped_config(path: Path) -> None:
    """What the shipped-config test checks of one file: a run config validates and a study plans (no run
    starts); where the data is on this machine, every source is also built against it (which checks every
    source value: an augment, a noise kind, an adaptive score, each component and candidate)."""
    from kdx.config import load_config
    from kdx.data import load_dataset
    from kdx.run import build_source, validate
    from kdx.study.plan import check_sources

    def data_here(spec) -> bool:
        try:
            load_dataset(spec)
        except KdxError:  # e.g. the text corpus or the own-teacher image folder, made by `make demo-*`
            return False
        return True

    if path.parent.name == "studies":
        study, runs = plan(path, build_sources=False)
        assert runs and len({r.name for r in runs}) == len(runs)
        if data_here(runs[0].cfg.data):
            check_sources(path, runs)
    elif path.name == "findings.yaml":  # the findings page's list of studies: each one exists
        assert all((path.parent / "studies" / f"{name}.yaml").exists() for name in load_manifest(path).names)
    else:
        cfg = load_config(path)
        validate(cfg)
        if data_here(cfg.data):
            build_source(cfg, load_dataset(cfg.data))


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_and_study_validates(path):
    """What a user copies first must load: run configs validate, studies plan (no run starts)."""
    check_shipped_config(path)
