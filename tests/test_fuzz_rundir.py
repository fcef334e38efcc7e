"""The readers of a finished run directory and of the teacher cache, fuzzed: metrics.json (`kdx compare`, studies),
config.yaml (load_run, `--resume`), log.jsonl and probes/deviation.json (studies), probes/map.parquet and
regions.csv (the explorer), the loop's checkpoint.pt (`--resume`), and the cached teacher's teacher.pt and
info.json. Each damaged file is read correctly or raises a KdxError naming the file and the fix, never another
exception, and nothing is left written half-way. One tiny run is built once for the module; each example
damages one file of it and puts it back. The generators live in tests/fuzzing.py."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import FAST, run_fast
from fuzzing import (assert_named, broken_text_or_bytes, corrupted, fuzz, junk_values, leftovers, loads_or_named,
                     wrong_encodings)
from kdx.errors import KdxError
from kdx.eval.report import compare_table
from kdx.io import write_json
from kdx.probes import ProbeOptions, probe
from kdx.rundir import CHECKPOINT, CONFIG, DEVIATION, LOG, MAP, METRICS, PROBES, REGIONS, load_run, read_metrics
from kdx.study.folders import Run as StudyRun

TINY = ["distill.samples=2000", "eval.n=100", "eval.bootstrap=50", "eval.distributions=[test,gaussian_noise-2]"]
PROBE = ProbeOptions(on=["test"], regions=3, source_n=500, map_source_n=100, map_epochs=5, resamples=20)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One finished, probed tiny run with its own teacher cache: (run_dir, teacher cache folder)."""
    root = tmp_path_factory.mktemp("rundir-fuzz")
    run_dir = run_fast(root / "runs", *TINY, f"cache_dir={root / 'cache'}", name="tiny")
    probe(run_dir, PROBE, log=lambda *a: None)
    teacher_dir = next((root / "cache" / "teachers").iterdir())
    return run_dir, teacher_dir


class damaged:
    """`with damaged(path, data):` the file holds `data` inside the block and its own bytes again after."""

    def __init__(self, path: Path, data: bytes):
        self.path, self.data = Path(path), data

    def __enter__(self):
        self.valid = self.path.read_bytes()
        self.path.write_bytes(self.data)
        return self.path

    def __exit__(self, *exc):
        self.path.write_bytes(self.valid)


def unchanged(folder: Path, before: dict) -> None:
    """Nothing was written half-way: no temporary files, and every file as it was (the damaged one put back)."""
    assert not leftovers(folder), leftovers(folder)
    assert snapshot(folder) == before


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).rglob("*"))
            if p.is_file()}


def json_damage(valid: bytes):
    """A JSON file kdx wrote, broken: its bytes, its encoding, or valid JSON of junk values."""
    return st.one_of(broken_text_or_bytes(valid), junk_values().map(lambda v: _Junk(v)))


class _Junk:
    def __init__(self, value):
        import json

        self.how, self.data = "junk-json", json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")

    def __repr__(self):
        return f"Junk({self.data[:60]!r})"


# ---------------------------------------------------------------------------------------------- metrics.json


@fuzz(40)
@given(data=st.data())
def test_metrics_json_fuzzed(tiny, data):
    run_dir, _ = tiny
    path = run_dir / METRICS
    broken = data.draw(json_damage(path.read_bytes()))
    before = snapshot(run_dir)
    with damaged(path, broken.data):
        for read in (lambda: read_metrics(run_dir), lambda: compare_table([run_dir], ["test", "gaussian_noise-2"]),
                     lambda: StudyRun(None, run_dir, read_metrics(run_dir)).acc()):
            loads_or_named(read, path)
    unchanged(run_dir, before)


# ----------------------------------------------------------------------------------------------- config.yaml


@fuzz(20)
@given(data=st.data())
def test_config_yaml_fuzzed(tiny, data):
    """load_run (what probes, studies and the explorer start with) on a config.yaml that no longer parses
    (a damage that leaves another valid config would train that config's teacher: too slow here)."""
    run_dir, _ = tiny
    path = run_dir / CONFIG
    valid = path.read_bytes()
    broken = data.draw(st.one_of(wrong_encodings(valid.decode()), corrupted(valid, ("empty", "zero_head", "random"))))
    before = snapshot(run_dir)
    with damaged(path, broken.data):
        run, _ = loads_or_named(lambda: load_run(run_dir), path)
    unchanged(run_dir, before)


@pytest.mark.parametrize("dropped", ["", "teacher", "data"])
def test_config_yaml_without_a_section_is_refused_before_any_teacher(tiny, dropped, monkeypatch):
    """An emptied config.yaml, or one missing a section kdx always writes, would otherwise fall back to that
    section's defaults and train a default teacher before the student failed to load: refused by name first."""
    import yaml

    run_dir, _ = tiny
    path = run_dir / CONFIG
    kept = {k: v for k, v in yaml.safe_load(path.read_text()).items() if k != dropped} if dropped else {}
    trained = []
    monkeypatch.setattr("kdx.rundir.get_teacher", lambda *a, **k: trained.append(a))
    with damaged(path, yaml.safe_dump(kept).encode() if kept else b""):
        with pytest.raises(KdxError) as e:
            load_run(run_dir)
    assert f"lacks {dropped or 'data'}" in assert_named(e.value, path)
    assert not trained


