"""Your own teacher: a save_pretrained transformers classifier (`hf`) or torchvision weights
(`torchvision`) behind kdx's model contract, checked against the libraries' own pipelines."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdx.data.base import Dataset, model_input
from kdx.errors import KdxError
from kdx.models.hf import match_labels
from kdx.models.torchvision_pretrained import expected_input
from kdx.registry import DATASETS, MODELS

transformers = pytest.importorskip("transformers")
torchvision = pytest.importorskip("torchvision")

PERM = list(range(10))
random.Random(0).shuffle(PERM)
SHUFFLED = {i: str(PERM[i]) for i in range(10)}  # the model's label i is digit PERM[i]
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def digits():
    return DATASETS.build({"name": "digits"}, "data")


def build(data, **spec):
    return MODELS.build(spec, "teacher.model", data=data).eval()


def save_vit(path, id2label, size=16, processor=True, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.ViTConfig(image_size=size, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32, id2label=id2label,
                                 label2id={v: k for k, v in id2label.items()})
    model = transformers.ViTForImageClassification(cfg).eval()
    model.save_pretrained(path)
    if processor:  # resize 8 -> size, and a normalisation that differs per channel
        transformers.ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5, 0.4, 0.3],
                                       image_std=[0.2, 0.25, 0.3]).save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vit")
    return path, save_vit(path, SHUFFLED)


def processor_logits(path, model, x01):
    """The transformers pipeline itself: the saved processor on RGB pixels (0..255), then the model."""
    proc = transformers.AutoImageProcessor.from_pretrained(path, local_files_only=True)
    pixels = proc(images=list(x01.repeat(1, 3, 1, 1) * 255), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixel_values=pixels).logits


# ---------------------------------------------------------------- hf

def test_hf_vit_matches_processor_and_model_in_dataset_order(digits, vit_dir):
    path, raw = vit_dir
    wrapped = build(digits, name="hf", path=str(path))
    x = model_input(digits.x_test[:12])
    with torch.no_grad():
        logits, feats = wrapped(x, return_features=True)
    label2id = {v: k for k, v in SHUFFLED.items()}
    expected = processor_logits(path, raw, x)[:, [label2id[c] for c in digits.classes]]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits, processor_logits(path, raw, x), atol=1e-3)  # the shuffle did matter
    # features: the classifier's input (the [CLS] token after the final layer norm)
    assert feats.shape == (12, 16)
    torch.testing.assert_close(raw.classifier(feats)[:, [label2id[c] for c in digits.classes]], logits)
    with torch.no_grad():  # the same call under the same grad mode (attention picks its kernel by it)
        assert torch.equal(wrapped(x), logits)  # the same logits without features
    assert wrapped.arrives_trained and len(wrapped.weights_digest) == 64


@pytest.mark.parametrize("kind", ["resnet", "convnext"])
def test_hf_cnn_with_resize_and_crop(digits, tmp_path, kind):
    """ConvNeXt's processor (used by HF ResNets too): short side to 16 / 0.875 = 18, bicubic, crop 16."""
    torch.manual_seed(1)
    labels = {i: str(i) for i in range(10)}
    if kind == "resnet":
        cfg = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 12], depths=[1, 1],
                                        layer_type="basic", id2label=labels, label2id={v: k for k, v in labels.items()})
        raw = transformers.ResNetForImageClassification(cfg).eval()
    else:
        cfg = transformers.ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[8, 12], depths=[1, 1], id2label=labels,
                                          label2id={v: k for k, v in labels.items()})
        raw = transformers.ConvNextForImageClassification(cfg).eval()
    raw.save_pretrained(tmp_path)
    transformers.ConvNextImageProcessor(size={"shortest_edge": 16}, crop_pct=0.875,
                                        image_mean=IMAGENET[0], image_std=IMAGENET[1]).save_pretrained(tmp_path)
    wrapped = build(digits, name="hf", path=str(tmp_path))
    assert wrapped.prep.resize == ("shortest", 18, 0) and wrapped.prep.crop == (16, 16)
    x = model_input(digits.x_test[:6])
    with torch.no_grad():
        logits, feats = wrapped(x, return_features=True)
    torch.testing.assert_close(logits, processor_logits(tmp_path, raw, x), atol=1e-4, rtol=1e-4)
    assert feats.shape == (6, 12)


