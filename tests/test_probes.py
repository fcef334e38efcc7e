import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import run_fast
from kdx.errors import KdxError
from kdx.probes import deviation, regions
from kdx.theory import eigen
from kdx.cli.probe import probe_app
from kdx.neighbors import kmeans, self_neighbors


def test_phi_is_exact_from_logits_and_clips_probabilities_at_1e_9():
    p = np.array([0.02, 0.3, 0.5, 0.9, 0.999])
    logits = torch.tensor(np.log(np.stack([p, 1 - p], 1)))  # two classes: softmax gives back (p, 1 - p)
    assert np.allclose(deviation.phi(logits, torch.zeros(5, dtype=torch.long)), np.log(p / (1 - p)), atol=1e-12)
    # a margin of 19 over two other classes: float32 softmax already says p = 1, phi is exact here
    z = torch.tensor([[19.0, 0.0, 0.0]])
    assert torch.softmax(z, 1)[0, 0].item() == 1.0
    assert deviation.phi(z, torch.tensor([0]))[0] == pytest.approx(19 - math.log(2), abs=1e-9)
    # beyond p = 1 - 1e-9 (and below 1e-9) the probability is clipped: phi = +-log((1 - 1e-9) / 1e-9) = +-20.72
    far = torch.tensor([[100.0, 0.0], [0.0, 100.0]])
    assert deviation.phi(far, torch.tensor([0, 0])).tolist() == pytest.approx([20.7232658, -20.7232658], abs=1e-6)


def test_slope_estimator_recovers_a_known_slope_and_its_interval():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2, 4000)
    fit = deviation.fit_line(x, 1.4 * x - 0.5 + rng.normal(0, 1, 4000), resamples=1000)
    lo, hi = fit["slope_ci"]
    assert lo < 1.4 < hi and fit["intercept_ci"][0] < -0.5 < fit["intercept_ci"][1]
    # OLS standard error sigma / (sd_x sqrt(n)) = 1 / (2 * 63.2) = 0.0079: the interval is +-1.96 of it
    assert (hi - lo) / 2 == pytest.approx(1.96 * 0.0079, rel=0.15)
    # and it is a 95% interval: over 100 fresh data sets it covers the true slope 88-100 times
    covered = 0
    for seed in range(100):
        r = np.random.default_rng(seed + 1)
        xs = r.normal(0, 1, 200)
        ci = deviation.fit_line(xs, 0.7 * xs + r.normal(0, 0.5, 200), resamples=300, seed=seed)["slope_ci"]
        covered += ci[0] < 0.7 < ci[1]
    assert covered >= 88


def test_robust_slopes_agree_with_independent_estimators_and_undo_attenuation():
    rng = np.random.default_rng(3)
    true = rng.normal(0, 2, 6000)  # both phis measure `true` with unit noise: least squares is attenuated to 0.8
    x, y = true + rng.normal(0, 1, 6000), true + rng.normal(0, 1, 6000)
    r = deviation.robust(x, y, resamples=300)
    assert deviation.fit_line(x, y, resamples=50)["slope"] == pytest.approx(0.8, abs=0.03)
    assert r["orthogonal"]["slope"] == pytest.approx(1.0, abs=0.04)  # the errors-in-variables fit undoes it
    _, vecs = np.linalg.eigh(np.cov(x, y))  # independently: the principal axis of the (x, y) covariance
    assert r["orthogonal"]["slope"] == pytest.approx(vecs[1, 1] / vecs[0, 1], rel=1e-9)
    lo, hi = r["orthogonal"]["slope_ci"]
    assert lo < r["orthogonal"]["slope"] < hi and hi - lo < 0.1
    tenths = np.array_split(np.argsort(x, kind="stable"), 10)  # independently: medians of the x-sorted tenths
    mx, my = [np.median(x[t]) for t in tenths], [np.median(y[t]) for t in tenths]
    assert r["binned_medians"]["teacher_phi"] == pytest.approx(mx) and r["binned_medians"]["student_phi"] == pytest.approx(my)
    assert r["binned_medians"]["slope"] == pytest.approx(np.polyfit(mx, my, 1)[0])
    lo, hi = r["binned_medians"]["slope_ci"]
    assert lo < r["binned_medians"]["slope"] < hi
    # grouped: one group is one draw, so every resample is the data itself (a degenerate interval, not a narrow one)
    one = deviation.robust(x[:300], y[:300], np.zeros(300, int), resamples=100)
    for fit in one.values():
        assert fit["slope_ci"][0] == fit["slope_ci"][1] == pytest.approx(fit["slope"])


