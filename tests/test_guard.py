"""Guards a user meets before and around the work: a mistyped source value refused before any teacher is
trained, one process a run directory, checkpoints that load with weights_only=True, a full disk named."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import FAST, kill_once_checkpointed, run_fast
from kdx.errors import KdxError
from kdx.study import plan

ROOT = Path(__file__).resolve().parents[1]
KDX = [sys.executable, "-m", "kdx"]


def kdx(*args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*KDX, *map(str, args)], capture_output=True, text=True, env=env, **kw)


def refused(out: subprocess.CompletedProcess, *needles: str) -> str:
    """The command ended with kdx's one-line error (exit 2, no traceback) holding every needle."""
    err = out.stderr.strip()
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("kdx: error: "), err
    for n in needles:
        assert n in err, err
    return err


def study_file(tmp_path: Path, sources: str, name: str = "tiny", samples: int = 4000) -> Path:
    f = tmp_path / f"{name}.yaml"
    overrides = ", ".join(json.dumps(o) for o in FAST + [f"distill.samples={samples}"])
    f.write_text(f"name: {name}\nbase: {ROOT / 'configs' / 'fashion_mnist.yaml'}\noverrides: [{overrides}]\n"
                 f"seeds: [0]\nsources: {sources}\nprobe: false\nreport_distributions: [test]\n")
    return f


# ---- a mistyped source value: refused before any teacher work -----------------------------------------


@pytest.mark.parametrize("source, needle", [
    ("{name: train, augment: flipcrop}", "augment 'flipcrop' is unknown"),
    ("{name: adaptive, score: kll}", "score 'kll' is unknown"),
])
def test_kdx_study_refuses_a_mistyped_source_value_before_any_teacher(tmp_path, source, needle):
    cache = tmp_path / "fresh-cache"
    env = {**os.environ, "KDX_CACHE": str(cache)}
    f = study_file(tmp_path, f"[{{name: train}}, {source}]")
    err = refused(kdx("study", f, "--runs-dir", tmp_path / "runs", env=env), needle)
    assert "run " in err and str(f) in err  # which run of which study
    assert not cache.exists() or not any(cache.rglob("*")), "a teacher was trained or looked up"
    assert not (tmp_path / "runs").exists()


def test_kdx_run_refuses_a_mistyped_source_value_before_any_teacher(tmp_path):
    cache = tmp_path / "fresh-cache"
    env = {**os.environ, "KDX_CACHE": str(cache)}
    refused(kdx("run", *FAST, "source.name=mixture",
                "source.components=[{name: train}, {name: noise, kind: gauss}]",
                "--runs-dir", tmp_path / "runs", env=env), "kind must be uniform or gaussian", "gauss")
    assert not cache.exists() or not any(cache.rglob("*"))
    assert not (tmp_path / "runs" / "default-mixture-s0").exists()


@pytest.mark.parametrize("args, needle", [
    (["source.name=train"], "kdx synth makes inputs with a synthesis source"),
    (["source.name=inversion", "source.pool_size=0"], "pool_size and refresh_every must be >= 1"),
])
def test_kdx_synth_refuses_a_bad_source_before_any_teacher(tmp_path, args, needle):
    cache = tmp_path / "fresh-cache"
    env = {**os.environ, "KDX_CACHE": str(cache)}
    refused(kdx("synth", *FAST, *args, "--n", 64, "--out", tmp_path / "pool", env=env), needle)
    assert not cache.exists() or not any(cache.rglob("*")), "a teacher was trained or looked up"
    assert not (tmp_path / "pool").exists()


@pytest.mark.parametrize("source, needle", [
    ("{name: mixture, components: [{name: train}, {name: train, augment: mix_up}]}", "source.components[1]: source augment 'mix_up' is unknown"),
    ("{name: mixture, components: [{name: train, weight: heavy}, {name: noise}]}", "weight 'heavy' must be"),
    ("{name: mixture, components: [{name: train, weight: .nan}, {name: noise}]}", "weight nan must be"),
    ("{name: adaptive, candidates: {name: noise, kind: pink}}", "source.candidates: source 'noise': kind must be"),
    ("{name: adaptive, candidates: {name: nosie}}", "unknown source 'nosie'"),
    ("{name: adaptive, pick: best}", "pick 'best' is unknown"),
    ("{name: adaptive, oversample: .nan}", "oversample=nan"),
    ("{name: noise, kind: unigram}", "kind must be uniform or gaussian for image data"),
])
def test_study_plan_builds_every_source_against_the_data(tmp_path, source, needle):
    with pytest.raises(KdxError, match=re.escape(needle)):
        plan(study_file(tmp_path, f"[{{name: train}}, {source}]"))
    study, runs = plan(study_file(tmp_path, f"[{{name: train}}, {source}]"), build_sources=False)
    assert len(runs) == 2  # the signatures alone let it through: building against the data is what refuses it