@pytest.mark.parametrize("processor", ["ViTImageProcessor", "CLIPImageProcessor", "DeiTImageProcessor",
                                       "ConvNextImageProcessor", "LevitImageProcessor", "EfficientNetImageProcessor",
                                       "MobileViTImageProcessor", "MobileNetV2ImageProcessor"])
def test_processor_families_reproduced(digits, processor):
    """kdx's torch preprocessing gives the processor's own values (default sizes 224-384, crops, BGR, offsets)."""
    from torch import nn

    from kdx.models.hf import check_against_processor, processor_preprocess
    from kdx.models.pretrained import PretrainedClassifier

    proc = getattr(transformers, processor)()
    model = PretrainedClassifier(nn.Identity(), processor_preprocess(proc, 3), 1, None)
    assert check_against_processor(model, proc, digits) is None
    wrong = PretrainedClassifier(nn.Identity(), dataclasses.replace(model.prep, mean=(0.4, 0.4, 0.4)), 1, None)
    assert "away from the processor's" in check_against_processor(wrong, proc, digits)
    # a network whose head was not found still gives logits; features are refused with the reason
    headless = PretrainedClassifier(nn.Flatten(), model.prep, 1, None, "no nn.Linear with 10 outputs", name="hf")
    x = model_input(digits.x_test[:1])
    assert headless(x).shape[0] == 1
    with pytest.raises(KdxError, match="cannot give penultimate features: no nn.Linear with 10 outputs"):
        headless(x, return_features=True)


def test_hf_gradients_reach_the_inputs(digits, vit_dir):
    """Inversion and Langevin synthesis differentiate the teacher with respect to its raw inputs."""
    wrapped = build(digits, name="hf", path=str(vit_dir[0]))
    x = model_input(digits.x_test[:3]).requires_grad_(True)
    wrapped(x).logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape and x.grad.abs().sum() > 0


def test_label_matching_rules():
    # case, spaces and underscores are ignored; extra model labels are dropped
    assert match_labels(["Ankle boot", "T-shirt/top"], ["bag", "t-shirt/top", "ANKLE_BOOT "]) == [2, 1]
    # label_map first (dataset class -> model label), the rest by name
    assert match_labels(["0", "1", "cat"], ["Cat", "one", "zero"], {"0": "zero", 1: "one"}) == [2, 1, 0]
    with pytest.raises(KdxError) as e:
        match_labels(["0", "1", "2"], ["zero", "one", "two"], {"0": "zero"})
    msg = str(e.value)
    assert "No label for '1', '2'" in msg and "'zero', 'one', 'two'" in msg and "teacher.model.label_map" in msg
    with pytest.raises(KdxError, match="Several labels match 'a'"):
        match_labels(["a"], ["A", "a_"])
    with pytest.raises(KdxError, match="both map to"):
        match_labels(["a", "b"], ["x", "y"], {"a": "x", "b": "x"})
    with pytest.raises(KdxError, match=r"label_map names \['dog'\], which are not classes"):
        match_labels(["a"], ["a"], {"dog": "a"})


def test_hf_label_mismatch_names_labels_and_label_map(digits, tmp_path):
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    raw = save_vit(tmp_path, {i: w for i, w in enumerate(reversed(words))})
    with pytest.raises(KdxError) as e:
        build(digits, name="hf", path=str(tmp_path))
    msg = str(e.value)
    assert "No label for '0', '1'" in msg and "'nine', 'eight'" in msg and "teacher.model.label_map" in msg
    wrapped = build(digits, name="hf", path=str(tmp_path), label_map={str(i): w for i, w in enumerate(words)})
    x = model_input(digits.x_test[:4])
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), processor_logits(tmp_path, raw, x).flip(1), atol=1e-5, rtol=1e-5)