def test_deciles_find_a_student_below_the_diagonal_on_the_least_confident_tenth():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 3, 900), np.full(100, deviation.PHI_MAX)])  # 10% tied at the clip
    y = x + np.where(x < np.quantile(x, 0.1), -2.0, 0.0) + rng.normal(0, 0.3, 1000)
    rows = deviation.deciles(x, y)
    assert [r["n"] for r in rows] == [100] * 10  # equal counts despite the ties
    assert rows[0]["ci"][0] < -2 < rows[0]["ci"][1] and rows[0]["frac_below_diagonal"] > 0.99
    assert all(abs(r["mean_deviation"]) < 0.1 and 0.35 < r["frac_below_diagonal"] < 0.65 for r in rows[1:])


def _blobs(n_blobs=6, per=150, dim=8, seed=0):
    """Well-separated Gaussian blobs: the features of points whose regions we know."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 10, (n_blobs, dim))
    which = np.repeat(np.arange(n_blobs), per)
    return centers, which, (centers[which] + rng.normal(0, 1, (len(which), dim))).astype(np.float32)


def test_a_planted_disagreement_region_ranks_first_and_uncovered_points_are_far():
    centers, blob, feats = _blobs()
    rng = np.random.default_rng(1)
    student = np.where(blob == 4, (blob + 1) % 6, blob)  # the student disagrees everywhere in blob 4
    points = pd.DataFrame({"item": [f"test:{i}" for i in range(len(blob))], "source": "test", "class": blob,
                           "teacher_class": blob, "student_class": student,
                           "deviation": np.where(blob == 4, -3.0, 0.0) + rng.normal(0, 0.3, len(blob)),
                           "disagreement": np.where(blob == 4, 0.8, 0.05)})
    # distillation inputs cover blobs 0-4 and never come near blob 5
    source = (centers[rng.integers(0, 5, 3000)] + rng.normal(0, 1, (3000, 8))).astype(np.float32)
    points["coverage"] = regions.coverage(feats, source)
    points["region"] = kmeans(feats, 6, seed=0)[0]
    table = regions.region_table(points, [f"c{i}" for i in range(6)])
    first = table.iloc[0]
    assert first["rank"] == 1 and first["size"] == 150 and first["agreement"] == 0
    assert first["student_acc"] == 0 and first["teacher_acc"] == 1
    assert all(int(e.split(":")[1]) // 150 == 4 for e in first["examples"].split())
    assert first["dominant_classes"] == "c4 100%"
    far = points["coverage"][blob == 5]
    assert far.min() > 3 * points["coverage"][blob != 5].max()
    assert table.set_index("dominant_classes").loc["c5 100%", "coverage_median"] == table["coverage_median"].max()


def test_self_neighbors_exclude_the_point_itself_even_among_duplicates():
    x = np.array([[0.0], [0.0], [0.0], [5.0], [5.1], [9.0]], np.float32)
    d, idx = self_neighbors(x, 2)
    assert all(i not in row for i, row in enumerate(idx))
    assert set(idx[0]) == {1, 2} and idx[3][0] == 4 and idx[5][0] == 4 and d[5][0] == pytest.approx(3.9, abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eigen_distilled_student_lags_on_low_eigendirections_at_matched_top_progress(seed):
    r = eigen.simulate(eigen.EigenConfig(seed=seed))
    assert 0 < r["teacher_step"] < r["config"]["steps"]  # early stopped: the label noise makes later steps worse
    assert r["test_error"]["onehot_last"] > r["test_error"]["teacher"]
    low = r["low_progress"]
    assert low["distilled"] < 0.8 * low["onehot"]  # the theorem
    # along every direction, descent follows the theory's filter: distilled / one-hot = a(t2) a(T) / a(t1)
    measured = np.array(r["progress"]["distilled"]) / np.array(r["progress"]["onehot"])
    theory = np.array(r["theory"]["distilled"]) / np.array(r["theory"]["onehot"])
    assert np.allclose(measured, theory, rtol=1e-6)


def test_eigen_command_writes_json_and_plot(tmp_path):
    res = CliRunner().invoke(probe_app, ["eigen", "--out", str(tmp_path), "--seeds", "2"])
    assert res.exit_code == 0, res.output
    runs = json.loads((tmp_path / "eigen.json").read_text())["runs"]
    assert [r["config"]["seed"] for r in runs] == [0, 1] and (tmp_path / "eigen.png").stat().st_size > 10_000


@pytest.fixture(scope="module")
def digits_run(digits_teacher, tmp_path_factory):

    # a third of FAST's budget: a rougher student is as good a subject for probes, and the file stays fast
    return run_fast(tmp_path_factory.mktemp("probe-runs"), "distill.samples=4000", name="train")


def test_probe_writes_deviation_regions_and_a_reusable_map(digits_run):
    args = [str(digits_run), "--on", "test,train_subset,uniform_noise", "--regions", "8", "--source-n", "2000",
            "--map-source-n", "300", "--map-epochs", "30", "--resamples", "200"]
    res = CliRunner().invoke(probe_app, args)
    assert res.exit_code == 0, res.output
    out = digits_run / "probes"
    dev = json.loads((out / "deviation.json").read_text())
    assert dev["phi"]["prob_clip"] == [1e-9, 1 - 1e-9]
    test = dev["distributions"]["test"]
    n_test = test["teacher_top1"]["n"]
    assert n_test == test["ground_truth"]["n"] > 300 and len(test["teacher_top1"]["deciles"]) == 10
    assert dev["distributions"]["uniform_noise"]["ground_truth"] is None  # noise has no labels
    f = test["teacher_top1"]
    assert f["slope_ci"][0] <= f["slope"] <= f["slope_ci"][1]
    # positively correlated phis: the orthogonal slope is at least the least-squares one
    assert f["robust"]["orthogonal"]["slope"] >= f["slope"] and len(f["robust"]["binned_medians"]["teacher_phi"]) == 10
    for name in ("test", "train_subset", "uniform_noise"):
        assert (out / f"deviation_{name}.png").stat().st_size > 10_000

    table = pd.read_csv(out / "regions.csv")
    n_eval = sum(v["teacher_top1"]["n"] for v in dev["distributions"].values())
    assert len(table) == 8 and table["size"].sum() == n_eval
    assert table["mean_deviation"].is_monotonic_increasing
    summary = json.loads((out / "summary.json").read_text())
    assert -1 <= summary["coverage_vs_disagreement_spearman"]["all"]["rho"] <= 1

    m = pd.read_parquet(out / "map.parquet")
    assert len(m) == n_eval + 300 and (m["kind"] == "distill").sum() == 300
    assert {"x", "y", "kind", "source", "class", "teacher_class", "teacher_prob", "student_class", "student_prob",
            "disagreement", "deviation", "neighbors", "region", "coverage"} <= set(m.columns)
    assert all(len(nb) == 10 and i not in nb for i, nb in zip(m["id"], m["neighbors"]))
    # the map's eval rows agree with deviation.json: the student's top class matches the teacher's as often
    ev = m[(m["source"] == "test")]
    # same models and rows, but eval's teacher logits came from the disk cache and the probe's forwards may
    # run at another thread count (faiss changes it), so a near-tie may flip: one row at most, not a misalignment
    assert (ev["teacher_class"] == ev["student_class"]).mean() == pytest.approx(
        json.loads((digits_run / "metrics.json").read_text())["eval"]["test"]["agreement"], abs=1 / len(ev) + 1e-9)

    mtime = (out / "map.parquet").stat().st_mtime_ns
    again = CliRunner().invoke(probe_app, args)
    assert again.exit_code == 0 and "reused" in again.output
    assert (out / "map.parquet").stat().st_mtime_ns == mtime


def test_probe_fails_clearly_on_a_missing_run_or_a_model_without_features(digits_run, tmp_path):
    from kdx.probes.probe import probe
    from kdx.rundir import load_run

    with pytest.raises(KdxError, match="does not exist"):
        probe(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    with pytest.raises(KdxError, match="not a finished kdx run"):
        probe(tmp_path / "half")
    run = load_run(digits_run)
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))  # logits only, no features
    featureless = dataclasses.replace(run, teacher=dataclasses.replace(run.teacher, model=plain))
    with pytest.raises(KdxError, match="cannot give penultimate features.*Classifier"):
        probe(featureless)
