import os

import pytest

# A small, fast setting on scikit-learn's bundled digits: a teacher trains in seconds on 2 CPU cores.
FAST = ["data.name=digits", "teacher.model.channels=[16,32]", "teacher.model.hidden=64",
        "teacher.train.epochs=40", "teacher.train.lr=0.05", "teacher.train.augment=none",
        "student.model.channels=[8,16]", "student.model.hidden=32", "distill.samples=12000",
        "distill.batch_size=128", "distill.lr=0.05", "eval.n=300", "eval.bootstrap=200",
        "eval.distributions=[test,train_subset,gaussian_noise-2,blur-1,uniform_noise]",
        "distill.checkpoint_every=10", "distill.log_every=5"]


@pytest.fixture(scope="session", autouse=True)
def kdx_cache(tmp_path_factory):
    """Teachers trained by the tests go to one per-session cache, never the user's."""
    path = tmp_path_factory.mktemp("kdx-cache")
    os.environ["KDX_CACHE"] = str(path)
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    return path


@pytest.fixture(scope="session")
def digits_teacher(kdx_cache):
    from kdx import config as kconfig
    from kdx.data import load_dataset
    from kdx.distill.teacher import get_teacher

    cfg = kconfig.load_config(None, FAST)
    data = load_dataset(cfg.data)
    return cfg, data, get_teacher(cfg, data)


def run_fast(runs_dir, *overrides: str, name: str = "run", resume: bool = False, overwrite: bool = False):
    """`kdx run` of the FAST setting plus `overrides` into runs_dir/name; returns the run directory."""
    from kdx.run import run

    return run(None, FAST + list(overrides), str(runs_dir), name, resume, overwrite)


# timing and memory: they differ between two runs of the same config
TIMING = {"seconds", "samples_per_s", "resumed_from_step", "seconds_to_load_or_train", "peak_rss_mb", "peak_gpu_mb"}


def strip_timing(obj):
    """metrics.json without the fields that differ between two runs of the same config."""
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING}
    return obj


def kill_once_checkpointed(cmd: list[str], run_dir, env: dict, poll: float = 0.05):
    """Start `kdx run` (cmd) writing run_dir and SIGKILL it as soon as its first checkpoint exists; checks
    that the kill came before the run finished. Returns the checkpoint's path."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run_dir / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(poll)
    assert ckpt.exists(), "no checkpoint appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists()
    return ckpt


@pytest.fixture
def no_real_data(tmp_path, monkeypatch):
    """No real data and no real caches for the data-loader tests: an empty HOME, no $KDX_DATA, no HF cache
    folder, no Debian copy of Fashion-MNIST, offline."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KDX_DATA", raising=False)
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    monkeypatch.setattr("kdx.data.fashion_mnist.DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def build_data(spec: dict):
    """The registered dataset a `data:` section names, built afresh (load_dataset caches per process)."""
    from kdx.registry import DATASETS

    return DATASETS.build(spec, "data")