def test_hf_bad_folders(digits, tmp_path):
    with pytest.raises(KdxError) as e:
        build(digits, name="hf", path=str(tmp_path / "missing"))
    assert str(tmp_path / "missing") in str(e.value) and "config.json" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(KdxError) as e:
        build(digits, name="hf", path=str(tmp_path / "empty"))
    assert str(tmp_path / "empty" / "config.json") in str(e.value)
    with pytest.raises(KdxError, match=r"local folders only.*save_pretrained"):
        build(digits, name="hf", path="google/vit-base-patch16-224")
    base = tmp_path / "base"  # a backbone saved without its classification head: refused, not given a random head
    transformers.ViTModel(transformers.ViTConfig(image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=32)).save_pretrained(base)
    with pytest.raises(KdxError, match=r"no trained weights for classifier.bias, classifier.weight"):
        build(digits, name="hf", path=str(base))
    with pytest.raises(KdxError, match="model 'hf' needs images.*holds signals: use 'cnn' or 'mlp'"):
        build(DATASETS.build({"name": "mnist1d", "num_samples": 200}, "data"), name="hf", path=str(tmp_path / "x"))
    ids = torch.randint(1, 20, (8, 6))  # text gets pointed at the text models, not at cnn or mlp
    text = Dataset("ids", ids, torch.arange(8) % 2, ids, torch.arange(8) % 2, ["a", "b"], modality="text", vocab_size=20)
    for name, args in (("hf", {"path": str(tmp_path / "x")}), ("torchvision", {"arch": "resnet18"}), ("resnet18", {})):
        with pytest.raises(KdxError, match=f"model '{name}' needs images.*holds text: use a text model: bert"):
            build(text, name=name, **args)


def test_hf_without_processor_resizes_to_config(digits, tmp_path, capsys):
    raw = save_vit(tmp_path, {i: str(i) for i in range(10)}, processor=False)
    wrapped = build(digits, name="hf", path=str(tmp_path))
    assert "no preprocessor_config.json" in capsys.readouterr().err
    x = model_input(digits.x_test[:4])
    z = F.interpolate(x.repeat(1, 3, 1, 1), size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), raw(pixel_values=z).logits, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- torchvision

@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    torch.manual_seed(0)
    net = torchvision.models.get_model("resnet18", num_classes=10)
    path = tmp_path_factory.mktemp("tv") / "resnet18.pth"
    torch.save(net.state_dict(), path)
    return path, net.eval()


