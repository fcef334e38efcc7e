"""The `timm` model family: a small timm teacher (timm's own test_resnet) trained by kdx, its weights saved
to a local file and loaded back through pretrained_cfg_overlay (no download), distilled into a kdx student,
through `kdx run` as a user types it."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from kdx import config as kconfig
from kdx.cli import app
from kdx.data import load_dataset
from kdx.errors import KdxError
from kdx.models import build_model, predict

timm = pytest.importorskip("timm")

TEACHER = ["teacher.model.name=timm", "teacher.model.arch=test_resnet", "teacher.model.image_size=32"]
RUN = ["data.name=digits", "teacher.train.epochs=10", "teacher.train.lr=0.05", "student.model.channels=[8,16]",
       "student.model.hidden=32", "distill.samples=6000", "distill.batch_size=128", "eval.n=300",
       "eval.bootstrap=100", "eval.distributions=[test,uniform_noise]"]


def kdx_run(tmp_path, name, *args) -> dict:
    res = CliRunner().invoke(app, ["run", *RUN, *args, "--runs-dir", str(tmp_path), "--name", name])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return json.loads((tmp_path / name / "metrics.json").read_text())


def test_a_timm_teacher_from_a_local_checkpoint_is_distilled_into_a_kdx_student(tmp_path):
    from safetensors.torch import save_file

    trained = kdx_run(tmp_path, "trained", *TEACHER)  # no checkpoint: kdx trains the timm network
    assert trained["teacher"]["arch"] == "timm" and trained["teacher"]["test_acc"] > 0.8
    # its weights as timm names them (the wrapper's `net.` prefix and normalisation buffers off): a user's file
    state = torch.load(trained["teacher"]["checkpoint"], weights_only=True)["model"]
    weights = {k[len("net."):]: v.contiguous() for k, v in state.items() if k.startswith("net.")}  # channels_last
    save_file(weights, str(tmp_path / "teacher.safetensors"))

    metrics = kdx_run(tmp_path, "from-file", *TEACHER, f"teacher.model.checkpoint_file={tmp_path / 'teacher.safetensors'}")
    teacher = metrics["teacher"]
    assert teacher["checkpoint"] == str(tmp_path / "teacher.safetensors")  # used as it arrives, never trained here
    # the same network: its test accuracy within one test image of the trained one's
    assert teacher["test_acc"] == pytest.approx(trained["teacher"]["test_acc"], abs=1.5 / metrics["eval"]["test"]["n"])
    # the student learned from it: far above chance (10 classes), and agreeing with it on most test inputs
    assert metrics["eval"]["test"]["student_acc"] > 0.5 and metrics["eval"]["test"]["agreement"] > 0.5

    # the loaded network gives the trained one's logits, and features from forward_features
    cfg = kconfig.load_config(None, RUN + TEACHER + [f"teacher.model.checkpoint_file={tmp_path / 'teacher.safetensors'}"])
    data = load_dataset(cfg.data)
    loaded = build_model(cfg.teacher.model, data, "teacher.model", 7).eval()
    ref = build_model(kconfig.load_config(None, RUN + TEACHER).teacher.model, data, "teacher.model", 0)
    ref.load_state_dict(state)
    logits, feats = predict(loaded, data.x_test[:64], features=True)
    assert (logits - predict(ref.eval(), data.x_test[:64])).abs().max() < 1e-4
    net = loaded.net
    with torch.no_grad():
        z = net.forward_features(loaded.preprocess(data.x_test[:64].float() / 255))
        assert torch.allclose(feats, net.forward_head(z, pre_logits=True), atol=1e-5)
    assert feats.shape == (64, net.num_features)


def test_timm_refuses_an_unknown_arch_a_foreign_checkpoint_and_another_class_count(tmp_path):
    data = load_dataset({"name": "digits"})
    with pytest.raises(KdxError, match="model 'timm': unknown arch 'resnet_nope'"):
        build_model({"name": "timm", "arch": "resnet_nope"}, data, "teacher.model", 0)
    with pytest.raises(KdxError, match="num_classes=5, but dataset 'digits' has 10 classes"):
        build_model({"name": "timm", "arch": "test_resnet", "num_classes": 5}, data, "teacher.model", 0)
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(10, 7), "fc.bias": torch.zeros(10)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(KdxError, match="model 'timm': .*other.safetensors does not fit test_resnet"):
        build_model({"name": "timm", "arch": "test_resnet", "checkpoint_file": str(tmp_path / "other.safetensors")},
                    data, "teacher.model", 0)