def test_the_shipped_config_check_catches_a_mistyped_copy(tmp_path):
    """tests/test_study.py's check of every shipped config fails on a copy with one value mistyped."""
    from test_study import check_shipped_config

    (tmp_path / "studies").mkdir()
    shutil.copy(ROOT / "configs" / "mnist1d.yaml", tmp_path / "mnist1d.yaml")
    text = (ROOT / "configs" / "studies" / "adaptive_core.yaml").read_text()
    for good, bad, needle in [("score: kl,", "score: kll,", "score 'kll' is unknown"),
                              ("{name: train, augment: mixup}, score", "{name: train, augment: mixpu}, score",
                               "augment 'mixpu' is unknown")]:
        assert good in text
        copy = tmp_path / "studies" / "adaptive_core.yaml"
        copy.write_text(text)
        check_shipped_config(copy)  # the faithful copy passes
        copy.write_text(text.replace(good, bad, 1))
        with pytest.raises(KdxError, match=re.escape(needle)):
            check_shipped_config(copy)
    run_cfg = tmp_path / "fashion_mnist.yaml"
    run_cfg.write_text((ROOT / "configs" / "fashion_mnist.yaml").read_text().replace(
        "  name: train\n", "  name: train\n  augment: flip-crop\n"))
    with pytest.raises(KdxError, match="augment 'flip-crop' is unknown"):
        check_shipped_config(run_cfg)


# ---- one process a run directory ------------------------------------------------------------------------


def _first_to_exit(procs: list[subprocess.Popen], timeout: float = 300) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for i, p in enumerate(procs):
            if p.poll() is not None:
                return i
        time.sleep(0.05)
    raise AssertionError("neither process ended")


def test_two_kdx_runs_on_one_run_dir_and_a_killed_holder(digits_teacher, tmp_path):
    """Two `kdx run` started in the same instant on one run directory: one is refused, naming the other
    (pid, host) and what to do; the other, SIGKILLed mid-run, leaves a lock that does not block --resume."""
    cmd = [*KDX, "run", *FAST, "distill.samples=24000", "distill.checkpoint_every=25",
           "--runs-dir", str(tmp_path), "--name", "r"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        loser = _first_to_exit(procs)
        winner = procs[1 - loser]
        _, err = procs[loser].communicate()
        assert winner.poll() is None, "the refused process must not have waited for the other to finish"
        out = subprocess.CompletedProcess(cmd, procs[loser].returncode, "", err)
        refused(out, f"{tmp_path / 'r'} is in use by process {winner.pid} on host {socket.gethostname()}",
                "--resume")
        # kill the holder once it has checkpointed: the kernel drops its lock, its pid/host record stays
        ckpt = tmp_path / "r" / "checkpoint.pt"
        deadline = time.time() + 120
        while not ckpt.exists() and time.time() < deadline and winner.poll() is None:
            time.sleep(0.05)
        assert ckpt.exists()
        winner.send_signal(signal.SIGKILL)
        winner.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert not (tmp_path / "r" / "metrics.json").exists()
    assert json.loads((tmp_path / ".r.lock.json").read_text())["pid"] == winner.pid  # left by the killed one
    assert torch.load(ckpt, weights_only=True)["step"] > 0  # the checkpoint is tensors and plain values only
    out = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["train"]["resumed_from_step"] > 0
    assert not (tmp_path / ".r.lock.json").exists()  # a run that ends clears its record


def test_a_held_run_dir_is_refused_by_the_python_api(digits_teacher, tmp_path):
    """The lock is the run directory's, whoever asks: here a process holding it, and run() in this one."""
    from kdx.rundir import locked

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from kdx.rundir import locked\n"
                               "with locked(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
                               str(tmp_path / "x")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(KdxError, match=f"in use by process {holder.pid} on host"):
            run_fast(tmp_path, "distill.samples=1000", name="x")
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "x").exists()  # refused before the run directory was made
    with locked(tmp_path / "x"), locked(tmp_path / "x"):  # re-entered by the process that holds it
        pass
    run_fast(tmp_path, "distill.samples=1000", name="x")  # the dead holder's lock went with it


