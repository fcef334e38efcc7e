"""The public Python API: user modules (no kdx wrapper) as teacher and student, on user tensors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import kdx
from conftest import FAST, run_fast
from kdx.errors import KdxError
from kdx.rundir import read_metrics

ROOT = Path(__file__).resolve().parents[1]
EVAL = {"eval.n": 300, "eval.bootstrap": 200, "eval.distributions": ["test", "uniform_noise"]}


@pytest.fixture(scope="module")
def digits():
    from kdx.data import load_dataset

    d = load_dataset({"name": "digits"})
    return kdx.data.from_tensors(d.x_train, d.y_train, d.x_test, d.y_test, classes=d.classes)


class Net(nn.Module):
    """A plain module: conv features, a 2x2 average pool, a linear head; no kdx base class."""

    def __init__(self, width: int, classes: int = 10):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                                  nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x):
        return self.fc(self.avgpool(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def user_teacher(digits):
    torch.manual_seed(0)
    net = Net(32)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = digits.x_train.float() / 255, digits.y_train
    for _ in range(12):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    return net.eval()


def test_user_modules_as_teacher_and_student(digits, user_teacher, tmp_path):
    torch.manual_seed(1)
    result = kdx.distill_student(user_teacher, Net(16), digits, source="train", samples=16000, batch_size=128,
                                 lr=0.05, run_dir=tmp_path / "run", **EVAL)
    test = result.metrics["eval"]["test"]
    # over 6 seeds of both modules: teacher 0.92-0.96, student 0.72-0.86, agreement 0.74-0.91
    assert test["teacher_acc"] > 0.85 and test["student_acc"] > 0.6 and test["agreement"] > 0.6
    assert read_metrics(tmp_path / "run") == result.metrics  # the run directory holds the same
    assert isinstance(result.student, nn.Module) and "distribution" in result.table()
    # the student trained in place: the user's module is the one that learned
    logits = result.student(digits.x_test[:50].float() / 255)
    assert (logits.argmax(1) == digits.y_test[:50]).float().mean() > 0.5  # 0.86-0.96 over 6 seeds


def test_evaluate_two_user_modules(digits, user_teacher):
    same = kdx.evaluate(user_teacher, user_teacher, digits, ["test"], n=200, bootstrap=100)["test"]
    assert same["agreement"] == 1.0 and abs(same["kl_teacher_student"]) < 1e-9
    other = kdx.evaluate(user_teacher, Net(4), digits, ["test"], n=200, bootstrap=100)["test"]
    assert other["agreement"] < 0.5  # an untrained module: 0.10 over 6 seeds


def test_feature_hook_feeds_the_probes(digits, user_teacher, tmp_path):
    result = kdx.distill_student(user_teacher, Net(8), digits, samples=2000, batch_size=128,
                                 teacher_features="avgpool", student_features="avgpool", **EVAL)
    _, feats = result.teacher.model(digits.x_test[:5].float() / 255, return_features=True)
    assert feats.shape == (5, 4 * 32)  # the avgpool output, flattened
    summary = kdx.probe(result, out=tmp_path / "probed", on=["test"], regions=4, source_n=500, resamples=50)
    assert (tmp_path / "probed" / "probes" / "deviation.json").exists() and "seconds" in summary


def test_wrong_feature_layer_names_the_layers(digits, user_teacher):
    with pytest.raises(KdxError) as e:
        kdx.distill_student(user_teacher, Net(8), digits, samples=256, teacher_features="pool5")
    assert "pool5" in str(e.value) and "avgpool" in str(e.value) and "conv.0" in str(e.value)


def test_output_that_is_not_n_by_classes_is_refused(digits, user_teacher):
    with pytest.raises(KdxError, match=r"logits of shape \(N, 10\).*\(2, 7\)"):
        kdx.distill_student(user_teacher, Net(8, classes=7), digits, samples=256)


def test_inputs_that_do_not_fit_the_module_are_refused(digits, user_teacher):
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(100, 10))  # digits are 64 values
    with pytest.raises(KdxError, match=r"fails on the data's inputs, shape \(2, 1, 8, 8\)"):
        kdx.distill_student(user_teacher, wrong, digits, samples=256)


def test_bad_tensors_are_refused():
    x, y = torch.rand(10, 1, 4, 4), torch.randint(0, 3, (10,))
    with pytest.raises(KdxError, match="unsqueeze"):  # (N, D) floats are a table (tests/test_tabular.py); (N,) is nothing
        kdx.data.from_tensors(torch.rand(10), y, x, y)
    with pytest.raises(KdxError, match="labels must lie in 0..1"):
        kdx.data.from_tensors(x, y, x, y, classes=["a", "b"])
    bad = x.clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(KdxError, match="row 3"):
        kdx.data.from_tensors(bad, y, x, y)


def test_a_python_run_equals_the_same_cli_run(digits_teacher, tmp_path):
    """Same data, teacher, student init, config and seed: the same metrics, bit for bit."""
    from kdx.data import load_dataset
    from kdx.models import build_model

    cfg, data, teacher = digits_teacher
    cli = read_metrics(run_fast(tmp_path, "distill.samples=2000", name="cli"))
    student = build_model(cfg.student.model, data, "student.model", 0)
    result = kdx.distill_student(teacher.model, student, load_dataset({"name": "digits"}), source="train", seed=0,
                                 **{k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in FAST + ["distill.samples=2000"])
                                    if k.startswith(("distill.", "eval."))})
    assert result.metrics["eval"] == cli["eval"]


def test_the_example_runs():
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "distill_my_teacher.py"), "--tiny"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "distribution" in r.stdout and "uniform_noise" in r.stdout
