"""A harder teacher's setting: a train subset and symmetric label noise (kdx.data.difficulty), reached as a user
reaches them: data.train_size / data.label_noise overrides on `kdx run`, and a study's `data` axis."""
import json
import os

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import FAST
from kdx.cli import app
from kdx.data import load_dataset
from kdx.errors import KdxError
from kdx.study import execute
from kdx.study.plan import plan


def test_label_noise_flips_exactly_its_share_to_other_classes_and_test_stays_clean():
    clean = load_dataset({"name": "digits"})
    noisy = load_dataset({"name": "digits", "label_noise": 0.4, "train_size": 1000})
    rec = noisy.train_labels
    assert len(noisy.x_train) == len(rec["train_index"]) == 1000 == len(np.unique(rec["train_index"]))
    # the subset is rows of the full train set, with their clean labels kept beside the noisy ones
    assert (clean.x_train[rec["train_index"]] == noisy.x_train).all()
    assert (clean.y_train[rec["train_index"]].numpy() == rec["clean"]).all()
    assert (noisy.y_train.numpy() == rec["noisy"]).all()
    wrong = rec["noisy"] != rec["clean"]
    assert wrong.sum() == 400  # exactly the share, and a flipped label is always another class
    # symmetric: the wrong labels spread over the other classes, no class far above its share
    assert np.bincount(rec["noisy"][wrong] - rec["clean"][wrong] + 10, minlength=20)[10] == 0
    assert (clean.y_test == noisy.y_test).all() and (clean.x_test == noisy.x_test).all()
    # the draw belongs to the data (noise_seed), not to a run: the same spec gives the same labels
    again = load_dataset({"name": "digits", "label_noise": 0.4, "train_size": 1000, "noise_seed": 0})
    assert (again.y_train == noisy.y_train).all()
    other = load_dataset({"name": "digits", "label_noise": 0.4, "train_size": 1000, "noise_seed": 1})
    assert (other.train_labels["train_index"] != rec["train_index"]).any()


@pytest.mark.parametrize("override,named", [
    ("data.label_noise=1.5", "data.label_noise must be a share"),
    ("data.train_size=0", "data.train_size must be a whole number"),
    ("data.train_size=999999", "give at most"),
    ("data.noise_seed=abc", "data.noise_seed must be an integer"),
])
def test_bad_difficulty_values_are_named_before_any_training(override, named, tmp_path):
    res = CliRunner().invoke(app, ["run", *FAST, override, "--runs-dir", str(tmp_path), "--name", "r"])
    assert res.exit_code != 0 and named in res.output + str(res.exception), res.output
    assert not (tmp_path / "r").exists()


def test_a_noisy_run_stores_its_labels_and_its_teacher_learns_the_noisy_labels(tmp_path):
    over = ["data.label_noise=0.3", "data.train_size=800"]
    res = CliRunner().invoke(app, ["run", *FAST, *over, "--runs-dir", str(tmp_path), "--name", "r"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    saved = np.load(tmp_path / "r" / "train_labels.npz")
    assert len(saved["train_index"]) == 800 and (saved["noisy"] != saved["clean"]).sum() == 240
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    # test labels are clean: the teacher still beats chance (10%) by a wide margin there
    assert m["eval"]["test"]["teacher_acc"] > 0.6
    assert 0.3 < m["eval"]["test"]["teacher_confidence"] <= 1 and m["eval"]["test"]["teacher_entropy"] >= 0


def test_a_study_data_axis_gives_each_cell_its_own_teacher_recipe(tmp_path):
    study = {"name": "hard", "base": str(tmp_path / "base.yaml"), "seeds": [0], "sources": [{"name": "train"}],
             "data": [{"name": "digits", "label": "clean"},
                      {"name": "digits", "label": "n500", "train_size": 500, "label_noise": 0.2,
                       "samples_scale": 0.5, "overrides": ["teacher.train.epochs=80"]}]}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"data": {"name": "digits"}, "distill": {"samples": 1000}}))
    (tmp_path / "hard.yaml").write_text(yaml.safe_dump(study))
    _, runs = plan(tmp_path / "hard.yaml", build_sources=False)
    by = {r.axes["data"]: r.cfg for r in runs}
    assert by["n500"].data == {"name": "digits", "train_size": 500, "label_noise": 0.2}
    assert by["n500"].teacher.train.epochs == 80 and by["clean"].teacher.train.epochs != 80
    assert by["n500"].distill.samples == 500 and by["clean"].distill.samples == 1000
    study["data"][1]["overrides"] = ["teacher.train.epochs"]
    (tmp_path / "hard.yaml").write_text(yaml.safe_dump(study))
    with pytest.raises(KdxError, match="overrides"):
        plan(tmp_path / "hard.yaml", build_sources=False)


