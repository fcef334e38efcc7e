"""Tables, black-box and ensemble teachers, and the sources of model compression (MUNGE, RANDOM, a GMM):
data through the registry, the config and the `kdx` command; teachers learned beat chance by margins
that no seed breaks; MUNGE against a plain re-implementation of the paper's procedure."""
from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import kdx
from conftest import build_data
from kdx import config as kconfig
from kdx.data.tabular import one_hot
from kdx.distill.teacher import get_teacher
from kdx.errors import KdxError
from kdx.eval import heldout
from kdx.models import predict
from kdx.models.ensemble import combine_logits
from kdx.probes import deviation
from kdx.registry import SOURCES
from kdx.run import build_source, run
from kdx.rundir import load_run
from kdx.sampling.munge import munge_rows

SMALL = ["data.name=sklearn_table", "data.which=breast_cancer", "student.model.name=mlp", "student.model.hidden=[32]",
         "distill.samples=12000", "distill.optimizer=adamw", "distill.lr=0.003", "eval.bootstrap=50"]
HGB = ["teacher.model.name=sklearn", "teacher.model.estimator=HistGradientBoostingClassifier", "teacher.model.params={max_iter: 50}"]


def table_rows(n: int = 300, seed: int = 0):
    """A small table with a categorical column: the label depends on a continuous feature and on the colour."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n) * 3 + 10
    colour = rng.choice(["red", "green", "blue"], size=n)
    y = np.where(a + (colour == "red") * 1.5 > 0.5, "yes", "no")
    return pd.DataFrame({"a": a, "colour": colour, "b": b, "label": y})


# ------------------------------------------------------------------------------------------- data


def test_bundled_tables_are_standardised_with_train_statistics():
    digits = build_data({"name": "sklearn_table", "which": "digits"})
    assert digits.modality == "tabular" and digits.x_train.shape[1] == 64 and digits.num_classes == 10
    bc = build_data({"name": "sklearn_table", "which": "breast_cancer", "seed": 3})
    assert bc.x_train.shape == (455, 30) and bc.x_test.shape == (114, 30)
    assert torch.allclose(bc.x_train.mean(0), torch.zeros(30), atol=1e-4)
    assert torch.allclose(bc.x_train.std(0, unbiased=False), torch.ones(30), atol=1e-3)
    assert not torch.allclose(bc.x_test.mean(0), torch.zeros(30), atol=1e-2)  # the test split is not refit
    assert torch.equal(bc.lo, bc.x_train.amin(0)) and torch.equal(bc.hi, bc.x_train.amax(0))
    with pytest.raises(KdxError, match="breast_cancer, wine, digits"):
        build_data({"name": "sklearn_table", "which": "adult"})


def test_generated_table_has_its_stated_size_and_seed():
    a = build_data({"name": "generated_table", "n_samples": 1000, "n_features": 8, "n_informative": 4, "n_redundant": 2,
                    "n_classes": 4, "seed": 5})
    b = build_data({"name": "generated_table", "n_samples": 1000, "n_features": 8, "n_informative": 4, "n_redundant": 2,
                    "n_classes": 4, "seed": 5})
    assert len(a.x_train) + len(a.x_test) == 1000 and a.x_train.shape[1] == 8 and a.num_classes == 4
    assert torch.equal(a.x_train, b.x_train)
    with pytest.raises(KdxError, match="n_informative"):
        build_data({"name": "generated_table", "n_features": 3, "n_informative": 5})


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_table_file_reads_categories_as_codes(tmp_path, fmt):
    df = table_rows()
    path = tmp_path / f"t.{fmt}"
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path, index=False)
    d = build_data({"name": "table_file", "path": str(path), "target": "label"})
    assert d.feature_names == ["a", "colour", "b"] and d.categories == {1: ["blue", "green", "red"]}
    assert d.classes == ["no", "yes"] and len(d.x_train) + len(d.x_test) == len(df)
    assert set(d.x_train[:, 1].tolist()) <= {0.0, 1.0, 2.0}
    assert d.mean[1] == 0 and d.std[1] == 1  # codes reach the one-hot layer unscaled
    # the MLP sees the colour one-hot: 3 columns for it
    feats = one_hot(d.x_train[:5], d.categories)
    assert feats.shape == (5, 5) and torch.equal(feats[:, 1:4].sum(1), torch.ones(5))
    model = kdx.models.build_model({"name": "mlp", "hidden": [8]}, d, "student.model", 0)
    assert model(d.x_train[:4]).shape == (4, 2)


def test_table_file_refuses_missing_values_and_free_text(tmp_path):
    df = table_rows()
    df.loc[3, "a"] = np.nan
    df.to_csv(tmp_path / "gap.csv", index=False)
    with pytest.raises(KdxError, match="column 'a' has 1 missing.*fill them"):
        build_data({"name": "table_file", "path": str(tmp_path / "gap.csv")})
    df = table_rows()
    df["id"] = [f"row{i}" for i in range(len(df))]
    df.to_csv(tmp_path / "ids.csv", index=False)
    with pytest.raises(KdxError, match="column 'id' has 300 distinct.*drop it"):
        build_data({"name": "table_file", "path": str(tmp_path / "ids.csv"), "target": "label"})


def test_n_by_d_tensors_through_from_tensors_and_distill_student():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1200, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    data = kdx.data.from_tensors(x[:1000], y[:1000], x[1000:], y[1000:])
    assert data.modality == "tabular" and data.default_heldout[2].startswith("feature_noise")
    with pytest.raises(KdxError, match="float features"):
        kdx.data.from_tensors(x.long(), y, x.long(), y)
    coded = x.clone()
    coded[:, 5] = (x[:, 5] > 0).float()
    table = kdx.data.from_tensors(coded[:1000], y[:1000], coded[1000:], y[1000:], categories={5: ["off", "on"]})
    assert table.categories == {5: ["off", "on"]} and one_hot(table.x_test, table.categories).shape == (200, 7)
    teacher = torch.nn.Sequential(torch.nn.Linear(6, 2))
    with torch.no_grad():
        teacher[0].weight.copy_(torch.tensor([[-4.0, -4, 0, 0, 0, 0], [4.0, 4, 0, 0, 0, 0]]))
        teacher[0].bias.zero_()
    student = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    result = kdx.distill_student(teacher, student, data, source="noise", samples=20000, batch_size=128, lr=0.05,
                                 **{"eval.bootstrap": 50})
    assert result.metrics["eval"]["test"]["agreement"] > 0.9  # chance is 0.5
    assert "covariate_shift" in result.metrics["eval"] and "missing_features-2" in result.metrics["eval"]


def test_tabular_heldout_shifts_do_what_they_say():
    d = build_data({"name": "generated_table", "n_samples": 3000, "seed": 1})
    clean = heldout.load("test", d, 500, 7).x
    mild, strong = heldout.load("feature_noise-1", d, 500, 7), heldout.load("feature_noise-3", d, 500, 7)
    base, y = heldout._test_subset(d, 500, 7)[:2]
    assert torch.equal(mild.y, y)
    ratio = ((strong.x - base) / d.std).std() / ((mild.x - base) / d.std).std()
    assert 8 < float(ratio) < 12  # 1.0 vs 0.1 standard deviations
    shift = heldout.load("covariate_shift", d, 500, 7)
    cut = torch.quantile(d.x_train[:, 0], 0.8)
    assert (shift.x[:, 0] > cut).all() and len(shift.x) == int((clean[:, 0] > cut).sum())
    miss = heldout.load("missing_features-3", d, 500, 7)
    changed = miss.x != base
    assert 0.4 < float(changed.float().mean()) < 0.6
    assert torch.allclose(miss.x[changed], d.x_train.mean(0).expand_as(base)[changed])
    box = heldout.load("uniform_noise", d, 500, 7).x
    assert (box >= d.lo).all() and (box <= d.hi).all()
    with pytest.raises(KdxError, match="needs tables.*gaussian_noise"):
        heldout.load("feature_noise-2", build_data({"name": "mnist1d", "num_samples": 200}), 10, 0)
    with pytest.raises(KdxError, match="needs images or signals.*feature_noise-N"):
        heldout.load("blur-2", d, 10, 0)


# ---------------------------------------------------------------------------------------- teachers


def test_sklearn_teacher_from_yaml(tmp_path):
    cfg_file = tmp_path / "t.yaml"
    cfg_file.write_text("data: {name: sklearn_table, which: breast_cancer}\n"
                        "teacher:\n  model: {name: sklearn, estimator: RandomForestClassifier, params: {n_estimators: 50}}\n"
                        "student:\n  model: {name: mlp, hidden: [32]}\n"
                        "distill: {samples: 12000, optimizer: adamw, lr: 0.003}\neval: {bootstrap: 50}\n")
    out = run(str(cfg_file), [], runs_dir=str(tmp_path / "runs"))
    m = json.loads((out / "metrics.json").read_text())
    assert m["teacher"]["arch"] == "sklearn" and m["teacher"]["params"] == 0
    assert m["teacher"]["test_acc"] > 0.85  # majority class: 0.63
    assert m["eval"]["test"]["student_acc"] > 0.85 and m["eval"]["test"]["agreement"] > 0.85
    assert m["teacher"]["checkpoint"].endswith("teacher.skops")
    # the second run finds the teacher in the cache
    cfg = kconfig.load_config(cfg_file)
    data = kdx.data.load_dataset(cfg.data)
    again = get_teacher(cfg, data)
    assert str(again.checkpoint) == m["teacher"]["checkpoint"] and again.model.fitted


def test_sklearn_teacher_from_the_kdx_command(tmp_path):
    out = subprocess.run([sys.executable, "-m", "kdx", "run", *SMALL, *HGB, "source.name=munge", "--runs-dir", str(tmp_path),
                          "--name", "cli"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    m = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert m["source"]["name"] == "munge" and m["teacher"]["test_acc"] > 0.85
    assert m["eval"]["test"]["agreement"] > 0.85


def fitted_logreg(data):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=500).fit(data.x_train.numpy(), data.y_train.numpy())


def teacher_cfg(model: dict, *extra: str):
    return kconfig.load_config(None, [*SMALL, *extra], layers=[("teacher", {"teacher": {"model": model}})])


def test_skops_file_is_loaded_and_gives_log_probabilities(tmp_path):
    import skops.io as sio

    data = build_data({"name": "sklearn_table", "which": "breast_cancer"})
    est = fitted_logreg(data)
    sio.dump(est, tmp_path / "mine.skops")
    cfg = teacher_cfg({"name": "sklearn_file", "path": str(tmp_path / "mine.skops")})
    teacher = get_teacher(cfg, data)
    logits = teacher.logits(data.x_test)
    expected = np.log(np.clip(est.predict_proba(data.x_test.numpy()), 1e-6, 1))
    assert np.allclose(logits.numpy(), expected, atol=1e-5)
    assert abs(teacher.test_acc - est.score(data.x_test.numpy(), data.y_test.numpy())) < 1e-6


def test_pickle_is_refused_without_trust_file_and_loaded_with_it(tmp_path):
    data = build_data({"name": "sklearn_table", "which": "breast_cancer"})
    est = fitted_logreg(data)
    path = tmp_path / "mine.pkl"
    path.write_bytes(pickle.dumps(est))
    with pytest.raises(KdxError, match="runs whatever code.*trust_file=true.*skops"):
        get_teacher(teacher_cfg({"name": "sklearn_file", "path": str(path)}), data)
    teacher = get_teacher(teacher_cfg({"name": "sklearn_file", "path": str(path), "trust_file": True}), data)
    assert abs(teacher.test_acc - est.score(data.x_test.numpy(), data.y_test.numpy())) < 1e-6
    # a model fit on other features is named when it loads
    from sklearn.linear_model import LogisticRegression

    path.write_bytes(pickle.dumps(LogisticRegression().fit(data.x_train[:, :5].numpy(), data.y_train.numpy())))
    with pytest.raises(KdxError, match="fails on dataset 'breast_cancer''s features.*fit on this dataset"):
        get_teacher(teacher_cfg({"name": "sklearn_file", "path": str(path), "trust_file": True}), data)


def test_gradient_sources_refuse_a_black_box_teacher(tmp_path):
    for source in (["source.name=inversion"], ["source.name=mixture", "source.components=[{name: train}, {name: langevin}]"],
                   ["source.name=adaptive", "source.score=region"]):
        with pytest.raises(KdxError, match="needs the teacher's gradients.*black box.*use a source.*munge.*noise"):
            run(None, ["data.name=mnist1d", "data.num_samples=500", *HGB, "student.model.name=mlp", *source],
                runs_dir=str(tmp_path))
    assert not [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")]  # refused before any run folder was made
    with pytest.raises(KdxError, match="can only teach.*use mlp"):
        run(None, [*SMALL, "student.model.name=sklearn"], runs_dir=str(tmp_path))


def test_ensemble_logits_are_the_combination_of_its_members(tmp_path):
    data = build_data({"name": "sklearn_table", "which": "breast_cancer"})
    members = [{"name": "sklearn", "estimator": "LogisticRegression", "params": {"max_iter": 500}},
               {"name": "mlp", "hidden": [16]}]
    extra = ["teacher.train.epochs=20", "teacher.train.lr=0.05"]
    singles = [get_teacher(dataclass_with_teacher(m, i, extra), data).logits(data.x_test) for i, m in enumerate(members)]
    for combine in ("mean_probs", "mean_logits"):
        cfg = teacher_cfg({"name": "ensemble", "members": members, "combine": combine}, *extra)
        ens = get_teacher(cfg, data)
        got = ens.logits(data.x_test)
        if combine == "mean_logits":
            expected = (singles[0] + singles[1]) / 2
        else:
            expected = torch.log((singles[0].softmax(1) + singles[1].softmax(1)) / 2)
        assert torch.allclose(got, expected, atol=1e-5)
        assert [m["arch"] for m in ens.members] == ["LogisticRegression", "mlp"]
        assert all(m["test_acc"] > 0.85 for m in ens.members)
    out = run(None, [*SMALL, *extra, "teacher.model.name=ensemble", f"teacher.model.members={json.dumps(members)}"],
              runs_dir=str(tmp_path))
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["teacher"]["members"]) == 2 and m["teacher"]["test_acc"] > 0.85
    # each member's accuracy beside the ensemble's and the student's, on every labelled held-out set
    assert [round(a, 6) for a in m["eval"]["test"]["member_acc"]] == [round(t["test_acc"], 6) for t in m["teacher"]["members"]]
    assert len(m["eval"]["feature_noise-2"]["member_acc"]) == 2 and "member_acc" not in m["eval"]["uniform_noise"]
    with pytest.raises(KdxError, match="combine must be one of mean_probs, mean_logits"):
        run(None, [*SMALL, "teacher.model.name=ensemble", f"teacher.model.members={json.dumps(members)}",
                   "teacher.model.combine=vote"], runs_dir=str(tmp_path))


def dataclass_with_teacher(model: dict, index: int, extra):
    """The config an ensemble gives its member `index`: that model, teacher.seed + index."""
    cfg = teacher_cfg(model, *extra)
    cfg.teacher.seed += index
    return cfg


def text_set(tmp_path, n: int = 240):
    """A tiny text set whose label is in its words (with noise words), as train/test csv files for hf_text."""
    import pandas as pd

    rng = np.random.default_rng(0)
    words = {0: ["cat", "dog", "mouse", "pet", "fur"], 1: ["stock", "bank", "rate", "money", "loan"],
             2: ["goal", "match", "team", "ball", "score"]}
    filler = ["the", "a", "of", "and", "today", "very", "new", "old", "big", "small"]
    rows = []
    for i in range(n):
        y = int(rng.integers(3))
        ws = list(rng.choice(words[y], 2)) + list(rng.choice(filler, 4)) + list(rng.choice(words[int(rng.integers(3))], 1))
        rng.shuffle(ws)
        rows.append({"text": " ".join(ws), "label": y})
    pd.DataFrame(rows[: n * 3 // 4]).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame(rows[n * 3 // 4:]).to_csv(tmp_path / "test.csv", index=False)
    return {"name": "hf_text", "path": str(tmp_path), "max_length": 16, "vocab_size": 80}


def test_tfidf_teacher_matches_the_anchor_on_a_small_text_set(tmp_path):
    from kdx.data.text import anchor_accuracy

    spec = text_set(tmp_path)
    data = build_data(spec)
    cfg = kconfig.load_config(None, ["student.model.name=bag_of_embeddings"],
                              layers=[("t", {"data": spec, "teacher": {"model": {"name": "tfidf_logreg"}}})])
    teacher = get_teacher(cfg, data)
    anchor = anchor_accuracy(data)  # the same recipe on the raw texts (words, not the tokenizer's pieces)
    assert teacher.test_acc > 0.6 and anchor > 0.6  # chance: 1/3
    assert abs(teacher.test_acc - anchor) < 0.1
    with pytest.raises(KdxError, match="hotflip.*needs the teacher's gradients"):
        build_source(dataclass_replace_source(cfg, {"name": "hotflip"}), data)
    # distilled into a neural student on its train texts
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({"data": spec, "teacher": {"model": {"name": "tfidf_logreg"}},
                                                     "student": {"model": {"name": "bag_of_embeddings"}},
                                                     "distill": {"samples": 6000, "batch_size": 64, "optimizer": "adamw",
                                                                 "lr": 0.01}, "eval": {"bootstrap": 50}}))
    out = run(str(tmp_path / "t.yaml"), [], runs_dir=str(tmp_path / "runs"))
    m = json.loads((out / "metrics.json").read_text())
    assert m["teacher"]["arch"] == "tfidf_logreg" and m["eval"]["test"]["agreement"] > 0.6  # chance: 1/3
    # its probe is the deviation slopes alone (a black box has no features): `kdx probe RUN`
    res = subprocess.run([sys.executable, "-m", "kdx", "probe", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    dev = json.loads((out / "probes" / "deviation.json").read_text())["distributions"]
    summary = json.loads((out / "probes" / "summary.json").read_text())
    assert "black box" in summary["deviation_only"] and not (out / "probes" / "regions.csv").exists()
    # the slope agrees with a least-squares fit of the two models' phi on the same test inputs
    done = load_run(out)
    ho = heldout.load("test", done.data, done.cfg.eval.n, done.cfg.eval.seed)
    t, s = predict(done.teacher.model, ho.x), predict(done.student, ho.x)
    cls = t.argmax(1)
    x, y = deviation.phi(t, cls), deviation.phi(s, cls)
    want = np.polyfit(x, y, 1)[0]
    assert abs(dev["test"]["teacher_top1"]["slope"] - want) < 1e-3, (dev["test"]["teacher_top1"], want)  # not bit for bit: batch shapes differ


def dataclass_replace_source(cfg, spec):
    import dataclasses

    return dataclasses.replace(cfg, source={"name": spec["name"], **SOURCES.validate(spec, "source")})


# ----------------------------------------------------------------------------------------- sources


def munge_by_the_paper(x: np.ndarray, categorical: set, passes: int, p: float, s: float, seed: int):
    """Bucilă et al.'s MUNGE written out attribute by attribute, with brute-force nearest neighbours
    (attributes scaled to [0, 1]; a differing category at distance 1), the same random draws in the same order."""
    n, d = x.shape
    lo, hi = x.min(0), x.max(0)
    scaled = [[(x[i, a] - lo[a]) / (hi[a] - lo[a]) if a not in categorical else x[i, a] for a in range(d)] for i in range(n)]

    def dist(i, j):
        return sum(float(scaled[i][a] != scaled[j][a]) if a in categorical else (scaled[i][a] - scaled[j][a]) ** 2
                   for a in range(d))

    neighbour = [min((j for j in range(n) if j != i), key=lambda j: dist(i, j)) for i in range(n)]
    rng = np.random.default_rng(seed)
    rows, swapped = [], []
    for _ in range(passes):
        t = [list(map(float, r)) for r in x]
        u, z = rng.random((n, d)), rng.standard_normal((n, d, 2))
        swapped.append(u < p)
        for i in range(n):
            j = neighbour[i]
            for a in range(d):
                if u[i, a] < p:
                    if a in categorical:
                        t[i][a], t[j][a] = t[j][a], t[i][a]
                    else:
                        sd = abs(t[i][a] - t[j][a]) / s
                        t[i][a], t[j][a] = t[j][a] + sd * z[i, a, 0], t[i][a] + sd * z[i, a, 1]
        rows += t
    return np.array(rows), neighbour, swapped


def test_munge_follows_the_papers_procedure():
    from kdx.sampling.munge import nearest_neighbours

    rng = np.random.default_rng(3)
    x = np.column_stack([rng.normal(size=40), rng.integers(0, 3, 40), rng.normal(size=40) * 5])
    ours = munge_rows(x, [1], passes=2, p=0.5, s=4.0, seed=11)
    theirs, neighbour, swapped = munge_by_the_paper(x, {1}, passes=2, p=0.5, s=4.0, seed=11)
    assert nearest_neighbours(x, [1]).tolist() == neighbour
    assert ours.shape == (80, 3) and np.allclose(ours, theirs, atol=1e-9)
    # categories stay categories; a row keeps an attribute it neither swapped nor was swapped as a neighbour
    assert set(ours[:, 1].tolist()) <= {0.0, 1.0, 2.0}
    touched = swapped[0].copy()
    for i, j in enumerate(neighbour):
        touched[j] |= swapped[0][i]
    assert np.array_equal(ours[:40][~touched], x[~touched])


def test_table_sources_draw_what_they_say():
    d = build_data({"name": "generated_table", "n_samples": 2000, "n_features": 6, "n_informative": 3, "n_redundant": 2,
                    "seed": 2})
    cpu = torch.device("cpu")
    marg = SOURCES.build({"name": "marginals"}, "source", data=d, seed=0)
    marg.setup(cpu, None)
    xb = marg.batch(0, 4000).x
    for c in range(6):  # every value is one of its column's train values
        assert torch.isin(xb[:, c], d.x_train[:, c]).all()
    corr_train = torch.corrcoef(d.x_train.T).abs().fill_diagonal_(0).max()
    corr_marg = torch.corrcoef(xb.T).abs().fill_diagonal_(0).max()
    assert corr_train > 0.3 and corr_marg < 0.1  # the dependence between attributes is gone
    gmm = SOURCES.build({"name": "gmm", "components": 4}, "source", data=d, seed=0)
    gmm.setup(cpu, None)
    xg = gmm.batch(0, 4000).x
    assert torch.allclose(xg.mean(0), d.x_train.mean(0), atol=0.15) and (xg >= d.lo).all() and (xg <= d.hi).all()
    assert torch.equal(gmm.batch(0, 10).x, gmm.batch(0, 10).x)  # a function of (seed, step)
    assert torch.corrcoef(xg.T).abs().fill_diagonal_(0).max() > 0.2  # full covariances keep the dependence
    munge = SOURCES.build({"name": "munge", "passes": 2}, "source", data=d, seed=0)
    assert len(munge.x) == 2 * len(d.x_train)
    for spec in ({"name": "noise", "kind": "gaussian"}, {"name": "noise", "kind": "uniform"}):
        src = SOURCES.build(spec, "source", data=d, seed=0)
        src.setup(cpu, None)
        xb = src.batch(0, 1000).x
        assert xb.shape == (1000, 6) and (xb >= d.lo).all() and (xb <= d.hi).all()
    with pytest.raises(KdxError, match="source 'munge' needs tables"):
        SOURCES.build({"name": "munge"}, "source", data=build_data({"name": "mnist1d", "num_samples": 200}), seed=0)
    with pytest.raises(KdxError, match="0 <= p <= 1"):
        SOURCES.build({"name": "munge", "p": 2.0}, "source", data=d, seed=0)


def test_mixture_and_adaptive_distil_a_black_box_on_a_table(tmp_path):
    for i, source in enumerate((["source.name=mixture", "source.components=[{name: train}, {name: marginals}]"],
                                ["source.name=adaptive", "source.score=kl", "source.candidates={name: gmm}"])):
        out = run(None, [*SMALL, *HGB, *source], runs_dir=str(tmp_path), name=f"r{i}")
        m = json.loads((out / "metrics.json").read_text())
        assert m["eval"]["test"]["agreement"] > 0.85, source
        assert math.isfinite(m["eval"]["uniform_noise"]["kl_teacher_student"])


def test_the_tabular_study_plans_a_data_axis():
    from kdx.study.plan import plan

    study_file = Path(__file__).parent.parent / "configs" / "studies" / "sources_tabular.yaml"
    study, runs = plan(study_file, build_sources=False)
    assert len(runs) == 3 * 6 * 5 and {r.axes["data"] for r in runs} == {"breast_cancer", "digits", "generated"}
    generated = next(r for r in runs if r.axes["data"] == "generated")
    assert generated.cfg.data["name"] == "generated_table" and generated.cfg.data["n_samples"] >= 20000
    assert "label" not in generated.cfg.data and generated.name.startswith("generated-")
    assert all(r.cfg.teacher.model["name"] == "sklearn" and r.cfg.student.model["name"] == "mlp" for r in runs)


def test_a_tabular_study_with_probes_is_refused_when_planned(tmp_path):
    from kdx.study.plan import plan

    base = Path(__file__).parent.parent / "configs" / "tabular.yaml"
    study = tmp_path / "s.yaml"
    study.write_text(f"name: s\nbase: {base}\nseeds: [0]\nsources: [{{name: train}}]\n")  # probe: true by default
    with pytest.raises(KdxError, match="tables have no probes yet; set probe: false"):
        plan(study, build_sources=True)
    with pytest.raises(KdxError, match="tables have no probes yet; set probe: false"):
        plan(_torch_teacher_study(tmp_path, base), build_sources=True)


def _torch_teacher_study(tmp_path, base):
    cfg = tmp_path / "torch.yaml"
    cfg.write_text(yaml.safe_dump({**yaml.safe_load(base.read_text()), "teacher": {"model": {"name": "mlp", "hidden": [8]}}}))
    study = tmp_path / "t.yaml"
    study.write_text(f"name: t\nbase: {cfg}\nseeds: [0]\nsources: [{{name: train}}]\n")
    return study
