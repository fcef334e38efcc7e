"""Closed loop: the student's deviations steer what it is distilled on while it trains (science.md,
"Choosing the inputs adaptively").

`adaptive` wraps any candidate source (`candidates: {name: train, augment: mixup}`, downstream,
noise, a synthesis pool, a mixture) and keeps, of every draw, the inputs an acquisition `score`
ranks highest. Scores, per candidate, higher = more wanted:

  kl, tv, disagree   KL(teacher || student) at T=1, total variation, top-1 disagreement. Need both
                     models on every candidate: the teacher's logits come from the candidate batch
                     when the source has them cached, else the teacher runs once on all candidates
                     and the chosen rows' logits go on in the Batch (the loop does not run it again).
  student_entropy,   the student's predictive entropy, 1 - (top-1 minus top-2 probability). Only the
  student_margin     student scores candidates: the teacher never sees a rejected one (the Batch
                     carries no teacher logits unless cached, so the loop runs it on the chosen only).
  teacher_entropy,   the teacher's entropy, and sigmoid(-phi) = 1 - p of the teacher's top-1 class,
  teacher_low_phi    phi(p) = log(p / (1 - p)) computed from the logits (a monotone, non-negative
                     transform of -phi: the seed paper's low-confidence points that students underfit).
  region             no candidates: faiss k-means regions of the teacher's penultimate features over
                     the candidate pool (fixed inputs only), as `kdx probe` computes them (PCA to
                     `pca_dim`, k-means++ seeds); a running KL per region (EMA with rate `ema` over the
                     batches drawn, from a no-grad student forward on each chosen batch); regions drawn
                     with probability (1 - floor) * s_r^beta / sum s^beta + floor / K, recomputed every
                     `refresh_every` draws, then inputs uniformly within each drawn region. A region
                     not yet seen scores as the highest seen one (optimism), so it gets tried.

`pick: topk` keeps the n highest of m = ceil(oversample * n) candidates (stable: ties go to the
earlier candidate); `pick: sample` draws n without replacement with probability proportional to
score^beta (Efraimidis-Spirakis keys u^(1/w) from the (seed, draw) generator).

Both models score in eval mode without gradients (`predict`, as evaluation sees the student; no
BatchNorm statistics move). Every random draw is a function of (seed, draw), and the candidate
stream's state, the region scores, probabilities and assignment, and the forward counts are in
`state_dict`, so a killed run resumes bit-identically. Under DDP, `skip` advances the candidate
stream exactly as `batch` does (scores of another rank's candidates change nothing here); the
region rule's `skip` makes and drops the batch so every rank's running scores stay equal.

Honest accounting (`accounting()`): `teacher_forwards` (inputs the teacher ran on here, for scoring
or region features), `student_forwards` (no-grad student forwards here), `candidates_drawn`. The
loop's own forwards (the student's training forward on every chosen input; the teacher on chosen
inputs that come without logits) are not included.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from kdx.data.base import Dataset, model_input
from kdx.errors import KdxError
from kdx.models import predict
from kdx.neighbors import Projection, kmeans
from kdx.registry import SOURCES
from kdx.sampling.base import Batch, PoolSource, Source, step_generator
from kdx.sampling.mixture import build_part

COUNTS = ("teacher_forwards", "teacher_cache_lookups", "student_forwards", "candidates_drawn")


def _probs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logp = logits.double().log_softmax(1)
    return logp, logp.exp()


def kl_rows(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """KL(softmax(t) || softmax(s)) per row, T = 1, in float64."""
    lt, pt = _probs(t)
    ls, _ = _probs(s)
    return (pt * (lt - ls)).sum(1).clamp_min(0)


def tv_rows(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return 0.5 * (_probs(t)[1] - _probs(s)[1]).abs().sum(1)


def disagree_rows(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return (t.argmax(1) != s.argmax(1)).double()


def entropy_rows(z: torch.Tensor) -> torch.Tensor:
    logp, p = _probs(z)
    return (-(p * logp).sum(1)).clamp_min(0)


def margin_score_rows(z: torch.Tensor) -> torch.Tensor:
    """1 - (p_top1 - p_top2): 1 where the top two classes tie, 0 where the top class takes all."""
    top2 = _probs(z)[1].topk(2, dim=1).values
    return 1 - (top2[:, 0] - top2[:, 1])


def low_phi_score_rows(z: torch.Tensor) -> torch.Tensor:
    """sigmoid(-phi) = 1 - p of the top-1 class, with phi = z_c - logsumexp_{j != c} z_j (as the probes
    compute it, float64), through exp(-softplus(phi)): no rounding of p to 1 for confident rows."""
    z = z.double()
    c = z.argmax(1, keepdim=True)
    phi = z.gather(1, c)[:, 0] - z.scatter(1, c, float("-inf")).logsumexp(1)
    return torch.exp(-torch.nn.functional.softplus(phi))


# name -> (needs the teacher on candidates, needs the student on candidates, score(t, s) per row)
SCORES = {
    "kl": (True, True, kl_rows),
    "tv": (True, True, tv_rows),
    "disagree": (True, True, disagree_rows),
    "student_entropy": (False, True, lambda t, s: entropy_rows(s)),
    "student_margin": (False, True, lambda t, s: margin_score_rows(s)),
    "teacher_entropy": (True, False, lambda t, s: entropy_rows(t)),
    "teacher_low_phi": (True, False, lambda t, s: low_phi_score_rows(t)),
    "region": (True, True, None),
}
PICKS = ("topk", "sample")


def pick_rows(scores: torch.Tensor, n: int, how: str, beta: float, g: torch.Generator | None) -> torch.Tensor:
    """Indices of the n rows to keep: the n highest scores (stable), or n drawn without replacement
    with probability proportional to score^beta (the top n of Efraimidis-Spirakis keys log(u) / w)."""
    if how == "topk":
        return torch.sort(scores, descending=True, stable=True).indices[:n]
    w = scores.double().clamp_min(0) ** beta  # beta = 0: uniform (0^0 = 1)
    u = torch.rand(len(scores), generator=g, device=scores.device, dtype=torch.float64).clamp_min(1e-300)
    keys = torch.log(u) / w.clamp_min(1e-300)  # a zero score is drawn only after every positive one
    return torch.sort(keys, descending=True, stable=True).indices[:n]


def power_floor(scores: torch.Tensor, beta: float, floor: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(1 - floor) * s^beta / sum s^beta + floor / K over the valid entries (0 elsewhere); entries not
    yet scored (NaN) take the highest scored one; none scored: uniform."""
    s = scores.double().clone()
    valid = torch.ones_like(s, dtype=torch.bool) if valid is None else valid
    seen = ~torch.isnan(s) & valid
    s = torch.where(seen, s, s[seen].max() if bool(seen.any()) else torch.ones((), dtype=s.dtype, device=s.device))
    w = torch.where(valid, s.clamp_min(0) ** beta, torch.zeros_like(s))
    uniform = valid.double() / valid.sum()
    q = w / w.sum() if float(w.sum()) > 0 else uniform
    return (1 - floor) * q + floor * uniform