def test_an_entry_switch_at_keeps_a_subset_of_the_axis_and_is_refused_outside_it(tmp_path):
    study = {"name": "late", "base": str(tmp_path / "base.yaml"), "seeds": [0, 1], "switch_at": [0.0, 0.5, 1.0],
             "data": [{"name": "digits", "label": "clean", "switch_at": [0.0, 1.0]},
                      {"name": "digits", "label": "noisy", "label_noise": 0.2}]}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"data": {"name": "digits"}, "distill": {"samples": 1000}}))
    (tmp_path / "late.yaml").write_text(yaml.safe_dump(study))
    _, runs = plan(tmp_path / "late.yaml", build_sources=False)
    cells = sorted((r.axes["data"], r.axes["switch_at"]) for r in runs if r.axes["seed"] == 0)
    assert cells == [("clean", 0.0), ("clean", 1.0), ("noisy", 0.0), ("noisy", 0.5), ("noisy", 1.0)]
    assert all("switch_at" not in r.cfg.data for r in runs)  # the study's key, not the dataset's
    assert {r.cfg.distill.switch_at for r in runs if r.axes["data"] == "clean"} == {0.0, 1.0}
    for bad in ([0.25], [], 0.5):
        study["data"][0]["switch_at"] = bad
        (tmp_path / "late.yaml").write_text(yaml.safe_dump(study))
        with pytest.raises(KdxError, match="switch_at` in an entry"):
            plan(tmp_path / "late.yaml", build_sources=False)


def test_a_study_trains_its_distinct_teachers_side_by_side_before_its_runs(tmp_path, monkeypatch):
    """`kdx study --workers 2` over two cells: each cell's teacher is trained once, the two in two worker
    processes (not one after the other here), on its own cell's data, and every run then distils from it."""
    base = {"data": {"name": "digits"}, "teacher": {"seed": 7}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    fast = [o for o in FAST if not o.startswith(("data.", "eval.distributions"))] + ["eval.distributions=[test]"]
    study = {"name": "two_teachers", "base": str(tmp_path / "base.yaml"), "seeds": [0], "probe": False,
             "overrides": fast + ["distill.samples=3000"], "sources": [{"name": "train"}],
             "data": [{"name": "digits", "label": "clean"}, {"name": "digits", "label": "noise30", "label_noise": 0.3}]}
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(study))
    cache = tmp_path / "cache"
    monkeypatch.setenv("KDX_CACHE", str(cache))
    pids = tmp_path / "pids"
    real = execute.get_teacher

    def recording(cfg, data):  # the worker processes are forked: they run this too
        with open(pids, "a") as f:
            f.write(f"{os.getpid()} {cfg.data.get('label_noise', 0)}\n")
        return real(cfg, data)

    monkeypatch.setattr(execute, "get_teacher", recording)
    result = CliRunner().invoke(app, ["study", str(tmp_path / "two.yaml"), "--workers", "2", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    calls = [line.split() for line in pids.read_text().splitlines()]
    assert sorted(noise for _, noise in calls) == ["0", "0.3"]  # each teacher once
    assert len({pid for pid, _ in calls}) == 2 and str(os.getpid()) not in {pid for pid, _ in calls}
    recipes = {json.loads((d / "recipe.json").read_text())["data"].get("label_noise", 0): d
               for d in (cache / "teachers").iterdir()}
    assert sorted(recipes) == [0, 0.3] and all((d / "teacher.pt").exists() for d in recipes.values())
    for label in ("clean", "noise30"):
        metrics = json.loads((tmp_path / "runs/studies/two_teachers/runs" / f"{label}-train-s0" / "metrics.json").read_text())
        assert metrics["teacher"]["test_acc"] > 0.5  # 10 classes: a trained teacher, not chance