def test_two_kdx_studies_on_one_folder_and_workers_2(digits_teacher, tmp_path):
    """`kdx study --workers 2` runs its runs in parallel processes, each holding its own run's lock; a
    second `kdx study` on the same study folder, started in the same instant, is refused naming the first."""
    f = study_file(tmp_path, "[{name: train}, {name: noise, label: uniform}]", samples=6000)
    cmd = [*KDX, "study", str(f), "--runs-dir", str(tmp_path / "runs"), "--workers", "2"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        loser = _first_to_exit(procs, timeout=600)
        winner = procs[1 - loser]
        _, err = procs[loser].communicate()
        out = subprocess.CompletedProcess(cmd, procs[loser].returncode, "", err)
        refused(out, f"is in use by process {winner.pid} on host {socket.gethostname()}")
        w_out, w_err = winner.communicate(timeout=600)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert winner.returncode == 0, w_err
    runs = tmp_path / "runs" / "studies" / "tiny" / "runs"
    assert all((runs / n / "metrics.json").exists() for n in ("train-s0", "uniform-s0"))
    assert "summary.csv" in w_out


# ---- the loop's checkpoint: tensors and plain values, loaded with weights_only=True ----------------------


SOURCES_TO_CHECKPOINT = [
    {"name": "train", "augment": "mixup"}, {"name": "noise"},
    {"name": "mixture", "components": [{"name": "train"}, {"name": "noise"}]},
    {"name": "adaptive", "score": "kl"}, {"name": "adaptive", "score": "region", "regions": 4, "pca_dim": 8},
    {"name": "adaptive_mixture", "components": [{"name": "train"}, {"name": "noise"}]},
    {"name": "inversion", "iterations": 2, "batch": 32, "pool_size": 64}, {"name": "adversarial", "batch": 32},
    {"name": "langevin", "steps": 2, "batch": 32}, {"name": "boundary", "steps": 2, "batch": 32},
]


@pytest.mark.parametrize("spec", SOURCES_TO_CHECKPOINT, ids=lambda s: "-".join(map(str, s.values()))[:40])
def test_every_sources_checkpoint_loads_with_weights_only(digits_teacher, tmp_path, spec):
    import dataclasses

    from kdx.distill.loop import CHECKPOINT, distill
    from kdx.models import build_model
    from kdx.registry import SOURCES

    cfg, data, teacher = digits_teacher
    dc = dataclasses.replace(cfg.distill, samples=768, checkpoint_every=2,
                             **({"schedule": "onecycle", "optimizer": "adamw"} if spec["name"] == "noise" else {}))
    source = SOURCES.build(spec, "source", data=data, seed=0)
    distill(build_model(cfg.student.model, data, "student.model", 0), source, dc, teacher=teacher, run_dir=tmp_path)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["step"] == 4 and set(state) >= {"student", "optimizer", "schedule", "source", "counts"}
    fresh = SOURCES.build(spec, "source", data=data, seed=0)
    fresh.load_state_dict(state["source"])  # what a resume does with it


def test_plain_state_converts_numpy_and_names_what_it_cannot_keep():
    from kdx.distill.loop import plain

    state = plain({"a": np.int64(3), "b": [np.float32(0.5), (np.bool_(True), None)], "c": np.arange(3),
                   np.int64(7): "key"})
    assert state["a"] == 3 and type(state["a"]) is int and type(state["b"][0]) is float
    assert state["b"][1] == (True, None) and type(state["b"][1][0]) is bool
    assert torch.equal(state["c"], torch.arange(3)) and type(next(k for k in state if k == 7)) is int
    with pytest.raises(KdxError, match=r"checkpoint\.source\.gen is a Generator: a checkpoint holds only tensors"):
        plain({"source": {"gen": torch.Generator()}})


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['KDX_GUARD_MARK']}",))


def test_a_checkpoint_holding_code_is_refused_on_resume_not_run(digits_teacher, tmp_path, monkeypatch):
    """A run directory copied from someone else: its checkpoint would run code if unpickled in full."""
    mark = tmp_path / "pwned"
    monkeypatch.setenv("KDX_GUARD_MARK", str(mark))
    run_dir = run_fast(tmp_path, "distill.samples=1000", name="copied")
    (run_dir / "metrics.json").unlink()  # as if killed mid-run
    torch.save({"student": Payload(), "step": 1}, run_dir / "checkpoint.pt")
    with pytest.raises(KdxError, match=r"checkpoint\.pt is not a checkpoint kdx resumes from .*--overwrite"):
        run_fast(tmp_path, "distill.samples=1000", name="copied", resume=True)
    assert not mark.exists()


# ---- a full disk ---------------------------------------------------------------------------------------------


@contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of `size` at path (as root); the test is skipped, saying why, where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a full disk is made with a small tmpfs, which needs root (mount -t tmpfs)")
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip() or out.returncode}): no full disk to test on")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def full_disk_message(err: str) -> tuple[str, Path]:
    """The file and folder that the one-line error names as not written for a full disk."""
    m = re.search(r"cannot write (\S+) in (\S+): the disk is full \(No space left on device\)", err)
    assert m, err
    assert "--resume" in err and "--runs-dir" in err  # what to do
    return m.group(1), Path(m.group(2))


