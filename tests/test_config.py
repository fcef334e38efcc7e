import pytest

from kdx.config import load_config
from kdx.errors import KdxError
from kdx.run import validate


def test_yaml_and_dotted_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("distill:\n  samples: 1000\nsource:\n  name: train\n  augment: mixup\n")
    cfg = load_config(f, ["distill.lr=0.3", "seed=7"])
    assert (cfg.distill.samples, cfg.distill.lr, cfg.seed) == (1000, 0.3, 7)
    assert cfg.source == {"name": "train", "augment": "mixup"}
    assert cfg.distill.batch_size == 256  # typed default kept


def test_unknown_key_names_key_file_and_valid_keys(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("distill:\n  sampels: 1000\n")
    with pytest.raises(KdxError) as e:
        load_config(f)
    msg = str(e.value)
    assert "sampels" in msg and str(f) in msg and "samples" in msg and "batch_size" in msg


def test_wrong_type_is_refused(tmp_path):
    with pytest.raises(KdxError, match="distill.samples"):
        load_config(None, ["distill.samples=lots"])


def test_override_without_equals_sign():
    with pytest.raises(KdxError, match="key=value"):
        load_config(None, ["source.name"])


def test_renaming_an_entry_drops_the_old_entrys_args(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("source:\n  name: train\n  augment: flip_crop\n")
    cfg = load_config(f, ["source.name=noise", "source.kind=gaussian"])
    assert cfg.source == {"name": "noise", "kind": "gaussian"}
    assert validate(cfg)["clip"] is True  # the entry's default filled in


def test_registry_args_validated_before_work():
    cfg = load_config(None, ["source.name=noise", "source.flavour=pink"])
    with pytest.raises(KdxError) as e:
        validate(cfg)
    assert "flavour" in str(e.value) and "kind" in str(e.value)
    cfg = load_config(None, ["source.name=mixup"])
    with pytest.raises(KdxError, match="unknown source 'mixup'.*train"):
        validate(cfg)
    cfg = load_config(None, ["eval.distributions=[test,blurr-2]"])
    with pytest.raises(KdxError, match="blurr"):
        validate(cfg)
    cfg = load_config(None, ["source.name=noise", "source.clip=maybe"])
    with pytest.raises(KdxError, match="clip"):
        validate(cfg)
