"""Experiment trackers (`report: [...]`): a `kdx run` with report=[NAME] on the command line, read back with
each library's own reader (TensorBoard's EventAccumulator, MlflowClient, trackio's SQLite storage, W&B's
offline .wandb records) and compared with log.jsonl and metrics.json, the source of truth."""
from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAST, run_fast
from kdx import config as kconfig
from kdx.errors import KdxError
from kdx.registry import TRACKERS, Entry
from kdx.run import validate

# FAST with a shorter budget and the learning curve on: 24 steps, logged every 5, curve every 1024 samples
TRACKED = FAST + ["distill.samples=3000", "distill.curve_every=1024", "eval.distributions=[test,uniform_noise]"]


def kdx_run(runs: Path, *args: str, env: dict | None = None) -> Path:
    """`kdx run` of TRACKED in a fresh process (a tracker's store is per process), as a user types it."""
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}  # None: unset
    out = subprocess.run([sys.executable, "-m", "kdx", "run", *TRACKED, *args, "--runs-dir", str(runs), "--name", "r"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return runs / "r"


def numbers(table: dict) -> dict:
    """The numeric fields of one metrics.json table (the trackers log these; None and lists are not numbers)."""
    return {k: v for k, v in table.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def truth(run_dir: Path) -> tuple[list[dict], list[dict], dict]:
    """log.jsonl's loss records, its curve records, and metrics.json."""
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return ([r for r in records if "loss" in r], [r for r in records if "curve" in r],
            json.loads((run_dir / "metrics.json").read_text()))


def test_tensorboard_event_files_hold_the_log_the_metrics_and_the_probe_figures(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = kdx_run(tmp_path, "report=[tensorboard]")
    probe = subprocess.run([sys.executable, "-m", "kdx", "probe", str(run_dir), "--no-map"], capture_output=True,
                           text=True, timeout=600)
    assert probe.returncode == 0, probe.stdout + probe.stderr
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    steps, curve, metrics = truth(run_dir)
    for key in ("loss", "lr", "samples_per_s"):
        logged = {e.step: e.value for e in acc.Scalars(f"train/{key}")}
        assert sorted(logged) == [r["step"] for r in steps]
        for r in steps:  # event files keep float32
            assert logged[r["step"]] == pytest.approx(r[key], rel=1e-6, abs=1e-12)
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars("curve/test_acc")] == \
        [(r["step"], r["curve"]["test_acc"]) for r in curve]
    for dist in ("test", "uniform_noise"):
        for key, value in numbers(metrics["eval"][dist]).items():
            assert acc.Scalars(f"eval/{dist}/{key}")[0].value == pytest.approx(value, rel=1e-6, abs=1e-9)
    assert "config/text_summary" in acc.Tags()["tensors"]
    figures = {f"probes/{p.stem}" for p in (run_dir / "probes").glob("*.png")}
    assert figures and figures <= set(acc.Tags()["images"])


def test_mlflow_sqlite_store_holds_params_metrics_and_artifacts(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    run_dir = kdx_run(tmp_path, "report=[mlflow]")
    assert (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("kdx").experiment_id])
    assert run.info.run_name == "r" and run.info.status == "FINISHED"
    cfg = kconfig.load_config(None, TRACKED + ["report=[mlflow]"])
    assert run.data.params["distill.lr"] == str(cfg.distill.lr) and run.data.params["data.name"] == "digits"
    assert run.data.params["report"] == "['mlflow']"
    steps, curve, metrics = truth(run_dir)
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train.loss")}
    assert history == {r["step"]: pytest.approx(r["loss"], rel=1e-12) for r in steps}
    lr = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train.lr")}
    assert lr == {r["step"]: pytest.approx(r["lr"], rel=1e-12, abs=1e-15) for r in steps}
    for dist in ("test", "uniform_noise"):
        for key, value in numbers(metrics["eval"][dist]).items():
            assert run.data.metrics[f"eval.{dist}.{key}"] == pytest.approx(value, rel=1e-12)
    assert run.data.metrics["summary.train.accounting.teacher_queries"] == metrics["train"]["accounting"]["teacher_queries"]
    [artifact] = client.list_artifacts(run.info.run_id)
    assert artifact.path == "student.pt"
    local = client.download_artifacts(run.info.run_id, "student.pt", str(tmp_path / "dl"))
    assert Path(local).read_bytes() == (run_dir / "student.pt").read_bytes()


def test_trackio_local_store_holds_the_log_config_and_metrics(tmp_path, monkeypatch):
    pytest.importorskip("trackio")
    store = tmp_path / "runs" / "trackio"
    run_dir = kdx_run(tmp_path / "runs", "report=[trackio]", env={"TRACKIO_DIR": None})  # the runs folder's
    assert (store / "kdx.db").exists()
    import trackio.sqlite_storage as storage

    monkeypatch.setattr(storage, "TRACKIO_DIR", store)  # the store trackio read from $TRACKIO_DIR in the run
    logs = storage.SQLiteStorage.get_logs("kdx", "r")
    steps, curve, metrics = truth(run_dir)
    logged = {row["step"]: row["train/loss"] for row in logs if "train/loss" in row}
    assert logged == {r["step"]: pytest.approx(r["loss"], rel=1e-12) for r in steps}
    curve_logged = {row["step"]: row["curve/test_agreement"] for row in logs if "curve/test_agreement" in row}
    assert curve_logged == {r["step"]: pytest.approx(r["curve"]["test_agreement"]) for r in curve}
    final = next(row for row in logs if "eval/test/student_acc" in row)
    for key, value in numbers(metrics["eval"]["test"]).items():
        assert final[f"eval/test/{key}"] == pytest.approx(value, rel=1e-12)
    config = storage.SQLiteStorage.get_run_config("kdx", "r")
    assert config["data"]["name"] == "digits" and config["report"] == ["trackio"]


def wandb_records(run_dir: Path):
    """The records of a W&B offline run: its .wandb file is a LevelDB-style log (32 KiB blocks of
    checksum, length, type, payload chunks) of wandb's own protobuf Record messages."""
    from wandb.proto import wandb_internal_pb2

    [path] = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    data, pos, chunk = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            yield record
            chunk = b""
        elif kind == 0:
            break


def test_wandb_offline_run_holds_the_log_config_summary_and_student(tmp_path):
    pytest.importorskip("wandb")
    run_dir = kdx_run(tmp_path, "report=[wandb]", env={"WANDB_MODE": None, "WANDB_API_KEY": None})
    history, summary, config, files, run = {}, {}, {}, [], None
    items = lambda fields: {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in fields}  # noqa: E731
    for rec in wandb_records(run_dir):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history[rec.history.step.num] = items(rec.history.item)
        elif kind == "summary":
            summary.update(items(rec.summary.update))
        elif kind == "run":
            run = rec.run
            config = items(rec.run.config.update)
        elif kind == "files":
            files += [f.path for f in rec.files.files]
    assert run.display_name == "r" and run.project == "kdx"
    assert config["data"]["name"] == "digits" and config["report"] == ["wandb"]
    steps, curve, metrics = truth(run_dir)
    assert {s: h["train/loss"] for s, h in history.items() if "train/loss" in h} == \
        {r["step"]: pytest.approx(r["loss"], rel=1e-12) for r in steps}
    assert {s: h["curve/test_acc"] for s, h in history.items() if "curve/test_acc" in h} == \
        {r["step"]: pytest.approx(r["curve"]["test_acc"]) for r in curve}
    for key, value in numbers(metrics["eval"]["test"]).items():
        assert summary[f"eval/test/{key}"] == pytest.approx(value, rel=1e-12)
    assert "student.pt" in files
    [kept] = list((run_dir / "wandb").glob("offline-run-*/files/student.pt"))
    assert kept.read_bytes() == (run_dir / "student.pt").read_bytes()


def test_a_study_passes_report_to_every_run_under_its_name(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from kdx.study import plan

    study = tmp_path / "s.yaml"
    study.write_text(f"name: tracked\nbase: base.yaml\nreport: [mlflow]\nseeds: [0]\nprobe: false\n"
                     f"sources: [{{name: train}}, {{name: noise}}]\noverrides: {json.dumps(TRACKED)}\n")
    (tmp_path / "base.yaml").write_text("{}\n")
    _, runs = plan(study, build_sources=False)
    assert [(r.cfg.report, r.cfg.report_project) for r in runs] == [(["mlflow"], "tracked")] * 2
    out = subprocess.run([sys.executable, "-m", "kdx", "study", str(study), "--runs-dir", str(tmp_path / "runs")],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    db = tmp_path / "runs" / "studies" / "tracked" / "runs" / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    found = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert sorted(r.info.run_name for r in found) == sorted(r.name for r in runs)


def test_unknown_tracker_and_missing_package_are_named_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(KdxError, match=r"report: unknown tracker 'tensorbord'; the trackers: mlflow, tensorboard, "
                                       r"trackio, wandb"):
        validate(kconfig.load_config(None, ["report=[tensorbord]"]))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(KdxError, match=r"tracker 'mlflow' needs the mlflow package: pip install 'kdx\[mlflow\]'"):
        validate(kconfig.load_config(None, ["report=[mlflow]"]))
    # through the command line: the run directory is never made
    out = subprocess.run([sys.executable, "-m", "kdx", "run", "data.name=digits", "report=[nope]", "--runs-dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "unknown tracker 'nope'" in out.stderr and not list(tmp_path.iterdir())


class Broken:
    """A tracker that fails on its third step: the run must finish, warning once."""

    package = extra = "json"
    calls = 0

    def __init__(self, run_dir, **kw):
        pass

    def log(self, step, values):
        Broken.calls += 1
        if Broken.calls == 3:
            raise OSError("disk of the tracker is gone")

    def summary(self, values):
        raise AssertionError("a dropped tracker is never called again")

    artifact = images = close = summary


def test_a_tracker_failing_mid_run_warns_once_and_the_run_finishes(tmp_path, monkeypatch):
    monkeypatch.setitem(TRACKERS._entries, "broken", Entry("broken", Broken, "fails on its third step", ()))
    monkeypatch.setattr(Broken, "calls", 0)
    with pytest.warns(UserWarning, match="tracker broken failed .OSError: disk of the tracker is gone") as caught:
        run_dir = run_fast(tmp_path, "report=[broken]", "distill.samples=3000")
    assert len([w for w in caught if "tracker broken" in str(w.message)]) == 1
    assert Broken.calls == 3
    steps, _, metrics = truth(run_dir)
    assert len(steps) == 5 and metrics["eval"]["test"]["n"] > 0


def test_a_killed_run_resumed_continues_the_same_tracker_run(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from conftest import kill_once_checkpointed

    cmd = [sys.executable, "-m", "kdx", "run", *TRACKED, "report=[mlflow]", "--runs-dir", str(tmp_path), "--name", "r"]
    kill_once_checkpointed(cmd, tmp_path / "r", dict(os.environ))
    run_id = json.loads((tmp_path / "r" / "trackers.json").read_text())["mlflow"]["run_id"]
    out = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("kdx").experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    steps, _, metrics = truth(tmp_path / "r")
    # every step the loop logged, the ones logged again after the checkpoint at their last value
    last = {r["step"]: r["loss"] for r in steps}
    assert {m.step for m in client.get_metric_history(run_id, "train.loss")} == set(last)
    assert run.data.metrics["eval.test.student_acc"] == pytest.approx(metrics["eval"]["test"]["student_acc"])


def test_a_run_that_diverges_ends_its_tracker_run_as_failed(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    out = subprocess.run([sys.executable, "-m", "kdx", "run", *TRACKED, "report=[mlflow]", "distill.lr=1e12",
                          "--runs-dir", str(tmp_path), "--name", "r"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 2 and re.search(r"loss is (nan|inf)", out.stderr), out.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("kdx").experiment_id])
    assert run.info.status == "FAILED"


def test_a_damaged_trackers_json_warns_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setitem(TRACKERS._entries, "broken", Entry("broken", Broken, "fails on its third step", ()))
    monkeypatch.setattr(Broken, "calls", 0)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "trackers.json").write_text("{not json")
    with pytest.warns(UserWarning, match=r"trackers.json is damaged .* the trackers start new runs"):
        run_dir = run_fast(tmp_path, "report=[broken]", "distill.samples=1000", overwrite=False, resume=True)
    assert json.loads((run_dir / "trackers.json").read_text()) == {"broken": {}}
    assert (run_dir / "metrics.json").exists()


def test_under_torchrun_rank_0_alone_reports(digits_teacher, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from test_ddp import DDP_RUN

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "kdx",
           "run", *DDP_RUN, "distill.device=cpu", "report=[tensorboard]", "--runs-dir", str(tmp_path), "--name", "two"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    events = list((tmp_path / "two" / "tensorboard").glob("events.out.tfevents.*"))
    assert len({e.name.split(".")[-2] for e in events}) == 1  # one process's writer (pid in the name)
    acc = EventAccumulator(str(tmp_path / "two" / "tensorboard"))
    acc.Reload()
    steps, _, _ = truth(tmp_path / "two")
    assert [e.step for e in acc.Scalars("train/loss")] == [r["step"] for r in steps]  # each step once