def assert_all_files_whole(root: Path) -> None:
    """Every file under root is complete: no temporary files, and each readable as what it is."""
    for f in root.rglob("*"):
        if f.is_dir():
            continue
        assert not f.name.endswith(".tmp"), f"temporary file left: {f}"
        if f.suffix == ".pt":
            torch.load(f, weights_only=True)
        elif f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix == ".jsonl":
            assert f.read_text().endswith("\n")
            [json.loads(line) for line in f.read_text().splitlines()]
        elif f.suffix == ".yaml":
            assert "kdx_version" in yaml.safe_load(f.read_text())


def test_kdx_run_on_a_full_disk_names_the_file_and_leaves_it_whole_or_absent(digits_teacher, tmp_path):
    with small_disk(tmp_path / "disk", "32k") as disk:
        out = kdx("run", *FAST, "distill.samples=4000", "--runs-dir", disk, "--name", "r")
        name, folder = full_disk_message(refused(out))
        assert folder == disk / "r" and name in ("checkpoint.pt", "log.jsonl", "student.pt", "metrics.json")
        assert (disk / "r" / "config.yaml").exists()  # written before the disk filled
        assert_all_files_whole(disk)
        assert not (disk / "r" / "metrics.json").exists()


def test_kdx_study_on_a_full_disk_names_the_file(digits_teacher, tmp_path):
    f = study_file(tmp_path, "[{name: train}]")
    with small_disk(tmp_path / "disk", "32k") as disk:
        name, folder = full_disk_message(refused(kdx("study", f, "--runs-dir", disk)))
        assert folder == disk / "studies" / "tiny" / "runs" / "train-s0"
        assert_all_files_whole(disk)


def test_every_writer_on_a_full_disk(tmp_path):
    """What runs, studies, probes, pools and the explorer write, each through kdx.io: on a full disk each
    raises the named error, the file it replaces stays as it was, and no temporary file is left."""
    import pandas as pd

    from kdx import io

    big = "x" * 200_000
    frame = pd.DataFrame({"a": np.random.default_rng(0).random(40_000)})
    fig = io.pyplot().figure(figsize=(30, 30), dpi=200)
    fig.gca().imshow(np.random.default_rng(0).random((400, 400)))
    writers = {
        "page.html": lambda p: io.write_text(p, big),
        "summary.json": lambda p: io.write_json(p, {"x": big}),
        "checkpoint.pt": lambda p: io.save_torch(p, {"w": torch.zeros(60_000)}),
        "draws.npz": lambda p: io.save_arrays(p, counts=np.zeros(60_000)),
        "map.parquet": lambda p: io.save_parquet(frame, p, {"run": "r"}),
        "summary.csv": lambda p: io.save_csv(frame, p),
        "deviation.png": lambda p: io.save_figure(fig, p),
        "log.jsonl": lambda p: io.append_text(p, big + "\n"),
    }
    with small_disk(tmp_path / "disk", "128k") as disk:
        for name, write in writers.items():
            target = disk / "out" / name
            io.write_text(target, "old\n")  # what was there before
            with pytest.raises(KdxError) as e:
                write(target)
            assert full_disk_message(str(e.value)) == (name, disk / "out")
            assert target.read_text() == "old\n"
            assert [p.name for p in target.parent.iterdir()] == [name]
            target.unlink()
        pool = disk / "pools" / "inversion"
        import datasets

        with pytest.raises(KdxError) as e, io.atomic_dir(pool) as tmp:
            datasets.DatasetDict({"train": datasets.Dataset.from_dict({"t": [big] * 4})}).save_to_disk(str(tmp))
        assert full_disk_message(str(e.value)) == ("inversion", disk / "pools")
        assert list((disk / "pools").iterdir()) == []


def fill(disk: Path) -> None:
    """Fill the disk to the last byte with one file (filler.bin)."""
    with open(disk / "filler.bin", "wb", buffering=0) as f:
        chunk = b"\0" * 4096
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass


def test_kdx_probe_and_kdx_synth_on_a_full_disk_name_the_file(digits_teacher, tmp_path):
    with small_disk(tmp_path / "disk", "1m") as disk:
        run = run_fast(disk, "distill.samples=1000", name="r")
        fill(disk)
        name, folder = full_disk_message(refused(kdx("probe", run, "--no-map", "--source-n", "500", "--resamples", "50")))
        assert folder == run / "probes"
        name, folder = full_disk_message(refused(kdx("synth", *FAST, "source.name=langevin", "source.steps=2",
                                                     "source.batch=64", "--n", "64", "--out", disk / "pool")))
        assert (name, folder) == ("pool", disk)
        (disk / "filler.bin").unlink()
        assert_all_files_whole(disk)
        assert sorted(p.name for p in disk.iterdir()) == [".r.lock", "r"]  # no pool, whole or half
