import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdx.data import load_dataset
from kdx.errors import KdxError
from kdx.eval import heldout
from kdx.registry import ALL, DATASETS
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.parametrize("name", ["test", "train_subset", "uniform_noise"] +
                         [f"{c}-{s}" for c in ("gaussian_noise", "blur", "contrast", "rotation", "translation",
                                               "negative") for s in (1, 3)])
def test_heldout_inputs_are_finite_fixed_and_shaped(name):
    data = load_dataset({"name": "digits"})
    # made twice (load caches per dataset object, load_dataset per process: so on a freshly built one), the
    # same code on the same shapes
    a, b = heldout.load(name, data, 100, 0), heldout.load(name, DATASETS.build({"name": "digits"}, "data"), 100, 0)
    assert a.x.shape[1:] == data.input_shape and torch.isfinite(a.x.float()).all()
    assert a.x is not b.x and torch.equal(a.x, b.x)  # a fixed set: the teacher-output cache keys on it
    if name not in ("test", "train_subset", "uniform_noise"):
        assert a.x.shape[0] == 100 and a.y is not None
        clean = heldout.load("test", data, 100, 0)
        assert not torch.equal(a.x, clean.x.float()[: len(a.x)] / 255)


def test_corruption_severity_grows_the_shift():
    data = load_dataset({"name": "digits"})
    x0, _, _ = heldout._test_subset(data, 200, 0)
    dist = [(heldout.load(f"gaussian_noise-{s}", data, 200, 0).x - x0).abs().mean() for s in (1, 2, 3)]
    assert dist[0] < dist[1] < dist[2]


def test_bad_severity_and_signal_rotation_are_named():
    with pytest.raises(KdxError, match="severity"):
        heldout.load("blur-7", load_dataset({"name": "digits"}), 10, 0)
    with pytest.raises(KdxError, match="rotation.*signals"):
        heldout.load("rotation-1", load_dataset({"name": "mnist1d", "num_samples": 200}), 10, 0)


@pytest.mark.skipif(not FMNIST.exists(), reason="needs Debian's dataset-fashion-mnist (installed by .ci/run)")
def test_fashion_mnist_downstream_sets():
    base = load_dataset({"name": "fashion_mnist"})
    assert base.x_train.shape == (60000, 1, 28, 28) and base.x_train.dtype == torch.uint8
    upper = load_dataset({"name": "fashion_mnist_upper"})
    assert set(upper.y_test.unique().tolist()) == {0, 2, 4, 6} and len(upper.x_test) == 4000
    shifted = load_dataset({"name": "fashion_mnist_shifted"})
    assert shifted.x_test.shape == base.x_test.shape and torch.equal(shifted.y_test, base.y_test)
    diff = (shifted.x_test.float() - base.x_test.float()).abs().mean()
    assert diff > 10  # visibly rotated and blurred, not a copy


def test_kdx_list_shows_every_registry():
    out = subprocess.run([sys.executable, "-m", "kdx", "list"], capture_output=True, text=True, check=True).stdout
    for kind, reg in ALL.items():
        assert f"{kind}:" in out
        for name in reg.names():
            assert f"  {name} " in out


def test_cli_bad_key_exits_2_with_message(tmp_path):
    out = subprocess.run([sys.executable, "-m", "kdx", "run", "distill.sampels=5", "--runs-dir", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "sampels" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("name", ["mnist1d", "digits", "fashion_mnist"])
def test_every_default_heldout_list_names_registered_distributions_that_fit(name):
    """`eval.distributions: [default]` takes the dataset's list: each entry must exist and fit the data (a renamed
    distribution left behind in a list would fail every default run only after training)."""
    if name == "fashion_mnist" and not FMNIST.exists():
        pytest.skip("needs Debian's dataset-fashion-mnist (installed by .ci/run)")
    data = load_dataset({"name": name})
    assert len(data.default_heldout) >= 3
    heldout.check(data.default_heldout, data, 50, 0)
    with pytest.raises(KdxError, match="unknown held-out distribution 'inversion'"):
        heldout.check([*data.default_heldout, "inversion-1"], data, 50, 0)  # the check can fail
