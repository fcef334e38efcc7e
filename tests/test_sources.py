import pytest
import torch

from kdx.data import load_dataset
from kdx.errors import KdxError
from kdx.registry import SOURCES, VIEWS


@pytest.fixture(scope="module")
def digits():
    return load_dataset({"name": "digits"})


def test_train_pool_visits_every_input_once_per_epoch(digits):
    src = SOURCES.build({"name": "train"}, "source", data=digits, seed=0)
    src.setup(torch.device("cpu"), None)
    n = len(digits.x_train)
    seen = torch.cat([src.indices(100) for _ in range((n + 99) // 100)])[:n]
    assert torch.equal(seen.sort().values, torch.arange(n))


def test_cached_logits_belong_to_the_exact_inputs(digits):
    calls = []

    def fake_teacher(x):  # logits that encode each input: its pixel sum
        calls.append(len(x))
        return x.float().flatten(1).sum(1, keepdim=True).repeat(1, 10)

    src = SOURCES.build({"name": "train"}, "source", data=digits, seed=0)
    src.setup(torch.device("cpu"), fake_teacher)
    b = src.batch(0, 64)
    assert calls == [len(digits.x_train)]  # computed once, for the whole pool
    assert torch.allclose(b.teacher_logits[:, 0], (b.x * 255).flatten(1).sum(1), atol=1e-3)
    aug = SOURCES.build({"name": "train", "augment": "flip_crop"}, "source", data=digits, seed=0)
    aug.setup(torch.device("cpu"), fake_teacher)
    assert aug.batch(0, 64).teacher_logits is None  # augmented views never get a cached output


@pytest.mark.parametrize("name", ["none", *VIEWS["image"].names()])
def test_augmentations_keep_shape_and_are_reproducible(digits, name):
    src = SOURCES.build({"name": "train", "augment": name}, "source", data=digits, seed=3)
    src.setup(torch.device("cpu"), None)
    a = src.batch(5, 32)
    src.cursor = 0
    b = src.batch(5, 32)
    assert a.x.shape == (32, *digits.input_shape) and torch.equal(a.x, b.x)
    assert 0 <= a.x.min() and a.x.max() <= 1
    if name in ("mixup", "cutmix"):
        assert a.y.shape == (32, 10) and torch.allclose(a.y.sum(1), torch.ones(32))


def test_noise_sources_fill_the_box_and_match_moments(digits):
    u = SOURCES.build({"name": "noise", "kind": "uniform"}, "source", data=digits, seed=0)
    x = u.batch(0, 4000).x
    assert x.min() >= digits.lo.min() and x.max() <= digits.hi.max() and x.std() > 0.25
    g = SOURCES.build({"name": "noise", "kind": "gaussian", "clip": False}, "source", data=digits, seed=0)
    x = g.batch(0, 20000).x
    assert abs(x.mean() - digits.mean.item()) < 0.01 and abs(x.std() - digits.std.item()) < 0.01
    assert not torch.equal(g.batch(1, 10).x, g.batch(2, 10).x)


def test_mixture_splits_batches_by_weight(digits):
    spec = {"name": "mixture", "components": [{"name": "train", "weight": 3}, {"name": "noise", "weight": 1}]}
    src = SOURCES.build(spec, "source", data=digits, seed=0)
    src.setup(torch.device("cpu"), None)
    for step in range(20):
        src.batch(step, 100)
    share = src.parts[0].cursor / 2000
    assert 0.7 < share < 0.8 and not src.has_labels


def test_downstream_refuses_a_shape_mismatch(digits):
    with pytest.raises(KdxError, match="inputs"):
        SOURCES.build({"name": "downstream", "dataset": "mnist1d", "args": {"num_samples": 200}}, "source",
                      data=digits, seed=0)


def test_unknown_augment_is_named(digits):
    with pytest.raises(KdxError, match="flipcrop.*flip_crop"):
        SOURCES.build({"name": "train", "augment": "flipcrop"}, "source", data=digits, seed=0)


def test_augment_resolves_once_into_a_view_of_the_data_modality(digits):
    src = SOURCES.build({"name": "train", "augment": "mixup", "mixup_alpha": 0.4}, "source", data=digits, seed=0)
    assert src.view.name == "mixup" and SOURCES.build({"name": "train"}, "source", data=digits, seed=0).view is None
    with pytest.raises(KdxError, match="augment 'word_dropout' does not apply to image data; valid for dataset "
                                       "'digits': none, cutmix, flip_crop, mixup .*'word_dropout' is for text data"):
        SOURCES.build({"name": "train", "augment": "word_dropout"}, "source", data=digits, seed=0)
    signal = load_dataset({"name": "mnist1d", "num_samples": 200})
    with pytest.raises(KdxError, match="does not apply to signal data; valid .*: none, cutmix, flip_crop, mixup"):
        SOURCES.build({"name": "downstream", "dataset": "self", "augment": "mlm_replace"}, "source", data=signal, seed=0)
    view = SOURCES.build({"name": "train", "augment": "flip_crop"}, "source", data=signal, seed=0).view
    x = signal.x_train[:16]
    a, _ = view(x, None, torch.Generator().manual_seed(1))
    b, _ = view(x, None, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)  # a 1-D shift, reproducible


def test_each_view_reads_its_own_settings(digits):
    """mixup_alpha moves mixup's weight; p (a text setting) changes nothing for an image view."""
    def first_batch(**settings):
        src = SOURCES.build({"name": "train", "augment": "mixup", **settings}, "source", data=digits, seed=3)
        src.setup(torch.device("cpu"), None)
        return src.batch(2, 64)

    base = first_batch()
    assert torch.equal(base.x, first_batch(p=0.9).x) and torch.equal(base.y, first_batch(top_k=3).y)
    assert not torch.equal(base.x, first_batch(mixup_alpha=0.05).x)
    # a downstream pool takes the same settings and the same view (unlabeled: y stays None)
    down = SOURCES.build({"name": "downstream", "dataset": "self", "augment": "mixup", "mixup_alpha": 0.05}, "source",
                         data=digits, seed=3)
    assert down.view.name == "mixup" and down.view(digits.x_train[:8].float() / 255, None,
                                                   torch.Generator().manual_seed(0))[1] is None


def test_kdx_list_shows_the_views_of_each_modality():
    from typer.testing import CliRunner

    from kdx.cli import app

    out = CliRunner().invoke(app, ["list"]).stdout
    for modality, reg in VIEWS.items():
        section = out.split(f"{modality} views (source.augment):\n")[1].split(":\n")[0]
        assert {line.split()[0] for line in section.splitlines() if line.startswith("  ")} >= set(reg.names())
    assert set(VIEWS["text"].names()) == {"mlm_replace", "word_dropout", "word_swap"}
    assert set(VIEWS["image"].names()) == set(VIEWS["signal"].names()) == {"cutmix", "flip_crop", "mixup"}