class Scorer:
    """The models a source runs for scoring, in eval mode without gradients, with forwards counted."""

    def __init__(self):
        self.teacher = self.student = None
        self.counts = dict.fromkeys(COUNTS, 0)

    def run_teacher(self, x: torch.Tensor, features: bool = False):
        self.counts["teacher_forwards"] += len(x)
        return predict(self.teacher, x, batch_size=max(1024, len(x)), features=features)

    def run_student(self, x: torch.Tensor) -> torch.Tensor:
        self.counts["student_forwards"] += len(x)
        return predict(self.student, x, batch_size=max(1024, len(x)))

    def accounting(self, inner: Source | None = None) -> dict:
        """These counts plus the wrapped source's own (a synthesis candidate's forwards, say)."""
        out = dict(self.counts)
        for k, v in (inner.accounting() if inner is not None else {}).items():
            out[k] = out[k] + v if k in out and isinstance(v, (int, float)) else v
        return out


class AdaptiveSource(Source):
    def __init__(self, data: Dataset, seed: int, candidates: Source, *, score: str, pick: str, oversample: float,
                 beta: float, regions: int, floor: float, refresh_every: int, ema: float, pca_dim: int):
        super().__init__(data, seed)
        if score not in SCORES:
            raise KdxError(f"source 'adaptive': score '{score}' is unknown; valid: {', '.join(SCORES)}")
        if pick not in PICKS:
            raise KdxError(f"source 'adaptive': pick '{pick}' is unknown; valid: {', '.join(PICKS)}")
        # written as what must hold, so that a NaN fails too
        if not (oversample >= 1 and beta >= 0 and 0 <= floor <= 1 and 0 < ema <= 1 and min(refresh_every, regions,
                                                                                      pca_dim) >= 1):
            raise KdxError("source 'adaptive': needs oversample >= 1, beta >= 0, 0 <= floor <= 1, 0 < ema <= 1, "
                           f"refresh_every >= 1, regions >= 1 and pca_dim >= 1; got oversample={oversample}, "
                           f"beta={beta}, floor={floor}, ema={ema}, refresh_every={refresh_every}, regions={regions}, "
                           f"pca_dim={pca_dim}")
        if score == "region" and not (isinstance(candidates, PoolSource) and candidates.view is None):
            raise KdxError("source 'adaptive': score=region needs candidates with fixed inputs (a train or downstream "
                           f"pool without augmentation), got {type(candidates).__name__}"
                           + (f" with augment={candidates.view.name}" if isinstance(candidates, PoolSource) else ""))
        self.cand, self.score, self.pick = candidates, score, pick
        # region scores cluster the teacher's penultimate features
        self.needs_teacher_internals = candidates.needs_teacher_internals or score == "region"
        self.oversample, self.beta, self.k, self.floor = oversample, beta, regions, floor
        self.refresh_every, self.ema, self.pca_dim = refresh_every, ema, pca_dim
        self.has_labels, self.epoch_size = candidates.has_labels, candidates.epoch_size
        self.scorer = Scorer()
        # region rule: region of each pool input, running KL per region, the current draw probabilities
        self.assign = self.pool_logits = self.probs = None
        self.region_scores = torch.full((regions,), float("nan"), dtype=torch.float64)
        self.refreshed = -1  # draw // refresh_every of the last refresh
        # Where it drew (for the explorer): per pool row, times drawn and the sum of the steps it was drawn at
        self.pool_rows = len(candidates.x) if isinstance(candidates, PoolSource) else None
        self.drawn = self.drawn_steps = None

    def candidates_per_batch(self, n: int) -> int:
        return n if self.score == "region" else math.ceil(self.oversample * n)

    def setup(self, device, teacher_logits_fn, teacher=None, student=None) -> None:
        super().setup(device, teacher_logits_fn)
        self.cand.setup(device, teacher_logits_fn, teacher=teacher, student=student)
        self.scorer.teacher, self.scorer.student = teacher, student
        needs_teacher, needs_student, _ = SCORES[self.score]
        if needs_student and student is None:
            raise KdxError(f"source 'adaptive' with score={self.score} scores candidates with the student being "
                           "trained, so it cannot train a teacher; use it to distil a student")
        if needs_teacher and teacher is None:
            raise KdxError(f"source 'adaptive' with score={self.score} needs the teacher")
        self.region_scores = self.region_scores.to(device)
        if self.assign is not None:
            self.assign = self.assign.to(device)
            self._index()

    # ---- candidate scoring ------------------------------------------------------------------
    def batch(self, step: int, n: int) -> Batch:
        if self.score == "region":
            return self._region_batch(step, n)
        m = self.candidates_per_batch(n)
        cb = self.cand.batch(step, m)
        self.scorer.counts["candidates_drawn"] += len(cb.x)
        needs_teacher, needs_student, fn = SCORES[self.score]
        t = cb.teacher_logits
        if needs_teacher and t is None:
            t = self.scorer.run_teacher(cb.x)
        elif needs_teacher:  # every candidate's cached logits are read to score it
            self.scorer.counts["teacher_cache_lookups"] += len(cb.x)
        s = self.scorer.run_student(cb.x) if needs_student else None
        keep = pick_rows(fn(t, s), n, self.pick, self.beta, step_generator(self.seed, step, self.device, "adaptive"))
        if self.pool_rows is not None:
            self.log_draws(self.cand.last_indices[keep], step)
        if t is not None and not needs_teacher:  # cached logits of the chosen rows only
            self.scorer.counts["teacher_cache_lookups"] += len(keep)
        return Batch(cb.x[keep], None if cb.y is None else cb.y[keep], None if t is None else t[keep], counted=True)

    def skip(self, step: int, n: int) -> None:
        if self.score == "region":
            self._region_batch(step, n)  # the running scores must move on every rank alike
        else:
            self.cand.skip(step, self.candidates_per_batch(n))

    # ---- regions ----------------------------------------------------------------------------
    def _regions(self) -> None:
        """k-means regions of the teacher's features over the pool, once (kept in the state)."""

        logits, feats = self.scorer.run_teacher(self.cand.x, features=True)
        feats = feats.cpu().numpy()
        threads = torch.get_num_threads()  # faiss may drop OpenMP (torch's too) to 1 thread under load
        try:
            project = Projection(feats, self.pca_dim)
            assign, _ = kmeans(project(feats), self.k, seed=self.seed)
        finally:
            torch.set_num_threads(threads)
        self.assign = torch.as_tensor(assign, dtype=torch.long, device=self.device)
        self.pool_logits = self.cand.cached_logits if self.cand.cached_logits is not None else logits
        self._index()

    def _index(self) -> None:
        self.order = torch.argsort(self.assign, stable=True)
        self.sizes = torch.bincount(self.assign, minlength=self.k)
        self.starts = torch.cumsum(self.sizes, 0) - self.sizes

    def region_probabilities(self) -> torch.Tensor:
        return power_floor(self.region_scores, self.beta, self.floor, self.sizes > 0)

    def _region_batch(self, step: int, n: int) -> Batch:
        if self.assign is None:
            self._regions()
        if self.pool_logits is None:  # resumed: the assignment came from the checkpoint
            self.pool_logits = (self.cand.cached_logits if self.cand.cached_logits is not None
                                else self.scorer.run_teacher(self.cand.x))
        if self.probs is None or step // self.refresh_every != self.refreshed:
            self.probs, self.refreshed = self.region_probabilities(), step // self.refresh_every
        g = step_generator(self.seed, step, self.device, "region")
        r = torch.multinomial(self.probs.float(), n, replacement=True, generator=g)
        u = torch.rand(n, generator=g, device=self.device, dtype=torch.float64)
        within = torch.minimum((u * self.sizes[r]).long(), self.sizes[r] - 1)
        idx = self.order[self.starts[r] + within]
        self.log_draws(idx, step)
        x = model_input(self.cand.x[idx])
        t = self.pool_logits[idx]
        kl = kl_rows(t, self.scorer.run_student(x))
        self.scorer.counts["candidates_drawn"] += n
        self.scorer.counts["teacher_cache_lookups"] += n
        count = torch.bincount(r, minlength=self.k)
        mean = torch.zeros(self.k, dtype=torch.float64, device=self.device).index_add_(0, r, kl) / count.clamp_min(1)
        old = self.region_scores
        upd = torch.where(torch.isnan(old), mean, (1 - self.ema) * old + self.ema * mean)
        self.region_scores = torch.where(count > 0, upd, old)
        return Batch(x, None if self.cand.y is None else self.cand.y[idx], t, counted=True)

    # ---- where it drew -------------------------------------------------------------------------
    def log_draws(self, rows: torch.Tensor, step: int) -> None:
        if self.drawn is None:
            self.drawn = torch.zeros(self.pool_rows, dtype=torch.int64, device=self.device)
            self.drawn_steps = torch.zeros(self.pool_rows, dtype=torch.float64, device=self.device)
        self.drawn.index_add_(0, rows, torch.ones_like(rows))
        self.drawn_steps.index_add_(0, rows, torch.full(rows.shape, float(step), dtype=torch.float64, device=self.device))

    def draw_log(self) -> dict | None:
        """Per row of the candidate pool: times drawn, and the mean step of those draws (NaN if never);
        `train_pool` says whether the pool is the train set (the explorer maps it onto train_subset points)."""
        if self.drawn is None:
            return None
        counts = self.drawn.cpu()
        mean_step = (self.drawn_steps.cpu() / counts.clamp_min(1)).masked_fill(counts == 0, float("nan"))
        return {"counts": counts.numpy(), "mean_step": mean_step.numpy(),
                "train_pool": bool(self.cand.x is self.data.x_train or self.cand.x.data_ptr() == self.data.x_train.data_ptr())}

    # ---- state ------------------------------------------------------------------------------
    def accounting(self) -> dict:
        return self.scorer.accounting(self.cand)

    def state_dict(self) -> dict:
        state = {"candidates": self.cand.state_dict(), "counts": dict(self.scorer.counts),
                 "drawn": None if self.drawn is None else (self.drawn.cpu(), self.drawn_steps.cpu())}
        if self.score == "region":
            state["region"] = {
                "assign": None if self.assign is None else self.assign.to(torch.int32).cpu(),
                "scores": self.region_scores.cpu(), "refreshed": self.refreshed,
                "probs": None if self.probs is None else self.probs.cpu()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.cand.load_state_dict(state["candidates"])
        self.scorer.counts = {k: int(state["counts"].get(k, 0)) for k in COUNTS}
        if state.get("drawn") is not None:
            self.drawn, self.drawn_steps = (v.to(self.device) for v in state["drawn"])
        if "region" in state:
            reg = state["region"]
            self.region_scores = reg["scores"].to(self.device, torch.float64)
            self.refreshed = int(reg["refreshed"])
            self.probs = None if reg["probs"] is None else reg["probs"].to(self.device)
            if reg["assign"] is not None:
                self.assign = reg["assign"].to(self.device, torch.long)
                self._index()


@SOURCES.register(context=("data", "seed", "cache_dir"))
def adaptive(data: Dataset, seed: int, *, candidates: dict[str, Any] = {"name": "train"}, score: str = "kl",
             pick: str = "topk", oversample: float = 2.0, beta: float = 1.0, regions: int = 20, floor: float = 0.1,
             refresh_every: int = 10, ema: float = 0.2, pca_dim: int = 64,
             cache_dir: Path | None = None) -> AdaptiveSource:
    """Keep the candidates an acquisition score ranks highest (kl|tv|disagree|student_*|teacher_*|region)."""
    spec = dict(candidates)
    if "name" not in spec:
        raise KdxError("source 'adaptive' needs candidates: {name: SOURCE, ...} (e.g. {name: train, augment: mixup})")
    cand = build_part(spec, "source.candidates", data, seed, cache_dir=cache_dir)
    return AdaptiveSource(data, seed, cand, score=score, pick=pick, oversample=oversample, beta=beta, regions=regions,
                          floor=floor, refresh_every=refresh_every, ema=ema, pca_dim=pca_dim)