@fuzz(15)
@given(broken=st.one_of(corrupted(b"seed: 0\n"), st.none()))
def test_config_yaml_on_resume_fuzzed(tiny, tmp_path_factory, broken):
    """`--resume` of an unfinished copy of the run whose config.yaml is damaged: refused by name before any work."""
    run_dir, teacher_dir = tiny
    copy = tmp_path_factory.mktemp("resume") / "tiny"
    shutil.copytree(run_dir, copy)
    (copy / METRICS).unlink()
    path = copy / CONFIG
    path.write_bytes((broken.data if broken else b"") + path.read_bytes()[: len(path.read_bytes()) // 2])
    before = snapshot(copy)
    with pytest.raises(KdxError) as e:
        run_fast(copy.parent, *TINY, f"cache_dir={teacher_dir.parent.parent}", name="tiny", resume=True)
    assert "--overwrite" in assert_named(e.value, path)
    unchanged(copy, before)


# ------------------------------------------------------------------------------------ log.jsonl, deviation.json


@fuzz(30)
@given(data=st.data())
def test_log_and_deviation_fuzzed(tiny, data):
    """A study's readers of its runs: the learning curve from log.jsonl, the probe's deviation.json."""
    run_dir, _ = tiny
    which = data.draw(st.sampled_from([LOG, f"{PROBES}/{DEVIATION}"]))
    path = run_dir / which
    broken = data.draw(json_damage(path.read_bytes()) if which != LOG else broken_text_or_bytes(path.read_bytes()))
    run = StudyRun(None, run_dir, read_metrics(run_dir))
    before = snapshot(run_dir)
    with damaged(path, broken.data):
        loads_or_named(run.curve if which == LOG else run.deviation, path)
    unchanged(run_dir, before)


# ------------------------------------------------------------------------------------ map.parquet, regions.csv


@fuzz(20)
@given(data=st.data())
def test_map_and_regions_fuzzed(tiny, data):
    """The explorer's reader of a probed run (`kdx explore RUN`)."""
    from kdx.explore.views import load_view

    run_dir, _ = tiny
    path = run_dir / PROBES / data.draw(st.sampled_from([MAP, REGIONS]))
    broken = data.draw(corrupted(path.read_bytes()))
    before = snapshot(run_dir)
    with damaged(path, broken.data):
        loads_or_named(lambda: load_view(run_dir, log=lambda *a: None), path)
    unchanged(run_dir, before)


# ------------------------------------------------------------------------------------------- teacher cache


@fuzz(25)
@given(data=st.data())
def test_teacher_cache_fuzzed(tiny, data):
    """A damaged teacher.pt or info.json in the teacher cache: the error says to delete that cache folder."""
    run_dir, teacher_dir = tiny
    which = data.draw(st.sampled_from(["teacher.pt", "info.json"]))
    path = teacher_dir / which
    broken = data.draw(corrupted(path.read_bytes()) if which == "teacher.pt" else json_damage(path.read_bytes()))
    before = snapshot(teacher_dir)
    with damaged(path, broken.data):
        _, msg = loads_or_named(lambda: load_run(run_dir), path)
        if msg is not None:
            assert f"delete the teacher cache folder {teacher_dir}" in msg
    unchanged(teacher_dir, before)


# ------------------------------------------------------------------------------------------- checkpoint.pt


def _checkpoint_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"step": 3, "model": {"w": torch.zeros(2, 2)}, "seen": 384}, buf)
    return buf.getvalue()


@fuzz(12)
@given(broken=corrupted(_checkpoint_bytes()))
def test_checkpoint_on_resume_fuzzed(tiny, tmp_path_factory, broken):
    """`--resume` of an unfinished run whose checkpoint.pt is damaged (cut short, garbage): refused by name,
    nothing written. The valid bytes are a checkpoint of the loop's kind (a dict of tensors and numbers)."""
    run_dir, teacher_dir = tiny
    copy = tmp_path_factory.mktemp("ckpt") / "tiny"
    shutil.copytree(run_dir, copy)
    (copy / METRICS).unlink()
    path = copy / CHECKPOINT
    path.write_bytes(broken.data)
    with pytest.raises(KdxError) as e:  # none of these is the loop's checkpoint of this student
        run_fast(copy.parent, *TINY, f"cache_dir={teacher_dir.parent.parent}", name="tiny", resume=True)
    assert "--overwrite" in assert_named(e.value, path)
    assert not (copy / METRICS).exists() and not leftovers(copy)


# ---------------------------------------------------------------------------------------------- via the CLI


def kdx(*args, env_cache: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDX_CACHE": str(env_cache),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.run([sys.executable, "-c", "from kdx.cli import main; main()", *args], capture_output=True, text=True, env=env, timeout=600)


def test_cli_on_damaged_files(tiny, tmp_path):
    """The way a user meets a damaged run: `kdx compare RUN`, `kdx probe RUN`, `kdx run ... --resume` each
    exit 2 with one line naming the file and the fix, no traceback."""
    run_dir, teacher_dir = tiny
    cache = teacher_dir.parent.parent
    copy = tmp_path / "runs" / "tiny"
    shutil.copytree(run_dir, copy)
    metrics = copy / METRICS
    metrics.write_bytes(metrics.read_bytes()[:40])  # truncated, as a full disk or a kill of a non-kdx copy leaves it
    for args in (["compare", str(copy)], ["probe", str(copy), "--on", "test"]):
        r = kdx(*args, env_cache=cache)
        assert r.returncode == 2, (args, r.returncode, r.stderr[-2000:])
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert str(metrics) in r.stderr and "delete" in r.stderr
    metrics.unlink()
    config = copy / CONFIG
    config.write_bytes(config.read_bytes()[:30] + b"\xff\n: [")
    r = kdx("run", *FAST, *TINY, f"cache_dir={cache}", "--runs-dir", str(copy.parent), "--name", "tiny", "--resume",
            env_cache=cache)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert str(config) in r.stderr and "--overwrite" in r.stderr
    assert not (copy / METRICS).exists()