def test_torchvision_matches_raw_model(digits, resnet18_file):
    path, raw = resnet18_file
    wrapped = build(digits, name="torchvision", arch="resnet18", weights=str(path), image_size=32)
    x = model_input(digits.x_test[:8])
    z = F.interpolate(x.repeat(1, 3, 1, 1), size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    z = (z - torch.tensor(IMAGENET[0]).view(1, 3, 1, 1)) / torch.tensor(IMAGENET[1]).view(1, 3, 1, 1)
    with torch.no_grad():
        logits, feats = wrapped(x, return_features=True)
        torch.testing.assert_close(logits, raw(z), atol=1e-5, rtol=1e-5)
        assert feats.shape == (8, 512)
        torch.testing.assert_close(raw.fc(feats), logits)  # features are the final layer's input
    assert wrapped.arrives_trained
    assert wrapped.weights_digest == hashlib.sha256(path.name.encode() + b"\0" + path.read_bytes()).hexdigest()


def test_torchvision_errors(digits, resnet18_file, tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(KdxError) as e:
        build(digits, name="torchvision", arch="resnet18", weights=str(junk))
    assert str(junk) in str(e.value) and "not a weights file" in str(e.value)

    seven = tmp_path / "seven.pth"
    torch.save(torchvision.models.get_model("resnet18", num_classes=7).state_dict(), seven)
    with pytest.raises(KdxError) as e:
        build(digits, name="torchvision", arch="resnet18", weights=str(seven))
    assert "classifies 7 classes" in str(e.value) and "has 10" in str(e.value)

    with pytest.raises(KdxError) as e:
        build(digits, name="torchvision", arch="resnet181", weights=str(resnet18_file[0]))
    assert "unknown arch 'resnet181'" in str(e.value) and "resnet18" in str(e.value)
    with pytest.raises(KdxError, match="has no 'classifier.3.weight'"):
        build(digits, name="torchvision", arch="mobilenet_v3_small", weights=str(resnet18_file[0]))
    with pytest.raises(KdxError, match="does not exist"):
        build(digits, name="torchvision", arch="resnet18", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(KdxError, match="normalize must be one of"):
        build(digits, name="torchvision", arch="resnet18", normalize="cifar")


def test_torchvision_defaults_and_untrained(digits):
    assert expected_input("resnet18")[:2] == (224, "bilinear")
    assert expected_input("inception_v3")[0] == 299 and expected_input("efficientnet_b7")[:2] == (600, "bicubic")
    wrapped = build(digits, name="torchvision", arch="squeezenet1_1", image_size=48, normalize="data")
    assert wrapped.prep.resize == ("exact", 48, 48) and not wrapped.arrives_trained
    with torch.no_grad():
        logits, feats = wrapped(model_input(digits.x_test[:2]), return_features=True)
    assert logits.shape == (2, 10) and feats.shape[0] == 2
    torch.testing.assert_close(wrapped.mean, digits.mean.repeat(3))


# ---------------------------------------------------------------- end to end

def test_cli_run_with_own_hf_teacher(digits, vit_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from conftest import FAST
    from kdx.cli import app

    monkeypatch.setenv("KDX_CACHE", str(tmp_path / "cache"))
    path, raw = vit_dir
    overrides = [o for o in FAST if not o.startswith(("teacher.model.", "distill.samples", "eval.n", "eval.bootstrap"))]
    overrides += ["teacher.model.name=hf", f"teacher.model.path={path}", "teacher.train.epochs=0.2",
                  "distill.samples=1500", "eval.n=100", "eval.bootstrap=50"]
    result = CliRunner().invoke(app, ["run", *overrides, "--runs-dir", str(tmp_path / "runs"), "--name", "own"])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    metrics = json.loads((tmp_path / "runs" / "own" / "metrics.json").read_text())
    assert metrics["teacher"]["arch"] == "hf" and metrics["eval"]["test"]["n"] > 0
    # the teacher is the saved model as is: never trained, its test accuracy the pipeline's own
    assert not list((tmp_path / "cache").rglob("recipe.json")), "kdx trained (fine-tuned) a teacher that arrived trained"
    label2id = {v: k for k, v in SHUFFLED.items()}
    x = model_input(digits.x_test)
    ref = processor_logits(path, raw, x)[:, [label2id[c] for c in digits.classes]]
    top2 = ref.topk(2, 1).values
    # kdx's pipeline and the processor's agree to ~1e-5 (above): only a row whose top two logits lie closer
    # than 1e-3 may be predicted differently (the untrained ViT has near-ties), so the accuracies agree up to those
    near_ties = int((top2[:, 0] - top2[:, 1] < 1e-3).sum())
    acc = float((ref.argmax(1) == digits.y_test).float().mean())
    assert abs(metrics["teacher"]["test_acc"] - acc) <= near_ties / len(ref) + 1e-9, (near_ties, acc)


def test_study_with_a_save_pretrained_teacher_on_an_image_folder(tmp_path):
    """The README's path, as a user types it: the example writes an image folder and a HF ViT, then
    `kdx study configs/studies/own_teacher.yaml` (shrunk by command-line overrides) runs end to end."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    made = subprocess.run([sys.executable, str(root / "examples" / "own_teacher.py"), "--tiny"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=600)
    assert made.returncode == 0, made.stderr[-2000:]
    assert (tmp_path / "runs/own-teacher/hf-vit/config.json").exists()
    study = subprocess.run([sys.executable, "-m", "kdx", "study", str(root / "configs/studies/own_teacher.yaml"),
                            "seeds=[0]", "probe_source_n=300",
                            "overrides=[distill.samples=512,eval.n=100,eval.bootstrap=50]"],
                           cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
    assert study.returncode == 0, study.stderr[-3000:]
    summary = (tmp_path / "runs/studies/own_teacher/summary.md").read_text()
    for label in ("| train |", "| train-mixup |", "| uniform |", "| train+uniform |"):
        assert label in summary
    metrics = json.loads((tmp_path / "runs/studies/own_teacher/runs/train-s0/metrics.json").read_text())
    assert metrics["teacher"]["arch"] == "hf" and metrics["teacher"]["test_acc"] > 0.3  # a trained ViT, not retrained
