"""Bad input is refused before any work, with a message naming the cause and the fix, through `kdx`."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import torch

from kdx.config import load_config
from kdx.errors import KdxError
from kdx.io import write_text
from kdx.models import build_model, load_weights
from kdx.run import validate


def kdx(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdx", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "KDX_CACHE": os.environ.get("KDX_CACHE", "")})


@pytest.mark.parametrize("override,needle", [
    ("distill.batch_size=0", "distill.batch_size=0 is out of range; it must be >= 1"),
    ("distill.samples=0", "distill.samples=0 is out of range"),
    ("distill.samples=-5", "distill.samples=-5 is out of range"),
    ("distill.temperature=0", "distill.temperature=0.0 is out of range; it must be > 0"),
    ("distill.lr=-0.1", "distill.lr=-0.1 is out of range; it must be > 0"),
    ("distill.alpha=1.5", "distill.alpha=1.5 is out of range; it must be in [0, 1]"),
    ("distill.switch_at=-0.1", "distill.switch_at=-0.1 is out of range; it must be in [0, 1]"),
    ("distill.momentum=1", "distill.momentum=1.0 is out of range; it must be in [0, 1)"),
    ("distill.schedule=linear", "it must be one of cosine, onecycle"),
    ("eval.n=0", "eval.n=0 is out of range"),
    ("distill.curve_every=-1", "distill.curve_every=-1 is out of range; it must be >= 0"),
    ("teacher.train.epochs=0", "teacher.train.epochs=0.0 is out of range; it must be > 0"),
    ("distill.samples=100", "smaller than one batch"),
])
def test_numeric_domains_checked_when_the_config_loads(override, needle):
    with pytest.raises(KdxError) as e:
        load_config(None, [override])
    assert needle in str(e.value)


def test_domains_also_checked_on_configs_built_in_code():
    import dataclasses

    cfg = load_config(None, [])
    with pytest.raises(KdxError, match="distill.temperature"):
        validate(dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, temperature=0.0)))


def test_cli_refuses_a_bad_value_without_a_traceback(tmp_path):
    r = kdx("run", "data.name=digits", "distill.batch_size=0", "--runs-dir", str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "distill.batch_size=0 is out of range" in r.stderr and not any(tmp_path.iterdir())  # nothing started


def test_yaml_syntax_error_is_named_not_a_traceback(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("distill:\n  samples: [1, 2\nsource: {name: train}\n")
    r = kdx("run", str(f), "--runs-dir", str(tmp_path / "runs"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(f) in r.stderr and "not valid YAML at line" in r.stderr
    f.write_text("- just\n- a list\n")
    with pytest.raises(KdxError, match="must be a mapping"):
        load_config(f)


def _digits():
    from kdx.data import load_dataset

    return load_dataset({"name": "digits"})


def test_random_bytes_as_a_checkpoint_name_the_file(tmp_path):
    junk = tmp_path / "teacher.pt"
    junk.write_bytes(os.urandom(4096))
    model = build_model({"name": "cnn", "channels": [8], "hidden": 16}, _digits(), "teacher.model", 0)
    with pytest.raises(KdxError) as e:
        load_weights(model, junk, "teacher.checkpoint")
    assert str(junk) in str(e.value) and "not a weights file" in str(e.value)
    r = kdx("teacher", "data.name=digits", f"teacher.checkpoint={junk}")
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(junk) in r.stderr


class Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/kdx-pwned",))


def test_a_checkpoint_holding_code_is_refused_not_run(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, evil)
    model = build_model({"name": "cnn", "channels": [8], "hidden": 16}, _digits(), "teacher.model", 0)
    if os.path.exists("/tmp/kdx-pwned"):
        os.remove("/tmp/kdx-pwned")
    with pytest.raises(KdxError, match="not a weights file"):
        load_weights(model, evil, "teacher.checkpoint")
    assert not os.path.exists("/tmp/kdx-pwned")


def test_a_checkpoint_of_another_model_names_the_mismatch(tmp_path):
    data = _digits()
    other = build_model({"name": "cnn", "channels": [8, 16], "hidden": 16}, data, "teacher.model", 0)
    f = tmp_path / "other.pt"
    torch.save(other.state_dict(), f)
    model = build_model({"name": "cnn", "channels": [8], "hidden": 16}, data, "teacher.model", 0)
    with pytest.raises(KdxError, match="does not fit the configured model"):
        load_weights(model, f, "teacher.checkpoint")
    load_weights(other, f, "teacher.checkpoint")  # and the right one loads


def test_student_init_starts_from_the_given_weights(tmp_path, digits_teacher):
    from conftest import run_fast
    from kdx.rundir import read_metrics

    cfg, data, _ = digits_teacher
    first = run_fast(tmp_path, "distill.samples=2000", name="first")
    init = tmp_path / "init.pt"
    torch.save(torch.load(first / "student.pt")["model"], init)
    again = run_fast(tmp_path, "distill.samples=128", "distill.lr=1e-6", f"student.init={init}", name="again")
    scratch = run_fast(tmp_path, "distill.samples=128", "distill.lr=1e-6", name="scratch")
    acc = lambda d: read_metrics(d)["eval"]["test"]["student_acc"]  # noqa: E731
    # over 6 seeds: |again - first| <= 0.006 (one step moves BatchNorm's running statistics a little), first
    # 0.73-0.84 against scratch 0.07-0.12
    assert abs(acc(again) - acc(first)) < 0.02 and acc(again) > acc(scratch) + 0.3


def test_files_are_written_with_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        import importlib

        import kdx.io

        importlib.reload(kdx.io)
        write_text(tmp_path / "page.html", "<html></html>")
        assert stat.S_IMODE((tmp_path / "page.html").stat().st_mode) == 0o644
    finally:
        os.umask(old)
        importlib.reload(kdx.io)
