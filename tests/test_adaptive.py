"""The closed loop (kdx.sampling.adaptive, kdx.sampling.bandit): each acquisition rule picks what it
claims on candidates with known scores, sampling follows score^beta, region probabilities follow
score^beta with the floor, forwards are counted honestly, skip and state keep ranks and resumed runs
bit-identical, a killed adaptive run resumes to the uninterrupted result, and `kdx run` with
source.name=adaptive trains a student far above chance."""
import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdx.cli import app
from conftest import FAST, strip_timing
from kdx.data.base import Dataset
from kdx.errors import KdxError
from kdx.registry import SOURCES
from kdx.sampling.adaptive import SCORES, AdaptiveSource, pick_rows, power_floor
from kdx.sampling.bandit import AdaptiveMixture
from kdx.sampling.base import Batch, Source, step_generator

CPU = torch.device("cpu")
K = 6  # classes of the stub models
RULES = [s for s in SCORES if s != "region"]
TEACHER_SCORED = {"kl", "tv", "disagree", "teacher_entropy", "teacher_low_phi"}
STUDENT_SCORED = {"kl", "tv", "disagree", "student_entropy", "student_margin"}
# a digits run small enough for three runs and a CLI run in seconds: a 10-epoch teacher (97-98% test)
# the registered entries' defaults (the classes take every setting explicitly)
ADAPTIVE = {k: p.default for k, p in SOURCES.get("adaptive").config_params().items() if k != "candidates"}
BANDIT = {k: p.default for k, p in SOURCES.get("adaptive_mixture").config_params().items() if k != "components"}
TINY = FAST + ["teacher.train.epochs=10", "eval.distributions=[test]", "eval.bootstrap=50"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny ops: one thread is as fast on an idle machine and much faster on a loaded one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Linear(nn.Module):
    """A stub model: logits = x.flatten(1) @ w, features = x.flatten(1)."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.float(), requires_grad=False)

    def forward(self, x, return_features=False):
        f = x.flatten(1)
        z = f @ self.w
        return (z, f) if return_features else z


def stub_models(dim=K):
    g = torch.Generator().manual_seed(7)
    teacher = Linear(2.0 * torch.eye(dim, K))
    student = Linear(torch.randn(dim, K, generator=g))
    return teacher, student


class StubSource(Source):
    """Candidates: Gaussian rows keyed by (seed, step); `cached` also hands out the teacher's logits.
    `draws` records every batch/skip call, `made` the batches made."""

    def __init__(self, seed=0, dim=K, cached=None, scale=None):
        super().__init__(None, seed)
        self.dim, self.cached, self.scale, self.has_labels = dim, cached, scale, True
        self.draws, self.made = [], []

    def batch(self, step, n):
        self.draws.append(("batch", step, n))
        g = step_generator(self.seed, step, self.device, "stub")
        x = torch.randn(n, 1, self.dim, generator=g)
        x = x if self.scale is None else self.scale * torch.tanh(x)
        y = torch.arange(n) % K
        b = Batch(x, y, self.cached(x) if self.cached is not None else None)
        self.made.append(b)
        return b

    def skip(self, step, n):
        self.draws.append(("skip", step, n))

    def state_dict(self):
        return {"draws": list(self.draws)}

    def load_state_dict(self, state):
        self.draws = list(state["draws"])


def make(score, cand=None, **kw):
    teacher, student = stub_models()
    cand = cand or StubSource()
    src = AdaptiveSource(None, 0, cand, **{**ADAPTIVE, "score": score, **kw})
    src.setup(CPU, None, teacher=teacher, student=student)
    return src, cand, teacher, student


def expected_scores(rule, t, s):
    """The rules' definitions, written out independently in numpy (float64)."""
    t, s = t.double().numpy(), s.double().numpy()

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    pt, ps = softmax(t), softmax(s)
    if rule == "kl":
        return (pt * np.log(pt / ps)).sum(1)
    if rule == "tv":
        return 0.5 * np.abs(pt - ps).sum(1)
    if rule == "disagree":
        return (pt.argmax(1) != ps.argmax(1)).astype(float)
    if rule == "student_entropy":
        return -(ps * np.log(ps)).sum(1)
    if rule == "student_margin":
        top = np.sort(ps, 1)
        return -(top[:, -1] - top[:, -2])  # smaller margin = more wanted
    if rule == "teacher_entropy":
        return -(pt * np.log(pt)).sum(1)
    if rule == "teacher_low_phi":
        p = pt.max(1)
        return -np.log(p / (1 - p))  # lowest phi = most wanted
    raise AssertionError(rule)


@pytest.mark.parametrize("rule", RULES)
def test_topk_keeps_exactly_the_highest_scored_candidates(rule):
    src, cand, teacher, student = make(rule, oversample=4.0)
    b = src.batch(3, 16)
    cands = cand.made[-1]
    assert len(cands.x) == 64 and b.x.shape == (16, 1, K)
    chosen = torch.cdist(b.x.flatten(1), cands.x.flatten(1)).argmin(1)  # row of each chosen input
    assert torch.equal(b.x, cands.x[chosen]) and torch.equal(b.y, cands.y[chosen])
    want = expected_scores(rule, teacher(cands.x), student(cands.x))
    if rule == "disagree":  # ties: every disagreeing candidate first, as many as there are
        assert want[chosen.numpy()].sum() == min(16, want.sum()) and 0 < want.sum() < 64
    else:
        assert set(chosen.tolist()) == set(np.argsort(-want, kind="stable")[:16].tolist())
    if rule in TEACHER_SCORED:  # the teacher ran on every candidate: its logits for the chosen go on
        assert torch.allclose(b.teacher_logits, teacher(b.x), atol=1e-5)
    else:  # the teacher never saw a candidate: the loop runs it on the chosen only
        assert b.teacher_logits is None


def test_cached_teacher_logits_are_used_and_passed_on():
    teacher, _ = stub_models()
    marked = lambda x: teacher(x) + 0.5  # noqa: E731  cached logits distinguishable from a fresh forward
    for rule in ("kl", "student_entropy"):
        src, cand, _, _ = make(rule, cand=StubSource(cached=marked))
        b = src.batch(0, 8)
        assert torch.allclose(b.teacher_logits, marked(b.x)) and src.accounting()["teacher_forwards"] == 0


def test_sample_draws_without_replacement_with_probability_proportional_to_score_power():
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    beta, draws = 1.5, 6000
    counts = torch.zeros(4)
    for i in range(draws):
        keep = pick_rows(w, 2, "sample", beta, step_generator(0, i, CPU, "t"))
        assert len(set(keep.tolist())) == 2
        counts[keep] += 1
    # exact inclusion probabilities of successive sampling without replacement, 2 of 4, weights w^beta
    v = (w.double() ** beta).numpy()
    tot = v.sum()
    incl = [v[i] / tot + sum(v[j] / tot * v[i] / (tot - v[j]) for j in range(4) if j != i) for i in range(4)]
    freq = (counts / draws).numpy()
    se = np.sqrt(np.array(incl) * (1 - np.array(incl)) / draws)
    assert np.all(np.abs(freq - incl) < 4 * se), (freq, incl)
    # beta = 0 is uniform; topk is the top n, whatever the generator
    zero = torch.zeros(4)
    for i in range(2000):
        zero[pick_rows(w, 1, "sample", 0.0, step_generator(1, i, CPU, "t"))] += 1
    assert (zero / 2000 - 0.25).abs().max() < 0.04
    assert set(pick_rows(w, 2, "topk", 1.0, None).tolist()) == {2, 3}


def test_sample_pick_favours_high_kl_and_is_reproducible():
    src, cand, teacher, student = make("kl", pick="sample", oversample=4.0)
    chosen_kl, all_kl = [], []
    for step in range(30):
        b = src.batch(step, 16)
        chosen_kl.append(expected_scores("kl", teacher(b.x), student(b.x)).mean())
        all_kl.append(expected_scores("kl", teacher(cand.made[-1].x), student(cand.made[-1].x)).mean())
    assert np.mean(chosen_kl) > 1.2 * np.mean(all_kl)  # 1.26-1.35 over 20 seeds of candidates and draws
    again, _, _, _ = make("kl", pick="sample", oversample=4.0)
    assert torch.equal(again.batch(29, 16).x, b.x)  # a function of (seed, step) and the candidates alone


def clusters(n_per=100, centres=4, dim=8, seed=0):
    """A toy dataset of well-separated clusters (signals (N, 1, dim)); cluster c's centre is 10 e_c."""
    g = torch.Generator().manual_seed(seed)
    c = torch.arange(centres).repeat_interleave(n_per)
    x = 0.1 * torch.randn(len(c), 1, dim, generator=g)
    x[torch.arange(len(c)), 0, c] += 10.0
    return Dataset("clusters", x, c % K, x[:10], (c % K)[:10], [str(i) for i in range(K)]), c


def region_source(beta=2.0, floor=0.2, refresh_every=10**6, **kw):
    data, c = clusters()
    g = torch.Generator().manual_seed(3)
    teacher, student = Linear(torch.randn(8, K, generator=g)), Linear(torch.randn(8, K, generator=g))
    src = SOURCES.build({"name": "adaptive", "score": "region", "regions": 4, "beta": beta, "floor": floor,
                         "refresh_every": refresh_every, "pca_dim": 4, **kw}, "source", data=data, seed=0)
    src.setup(CPU, teacher, teacher=teacher, student=student)  # as in the loop: the pool's logits cached
    return src, data, c, teacher, student


def test_regions_are_the_clusters_and_probabilities_follow_score_power_with_floor():
    src, data, c, teacher, student = region_source()
    src.batch(0, 32)  # k-means on the first draw
    # the regions are the clusters, up to their numbering
    pairs = set(zip(src.assign.tolist(), c.tolist()))
    assert len(pairs) == 4 and len({a for a, _ in pairs}) == 4
    src.region_scores = torch.tensor([1.0, 2.0, 3.0, float("nan")], dtype=torch.float64)
    p = src.region_probabilities()
    s = np.array([1.0, 2.0, 3.0, 3.0])  # not yet seen: the highest seen score (optimism)
    want = 0.8 * s**2 / (s**2).sum() + 0.2 / 4
    assert np.allclose(p.numpy(), want) and math.isclose(p.sum().item(), 1.0)
    assert np.allclose(power_floor(torch.full((4,), float("nan")), 2.0, 0.2).numpy(), 0.25)  # none seen: uniform
    # draws follow the frozen probabilities (refresh_every is huge): region shares over 150 draws x 64
    src.probs, src.refreshed = p, 0
    counts = torch.zeros(4)
    for step in range(1, 151):
        b = src.batch(step, 64)
        region = src.assign[torch.cdist(b.x.flatten(1), as_x(data).flatten(1)).argmin(1)]
        counts += torch.bincount(region, minlength=4)
    freq = (counts / counts.sum()).numpy()
    assert np.all(np.abs(freq - p.numpy()) < 4 * np.sqrt(p.numpy() * (1 - p.numpy()) / counts.sum().item()) + 1e-3)


def as_x(data):
    return data.x_train.float()


def test_region_running_scores_are_the_batch_kl_then_an_ema():
    src, data, c, teacher, student = region_source(ema=0.25)
    # The pool's logits as the source cached them: the teacher on the whole pool in one call (the same
    # call and shapes as setup's, so bit-identical); a forward on a batch of other rows would pick other
    # CPU kernels and differ in the last digit.
    pool_logits = teacher(as_x(data))
    b = src.batch(0, 64)
    rows = torch.cdist(b.x.flatten(1), as_x(data).flatten(1)).argmin(1)  # pool row of each drawn input
    region = src.assign[rows]
    assert torch.equal(b.teacher_logits, pool_logits[rows])  # pool logits of the exact inputs
    kl = torch.as_tensor(expected_scores("kl", pool_logits[rows], student(b.x)))
    first = torch.stack([kl[region == r].mean() if (region == r).any() else torch.tensor(float("nan"))
                         for r in range(4)])
    # the same float32 logits on both sides, KL in float64 by two codes: they agree to ~1e-15, far inside 1e-5
    assert torch.allclose(src.region_scores, first.double(), equal_nan=True)
    b2 = src.batch(1, 64)
    rows2 = torch.cdist(b2.x.flatten(1), as_x(data).flatten(1)).argmin(1)
    region2 = src.assign[rows2]
    kl2 = torch.as_tensor(expected_scores("kl", pool_logits[rows2], student(b2.x)))
    for r in range(4):
        if (region2 == r).any() and not torch.isnan(first[r]):
            want = 0.75 * first[r] + 0.25 * kl2[region2 == r].mean()
            assert math.isclose(src.region_scores[r].item(), want.item(), rel_tol=1e-5)


def test_region_needs_fixed_inputs():
    data, _ = clusters()
    for cand, got in (({"name": "train", "augment": "mixup"}, "PoolSource with augment=mixup"), ({"name": "noise"}, "NoiseSource"),
                      ({"name": "mixture", "components": [{"name": "train"}, {"name": "noise"}]}, "MixtureSource")):
        with pytest.raises(KdxError, match=f"fixed inputs .*got {got}"):
            SOURCES.build({"name": "adaptive", "score": "region", "candidates": cand}, "source", data=data, seed=0)
    with pytest.raises(KdxError, match="score 'kll' is unknown"):
        SOURCES.build({"name": "adaptive", "score": "kll"}, "source", data=data, seed=0)


@pytest.mark.parametrize("rule", RULES)
def test_accounting_adds_up(rule):
    src, cand, _, _ = make(rule, oversample=2.5)
    for step in range(3):
        b = src.batch(step, 8)
    a = src.accounting()
    assert a["candidates_drawn"] == 3 * 20
    assert a["teacher_forwards"] == (60 if rule in TEACHER_SCORED else 0)  # never a rejected one otherwise
    assert a["student_forwards"] == (60 if rule in STUDENT_SCORED else 0)
    assert (b.teacher_logits is None) == (rule not in TEACHER_SCORED)
    again, _, _, _ = make(rule, oversample=2.5)
    again.load_state_dict(copy.deepcopy(src.state_dict()))
    assert again.accounting() == a  # the counts survive a resume


def test_region_and_bandit_accounting():
    src, data, _, _, _ = region_source()
    for step in range(3):
        src.batch(step, 16)
    assert src.accounting() == {"teacher_forwards": len(data.x_train), "teacher_cache_lookups": 48,
                                "student_forwards": 48, "candidates_drawn": 48}
    mix = bandit_source()
    for step in range(3):
        mix.batch(step, 16)
    a = mix.accounting()
    uncached = sum(len(b.x) for b in mix.parts[1].made)  # part 0 hands out cached logits, part 1 none
    assert a["teacher_forwards"] == uncached and a["student_forwards"] == a["candidates_drawn"] == 48
    assert set(a["history"]) == {"0", "1", "2"} and all(math.isclose(sum(w), 1) for w in a["history"].values())


class SplitStudent(nn.Module):
    """Equals the teacher on rows inside (-0.5, 0.5) (the bandit's component 0), a random model elsewhere."""

    def __init__(self, teacher, other):
        super().__init__()
        self.teacher, self.other = teacher, other

    def forward(self, x, return_features=False):
        small = x.flatten(1).abs().amax(1) < 0.5
        return torch.where(small[:, None], self.teacher(x), self.other(x))


def bandit_source(**kw):
    """Component 0 (cached teacher logits): rows where the student equals the teacher, KL 0; component 1
    (no cached logits): Gaussian rows where it does not."""
    teacher, student = stub_models()
    mix = AdaptiveMixture(None, 0, [StubSource(seed=1, cached=teacher, scale=0.4), StubSource(seed=2)], [1.0, 1.0],
                          **{**BANDIT, **kw})
    mix.setup(CPU, None, teacher=teacher, student=SplitStudent(teacher, student))
    return mix


def test_bandit_moves_weight_to_the_component_with_the_higher_kl_and_keeps_the_floor():
    mix = bandit_source(floor=0.2, tau=0.5, ema=0.5)
    for step in range(20):
        b = mix.batch(step, 32)
    assert mix.rewards[0] < 1e-9 < mix.rewards[1]
    w = mix.weights.numpy()
    # rewards (0, R): softmax of (0, R) / (tau * R / 2) = (0, 4), then the floor, whatever R is
    assert math.isclose(w[0], 0.2 / 2 + 0.8 / (1 + math.exp(4)), rel_tol=1e-9) and w[1] > 0.85
    assert w[0] >= 0.2 / 2  # the floor: at least floor / K each
    assert mix.history[0] == [0.5, 0.5] and sorted(mix.history) == list(range(20))
    assert b.teacher_logits is not None and len(b.x) == 32  # logits for every row: the loop runs no teacher


def same(a, b) -> bool:
    """Equal nested states: tensors bit for bit (NaN where NaN), the rest by ==."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a.nan_to_num(-7.0), b.nan_to_num(-7.0))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def test_skip_advances_the_stream_as_batch_does():
    """Under DDP a rank skips the other ranks' draws: the next batch it makes must be the one-process one."""
    a, ca, _, _ = make("kl")
    b, cb, _, _ = make("kl")
    xa = [a.batch(s, 8).x for s in range(3)]
    b.batch(0, 8)
    b.skip(1, 8)
    assert cb.draws[1] == ("skip", 1, 16)  # the candidate stream skips oversample x n
    assert torch.equal(b.batch(2, 8).x, xa[2])
    for make_other in (lambda: region_source(refresh_every=2)[0], bandit_source):  # running state moves in skip
        ra, rb = make_other(), make_other()
        ya = [ra.batch(s, 16).x for s in range(3)]
        rb.batch(0, 16)
        rb.skip(1, 16)
        assert torch.equal(rb.batch(2, 16).x, ya[2]) and rb.state_dict().keys() == ra.state_dict().keys()
        assert same(rb.state_dict(), ra.state_dict())


def test_state_round_trip_resumes_the_same_stream():
    """region and the bandit keep running state: a source rebuilt from a saved state goes on identically."""
    import io

    def roundtrip(state):
        buf = io.BytesIO()
        torch.save(state, buf)
        buf.seek(0)
        return torch.load(buf, weights_only=False)

    ra, *_ = region_source(refresh_every=3)
    for s in range(4):
        ra.batch(s, 16)
    rb, *_ = region_source(refresh_every=3)
    rb.load_state_dict(roundtrip(ra.state_dict()))
    for s in range(4, 8):
        assert torch.equal(ra.batch(s, 16).x, rb.batch(s, 16).x)
    assert torch.equal(ra.probs, rb.probs) and rb.accounting() == ra.accounting()
    ma, mb = bandit_source(), bandit_source()
    for s in range(4):
        ma.batch(s, 16)
    mb.load_state_dict(roundtrip(ma.state_dict()))
    for s in range(4, 8):
        assert torch.equal(ma.batch(s, 16).x, mb.batch(s, 16).x)
    assert ma.history == mb.history and torch.equal(ma.weights, mb.weights)


def test_registered_sources_build_through_the_registry_and_make_batches(digits_teacher_light):
    """adaptive over every kind of candidate, and adaptive_mixture over real sources, on digits."""
    data, teacher = digits_teacher_light
    student = kdx_student(data)
    specs = [{"name": "adaptive", "candidates": {"name": "train", "augment": "mixup"}, "score": "tv"},
             {"name": "adaptive", "candidates": {"name": "noise", "kind": "gaussian"}, "score": "student_margin",
              "pick": "sample"},
             {"name": "adaptive", "candidates": {"name": "mixture", "components": [{"name": "train"}, {"name": "noise"}]},
              "score": "teacher_low_phi"},
             {"name": "adaptive", "candidates": {"name": "boundary", "batch": 32, "pool_size": 64, "steps": 2},
              "score": "kl"},
             {"name": "adaptive_mixture", "components": [{"name": "train"}, {"name": "noise", "weight": 3}]}]
    for spec in specs:
        src = SOURCES.build(spec, "source", data=data, seed=0)
        src.setup(CPU, teacher.logits, teacher=teacher.model, student=student)
        b = src.batch(0, 24)
        assert b.x.shape == (24, *data.input_shape) and torch.isfinite(b.x).all()
        assert src.accounting()["candidates_drawn"] >= 24


@pytest.fixture(scope="module")
def digits_teacher_light(kdx_cache):
    from kdx import config as kconfig
    from kdx.data import load_dataset
    from kdx.distill.teacher import get_teacher

    cfg = kconfig.load_config(None, TINY)
    data = load_dataset(cfg.data)
    return data, get_teacher(cfg, data)


def kdx_student(data):
    from kdx.models import build_model

    return build_model({"name": "cnn", "channels": [8, 16], "hidden": 32}, data, "student", 0)


class Killed(Exception):
    pass


@pytest.mark.parametrize("source,cls", [
    (["source.name=adaptive", "source.candidates.name=train", "source.candidates.augment=mixup", "source.score=kl"],
     AdaptiveSource),
    (["source.name=adaptive", "source.candidates.name=train", "source.score=region", "source.regions=8",
      "source.refresh_every=7"], AdaptiveSource),
    (["source.name=adaptive_mixture", "source.components=[{name: train}, {name: noise}]", "source.refresh_every=3"],
     AdaptiveMixture),
], ids=["kl-mixup", "region", "bandit"])
def test_killed_adaptive_run_resumes_bit_identically(digits_teacher_light, tmp_path, monkeypatch, source, cls):
    """As tests/test_run.py: a run dies after a checkpoint (here: its source raises on step 33, after the
    checkpoint at step 30); resumed, it ends with the very student and metrics of an uninterrupted run."""
    from kdx.run import run

    args = TINY + source + ["distill.samples=5120", "distill.checkpoint_every=15"]  # 40 steps
    ref = run(None, args, str(tmp_path), "ref")
    real = cls.batch

    def dies(self, step, n):
        if step == 33:
            raise Killed
        return real(self, step, n)

    monkeypatch.setattr(cls, "batch", dies)
    with pytest.raises(Killed):
        run(None, args, str(tmp_path), "killed")
    monkeypatch.undo()
    killed = tmp_path / "killed"
    assert torch.load(killed / "checkpoint.pt", weights_only=False)["step"] == 30
    assert not (killed / "metrics.json").exists()
    run(None, args, str(tmp_path), "killed", resume=True)
    m_ref, m_res = (json.loads((d / "metrics.json").read_text()) for d in (ref, killed))
    assert m_res["train"]["resumed_from_step"] == 30
    assert strip_timing(m_res) == strip_timing(m_ref)
    s_ref, s_res = (torch.load(d / "student.pt", weights_only=False)["model"] for d in (ref, killed))
    assert all(torch.equal(s_ref[k], s_res[k]) for k in s_ref)


def test_cli_adaptive_run_beats_chance(digits_teacher_light, tmp_path):
    """`kdx run ... source.name=adaptive source.candidates.name=train source.score=kl`, parsed by the CLI
    (typer's runner, in this process: a fresh one spends ~10 s importing on a loaded machine)."""
    from typer.testing import CliRunner

    args = ["run", *TINY, "distill.samples=6400", "source.name=adaptive", "source.candidates.name=train",
            "source.score=kl", "--runs-dir", str(tmp_path), "--name", "cli"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert m["source"]["name"] == "adaptive" and m["source"]["candidates"] == {"name": "train"}
    assert m["source"]["score"] == "kl" and m["source"]["oversample"] == 2.0
    assert m["eval"]["test"]["student_acc"] > 0.6  # 10 classes: chance is 0.1; 0.87-0.95 over 10 seeds


def test_shipped_studies_plan_with_equal_teacher_forwards():
    """Both studies expand and validate (no run); the budgets give every run the same teacher forwards."""
    from kdx.study import plan

    root = Path(__file__).parents[1] / "configs" / "studies"
    study, runs = plan(root / "adaptive_mnist1d.yaml")
    q = 100_000
    pool = 8000  # MNIST-1D's train set: the region rule's one teacher pass over it
    for r in runs:
        src, n = r.cfg.source, r.cfg.distill.samples
        if src["name"] != "adaptive":
            forwards = n
        elif src.get("score") == "region":
            forwards = pool + n
        elif src.get("score", "kl") in TEACHER_SCORED:
            forwards = math.ceil(src.get("oversample", 2.0)) * n
        else:
            forwards = n
        assert forwards == q, (r.name, forwards)
    assert {r.axes["source"] for r in runs} >= {"train", "train-mixup", "train+uniform", "mixup.kl", "train.region"}
    study, runs = plan(root / "adaptive_limited.yaml")
    assert any(r.cfg.source["name"] == "adaptive_mixture" for r in runs)
    assert all(r.cfg.data.get("train_split") == 0.2 for r in runs)


def test_metrics_account_for_every_forward(digits_teacher, tmp_path):
    """metrics.json's train.accounting adds the loop's teacher forwards and cache lookups to the source's
    scoring forwards: a fixed pool is all lookups; a kl-scored adaptive run doubles the teacher's work."""
    from conftest import run_fast
    from kdx.rundir import read_metrics

    fixed = read_metrics(run_fast(tmp_path, "distill.samples=1280", name="fixed"))["train"]["accounting"]
    assert fixed == {"samples_trained": 1280, "teacher_forwards": 0, "teacher_cache_lookups": 1280,
                     "teacher_queries": 1280, "student_forwards": 1280, "source": {}}
    noise = read_metrics(run_fast(tmp_path, "distill.samples=1280", "source.name=noise", name="noise"))
    assert noise["train"]["accounting"]["teacher_forwards"] == 1280
    adaptive = read_metrics(run_fast(tmp_path, "distill.samples=1280", "source.name=adaptive",
                                     "source.candidates.name=noise", "source.score=kl", name="adaptive"))
    cost = adaptive["train"]["accounting"]
    # 2x oversampled candidates, all scored by both models; the chosen rows' logits are passed on, counted once
    assert cost["source"]["teacher_forwards"] == 2560 and cost["teacher_forwards"] == 2560
    assert cost["teacher_cache_lookups"] == 0 and cost["teacher_queries"] == 2560
    assert cost["student_forwards"] == 1280 + 2560
    # over the cached train pool: every candidate's logits are read to score it, none computed
    cached = read_metrics(run_fast(tmp_path, "distill.samples=1280", "source.name=adaptive",
                                   "source.candidates.name=train", "source.score=kl", name="cached"))
    c = cached["train"]["accounting"]
    assert c["teacher_forwards"] == 0 and c["teacher_cache_lookups"] == c["teacher_queries"] == 2560
    # student-scored: the teacher's cached logits of the chosen rows only
    student = read_metrics(run_fast(tmp_path, "distill.samples=1280", "source.name=adaptive",
                                    "source.candidates.name=train", "source.score=student_entropy", name="student"))
    assert student["train"]["accounting"]["teacher_queries"] == 1280


def test_the_explorer_shows_where_the_adaptive_source_drew(digits_teacher, tmp_path):
    """draws.npz counts every pick per train row; the map carries them on train_subset points (checked
    against the log and heldout's own row selection) and the page offers them as colours."""
    import numpy as np
    import pandas as pd

    from conftest import run_fast
    from kdx.eval import heldout
    from kdx.explore import views
    from kdx.explore.page import page_data
    from kdx.probes import ProbeOptions, probe
    from kdx.rundir import DRAWS, load_run

    run_dir = run_fast(tmp_path, "distill.samples=1280", "source.name=adaptive", "source.candidates.name=train",
                       "source.score=student_entropy", name="drew")
    log = np.load(run_dir / DRAWS)
    assert log["counts"].sum() == 1280 and bool(log["train_pool"]) and int(log["steps"]) == 10
    drawn_rows = log["counts"] > 0
    assert np.all((log["mean_step"][drawn_rows] >= 0) & (log["mean_step"][drawn_rows] <= 9))
    probe(run_dir, ProbeOptions(on=["test", "train_subset"], regions=4, source_n=500, map_source_n=100,
                                map_epochs=20, resamples=20))
    df = pd.read_parquet(run_dir / "probes" / "map.parquet")
    sub = df[df["source"] == "train_subset"]
    run = load_run(run_dir)
    rows = heldout.train_subset_rows(run.data, run.cfg.eval.n, run.cfg.eval.seed).numpy()
    expect = log["counts"][rows[sub["item"].str.rsplit(":", n=1).str[1].astype(int).to_numpy()]]
    assert np.array_equal(sub["drawn"].to_numpy(), expect) and expect.sum() > 0
    assert df.loc[df["source"] == "test", "drawn"].isna().all()
    page = page_data(views.load_view(run_dir), [run_dir.name])
    assert "drawn" in page["color_by"] and "drawn_when" in page["cols"]
