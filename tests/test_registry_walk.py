"""Every registered entry is reachable the way a user reaches it: named in a YAML file and on the command
line, validated before any work; every model trains as teacher and as student in a tiny `kdx run`."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kdx.cli import app
from kdx.config import load_config
from kdx.errors import KdxError
from kdx.registry import ALL, DATASETS, HELDOUT, LOSSES, MODELS, SOURCES, TRACKERS
from kdx.run import validate

# Arguments an entry cannot do without (everything else takes the entry's defaults).
REQUIRED = {
    ("datasets", "hf"): {"path": "/nonexistent/saved-dataset"},
    ("sources", "mixture"): {"components": [{"name": "train", "weight": 1}, {"name": "noise", "weight": 1}]},
    ("models", "hf"): {"path": "/nonexistent/hf-model"},
    ("models", "torchvision"): {"arch": "resnet18"},
    ("models", "timm"): {"arch": "test_resnet"},
    ("models", "sklearn_file"): {"path": "/nonexistent/model.skops"},
    ("models", "ensemble"): {"members": [{"name": "mlp"}, {"name": "sklearn"}]},
}
SECTION = {"datasets": "data", "models": "student.model", "sources": "source"}  # spec sections
# models that only teach (black boxes, ensembles): selected as teacher.model; tests/test_tabular.py runs each
TEACHER_ONLY = {"sklearn", "sklearn_file", "tfidf_logreg", "ensemble"}


def section_of(kind: str, name: str) -> str:
    return "teacher.model" if kind == "models" and name in TEACHER_ONLY else SECTION[kind]


def entries():
    return [(kind, name) for kind, reg in ALL.items() for name in reg.names()]


def as_yaml_and_overrides(kind: str, name: str) -> tuple[dict, list[str]]:
    """The same selection as a YAML mapping and as dotted command-line overrides."""
    if kind in SECTION:
        spec = {"name": name, **REQUIRED.get((kind, name), {})}
        section = section_of(kind, name)
        nested: dict = spec
        for part in reversed(section.split(".")):
            nested = {part: nested}
        overrides = [f"{section}.{k}={json.dumps(v)}" for k, v in spec.items()]
        return nested, overrides
    if kind == "losses":
        return {"distill": {"loss": name}}, [f"distill.loss={name}"]
    if kind == "trackers":
        return {"report": [name]}, [f"report=[{name}]"]
    dist = "downstream:fashion_mnist_upper" if name == "downstream" else name
    return {"eval": {"distributions": [dist]}}, [f"eval.distributions=[{dist}]"]


@pytest.mark.parametrize("kind,name", entries())
def test_every_entry_selected_from_yaml_and_command_line(kind, name, tmp_path):
    mapping, overrides = as_yaml_and_overrides(kind, name)
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(mapping))
    for cfg in (load_config(f), load_config(None, overrides)):
        if kind in SECTION:
            obj = cfg
            for part in section_of(kind, name).split("."):
                obj = getattr(obj, part) if not isinstance(obj, dict) else obj[part]
            registry = {"datasets": DATASETS, "models": MODELS, "sources": SOURCES}[kind]
            assert obj["name"] == name and REQUIRED.get((kind, name), {}).items() <= obj.items()
            assert set(obj) - {"name"} <= set(registry.get(name).config_params())  # no other entry's args leak in
            registry.validate(obj, section_of(kind, name))
        elif kind == "losses":
            assert cfg.distill.loss == name and LOSSES.get(name).name == name
        elif kind == "trackers":  # validated with its package, or refused naming the pip extra
            assert cfg.report == [name]
            if importlib.util.find_spec(TRACKERS.get(name).fn.package) is None:
                with pytest.raises(KdxError, match=rf"pip install 'kdx\[{TRACKERS.get(name).fn.extra}\]'"):
                    validate(cfg)
                continue
        else:
            assert HELDOUT.get(cfg.eval.distributions[0].split(":")[0].split("-")[0]).name == name
        if kind not in ("datasets", "models") or REQUIRED.get((kind, name)) is None:
            if kind != "datasets":
                validate(cfg)


def test_the_walk_covers_every_registry():
    kinds = {kind for kind, _ in entries()}
    assert kinds == {"datasets", "models", "sources", "losses", "held-out", "trackers"}
    assert len(entries()) == sum(len(r.names()) for r in ALL.values())


TINY = ["data.name=digits", "teacher.train.epochs=1", "teacher.train.batch_size=128", "distill.samples=256",
        "distill.batch_size=128", "eval.n=100", "eval.bootstrap=50", "eval.distributions=[test]",
        "distill.log_every=1"]
SMALL_CNN = ["channels=[8,16]", "hidden=32"]
IMAGE_MODELS = {  # each model's smallest sensible size on 8x8 digits
    "cnn": SMALL_CNN, "mlp": ["hidden=[32]"], "resnet18": [], "mobilenet_v3_small": ["width_mult=0.25"],
    "vit": ["patch_size=4", "hidden_size=32", "layers=1", "heads=2", "mlp_size=64"],
    "torchvision": ["arch=mobilenet_v3_small", "image_size=32", "normalize=data"],  # no weights: trained here
    "timm": ["arch=test_resnet", "image_size=32"],  # timm's own tiny test network, untrained: trained here (kdx[timm])
}


def kdx_run(tmp_path, name: str, overrides: list[str]):
    result = CliRunner().invoke(app, ["run", *TINY, *overrides, "--runs-dir", str(tmp_path), "--name", name])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads((tmp_path / name / "metrics.json").read_text())


def test_every_trainable_model_has_a_tiny_run_here():
    from test_lm import LM_MODELS  # the causal LMs' tiny runs are in tests/test_lm.py
    from test_text import TEXT_MODELS  # the text models' tiny runs are in tests/test_text.py

    # `hf` needs a save_pretrained folder: tests/test_own_teacher.py runs it through `kdx run`
    assert set(IMAGE_MODELS) | set(TEXT_MODELS) | set(LM_MODELS) | {"hf"} | TEACHER_ONLY >= set(MODELS.names()), \
        "a new model needs a tiny run"


@pytest.mark.parametrize("model", sorted(IMAGE_MODELS))
def test_model_as_teacher_and_as_student(model, tmp_path):
    if model == "timm":
        pytest.importorskip("timm")
    args = IMAGE_MODELS[model]
    as_teacher = kdx_run(tmp_path, "t", [f"teacher.model.name={model}", *(f"teacher.model.{a}" for a in args),
                                         "student.model.name=cnn", *(f"student.model.{a}" for a in SMALL_CNN)])
    as_student = kdx_run(tmp_path, "s", [f"student.model.name={model}", *(f"student.model.{a}" for a in args),
                                         "teacher.model.name=cnn", *(f"teacher.model.{a}" for a in SMALL_CNN)])
    assert as_teacher["teacher"]["arch"] == model and as_student["student"]["arch"] == model
    for m in (as_teacher, as_student):
        assert m["eval"]["test"]["n"] > 0 and m["train"]["steps"] == 2
    # the teacher really trained (one epoch, 12 steps): its loss fell (first three minus last three steps'
    # losses: 0.45 or more over 6 teacher seeds for each model, vit the least)
    log = Path(as_teacher["teacher"]["checkpoint"]).parent / "log.jsonl"
    losses = [json.loads(line)["loss"] for line in log.read_text().splitlines()]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3]), losses
