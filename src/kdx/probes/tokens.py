"""`kdx probe RUN` for a language-model run: the seed paper's deviation plot asked of next tokens.

At every counted position of each held-out set (held-out corpus windows, the teacher's and the
student's own completions of held-out prompts), x = phi(p_teacher), y = phi(p_student) with
phi(p) = log(p / (1 - p)), p on the teacher's top-1 next token and on the actual next token (the image
probe's two class choices, `teacher_top1` and `ground_truth`). The least-squares slope of y on x, the
mean deviation y - x by teacher-confidence decile and by teacher-entropy decile, and the slope by
position in the sequence and by the token's train frequency (rare / middle / common thirds of the
positions). Beside least squares, the robust estimators (deviation.robust: the slope through the decile medians and
the orthogonal fit). Every interval resamples whole sequences, never positions: the positions of one sequence
are not independent, so a one-sequence set gets a degenerate (zero-width) interval, not a narrow one.
Context regions: faiss k-means over the teacher's last hidden state at every counted position of all
sets (PCA first, as for classifiers), each region with its mean KL(t||s), mean deviation, agreement,
the next tokens that dominate it and example contexts, ranked by mean KL.
Writes RUN/probes/deviation.json (the image probe's layout: distributions -> class choice -> fit),
deviation_{set}.png and regions.csv; the study summary reads the slopes as it does for classifiers.
For `kdx explore`, tokens.npz (`explorer_arrays`): the first PAGE_SEQUENCES sequences of each set (a bound
on the page's size, whatever eval.n is), their tokens, and per counted position KL(t||s), the deviation,
both models' top-TOP_K next tokens, the region and a 2-D UMAP of the teacher's context state.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd
import torch

from kdx.eval.lm import heldout_tokens
from kdx.io import save_arrays, save_csv, write_json
from kdx.neighbors import Projection, kmeans, self_neighbors
from kdx.probes import deviation, maps, regions
from kdx.rundir import DEVIATION, DEVIATION_PLOT, PROBES, REGIONS, TOKENS

DEFAULT_ON = ["test_subset", "teacher_samples", "student_samples"]
POSITION_EDGES = (0, 16, 32, 64)  # buckets [0, 16), [16, 32), [32, 64), [64, context)
FREQUENCY_BANDS = ("rare", "middle", "common")
CONTEXT_TOKENS = 8  # tokens of context shown before the position in a region's examples
TOP_K = 5  # next tokens of each model kept per position for the explorer
PAGE_SEQUENCES = 64  # sequences of each held-out set in tokens.npz (the explorer page's size bound)
TOKENS_FORMAT = 1  # bump when tokens.npz's arrays change meaning, so `kdx explore --probe` recomputes it


@torch.no_grad()
def token_points(teacher, student, x: torch.Tensor, mask: torch.Tensor, token_counts: torch.Tensor,
                 batch_size: int = 16) -> dict[str, dict[str, np.ndarray]]:
    """Per counted position, for each class choice: x, y and the chosen token's train count; under
    "positions", what both choices share: the sequence and position, the teacher's entropy (nats), KL(t||s),
    the teacher's last hidden state (`features`), both models' top-1 tokens, the actual next token, the
    total variation, and each model's TOP_K next tokens and their probabilities (`teacher_top`,
    `teacher_top_prob`, `student_top`, `student_top_prob`: (positions, TOP_K), most probable first)."""
    device = next(student.parameters()).device
    was = teacher.training, student.training
    teacher.eval()
    student.eval()
    cols = {c: {k: [] for k in ("x", "y", "count")} for c in deviation.CLASS_CHOICES}
    cols["positions"] = {k: [] for k in ("sequence", "position", "entropy", "kl", "features", "teacher_class",
                                         "student_class", "class", "disagreement", "teacher_top", "teacher_top_prob",
                                         "student_top", "student_top_prob")}
    for i in range(0, len(x), batch_size):
        xb, mb = x[i:i + batch_size].to(device), mask[i:i + batch_size].to(device)
        rows, positions = mb.nonzero(as_tuple=True)
        nxt = torch.cat([xb[:, 1:], xb[:, :1]], 1)[rows, positions]  # the actual next tokens
        zt, hidden = teacher(xb, return_features=True)
        zt, zs = zt[rows, positions].double(), student(xb)[rows, positions].double()
        lt, ls = torch.log_softmax(zt, -1), torch.log_softmax(zs, -1)
        per = cols["positions"]
        per["sequence"].append((rows + i).cpu().numpy())
        per["position"].append(positions.cpu().numpy())
        per["entropy"].append(-(lt.exp() * lt).sum(-1).cpu().numpy())
        per["kl"].append((lt.exp() * (lt - ls)).sum(-1).cpu().numpy())
        per["features"].append(hidden[rows, positions].float().cpu().numpy())
        per["teacher_class"].append(zt.argmax(-1).cpu().numpy())
        per["student_class"].append(zs.argmax(-1).cpu().numpy())
        per["class"].append(nxt.cpu().numpy())
        per["disagreement"].append((0.5 * (lt.exp() - ls.exp()).abs().sum(-1)).cpu().numpy())
        for who, logp in (("teacher", lt), ("student", ls)):
            top = logp.topk(min(TOP_K, logp.shape[-1]), -1)
            per[f"{who}_top"].append(top.indices.cpu().numpy())
            per[f"{who}_top_prob"].append(top.values.exp().float().cpu().numpy())
        for choice, cls in (("teacher_top1", zt.argmax(-1)), ("ground_truth", nxt)):
            c = cols[choice]
            c["x"].append(deviation.phi(zt, cls))
            c["y"].append(deviation.phi(zs, cls))
            c["count"].append(token_counts[cls.cpu()].numpy())
    teacher.train(was[0])
    student.train(was[1])
    return {choice: {k: np.concatenate(v) if v else np.zeros(0) for k, v in c.items()} for choice, c in cols.items()}


def context_regions(run, sets: dict[str, tuple[torch.Tensor, dict]], k: int, pca_dim: int,
                    seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """regions.csv for an LM run: k-means over the teacher's hidden states at the counted positions of all
    sets (`sets`: name -> (ids, token_points' result)), the region table of the classifier probe (tokens
    as classes) with each region's mean KL(t||s), ranked by it; examples are decoded contexts. Also each
    position's region, the sets' positions concatenated in order."""
    frames, feats = [], []
    for name, (ids, points) in sets.items():
        top, per = points["teacher_top1"], points["positions"]
        frames.append(pd.DataFrame({
            "item": [f"{name}:{q}:{p}" for q, p in zip(per["sequence"], per["position"])], "source": name,
            "class": per["class"], "teacher_class": per["teacher_class"], "student_class": per["student_class"],
            "disagreement": per["disagreement"], "deviation": top["y"] - top["x"], "kl": per["kl"],
            "coverage": np.nan}))
        feats.append(per["features"])
    frame = pd.concat(frames, ignore_index=True)
    features = np.concatenate(feats)
    frame["region"], _ = kmeans(Projection(features, pca_dim)(features), min(k, len(frame)), seed)
    tok = run.data.tokenizer
    names = tok.decode([[i] for i in range(run.data.vocab_size)])
    table = regions.region_table(frame, [repr(t) for t in names])
    table["mean_kl_teacher_student"] = table["region"].map(frame.groupby("region")["kl"].mean())
    table["dominant_next_tokens"] = [regions.share(frame.loc[frame.region == r, "class"], [repr(t) for t in names])
                                     for r in table["region"]]

    def context(item: str) -> str:  # the CONTEXT_TOKENS tokens before the position, then the next token
        name, q, p = item.rsplit(":", 2)
        row = sets[name][0][int(q)]
        before, nxt = tok.decode([row[max(0, int(p) + 1 - CONTEXT_TOKENS):int(p) + 1].tolist(), [int(row[int(p) + 1])]])
        return f"«{before}» → {nxt!r}"

    table["examples"] = [" | ".join(context(i) for i in frame.loc[frame.region == r, "item"].head(3)) for r in table["region"]]
    table = table.sort_values("mean_kl_teacher_student", ascending=False, kind="stable").reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    return table, frame["region"].to_numpy()


def explorer_arrays(run, sets: dict[str, tuple[torch.Tensor, dict]], region: np.ndarray, pca_dim: int, seed: int,
                    epochs: int | None = None) -> dict[str, np.ndarray]:
    """tokens.npz for `kdx explore`: the first PAGE_SEQUENCES sequences of each set (`sets` as for
    context_regions, `region` its per-position labels) with a counted position. Tokens are indices into
    `vocab` (each token decoded alone; only the tokens the page shows); sequence s is ids[s, :length[s]],
    row `row[s]` of set `set[s]`, its first counted position `start[s]` (a sample's prompt ends there). Per
    position: its sequence and position, KL(t||s), the deviation phi_s - phi_t on the teacher's top-1
    token, both models' TOP_K next tokens and probabilities, the region, and x, y: a UMAP of the teacher's
    context states (PCA to pca_dim first, as for the regions)."""
    per_seq, per_pos, offset = {k: [] for k in ("set", "row", "start", "length", "ids")}, [], 0
    width = max(len(ids[0]) for ids, _ in sets.values())
    for s, (name, (ids, points)) in enumerate(sets.items()):
        pos, top = points["positions"], points["teacher_top1"]
        n = len(pos["sequence"])
        rows = np.unique(pos["sequence"])[:PAGE_SEQUENCES]
        keep = np.isin(pos["sequence"], rows)
        seq_index = len(per_seq["row"]) + np.searchsorted(rows, pos["sequence"][keep])
        per_pos.append({"sequence": seq_index, "position": pos["position"][keep], "kl": pos["kl"][keep],
                        "deviation": (top["y"] - top["x"])[keep], "region": region[offset:offset + n][keep],
                        "features": pos["features"][keep],
                        **{k: pos[k][keep] for k in ("teacher_top", "teacher_top_prob", "student_top", "student_top_prob")}})
        offset += n
        for r in rows:
            counted = pos["position"][pos["sequence"] == r]
            length = int(counted.max()) + 2  # up to the last predicted token
            row = np.full(width, -1, np.int64)
            row[:length] = ids[r, :length].numpy()
            for k, v in (("set", s), ("row", int(r)), ("start", int(counted.min())), ("length", length), ("ids", row)):
                per_seq[k].append(v)
    cols = {k: np.concatenate([p[k] for p in per_pos]) for k in per_pos[0]}
    tokens = np.stack(per_seq["ids"])
    used = np.unique(np.concatenate([tokens.ravel(), cols["teacher_top"].ravel(), cols["student_top"].ravel()]))
    used = used[used >= 0]
    remap = lambda a: np.searchsorted(used, a).astype(np.int32)  # noqa: E731 - token id -> index into vocab
    tok = run.data.tokenizer
    names = tok.decode([[int(i)] for i in used])
    specials = {tok.eos_id: "⟨eos⟩", run.data.pad_id: "⟨pad⟩"}
    vocab = [specials.get(int(i), t) for i, t in zip(used, names)]
    feats = Projection(cols["features"], pca_dim)(cols["features"])
    xy = maps.embed(feats, *self_neighbors(feats, min(maps.UMAP_NEIGHBORS, len(feats) - 1)), seed, epochs)
    return {"format": np.array(TOKENS_FORMAT), "sets": np.array(list(sets)), "vocab": np.array(vocab),
            "vocab_id": used.astype(np.int64), "ids": np.where(tokens >= 0, remap(tokens), -1).astype(np.int32),
            **{k: np.array(v, np.int32) for k, v in per_seq.items() if k != "ids"},
            "sequence": cols["sequence"].astype(np.int32), "position": cols["position"].astype(np.int32),
            "kl": cols["kl"].astype(np.float32), "deviation": cols["deviation"].astype(np.float32),
            "region": cols["region"].astype(np.int32), "x": xy[:, 0], "y": xy[:, 1],
            **{k: remap(cols[k]) for k in ("teacher_top", "student_top")},
            **{k: cols[k].astype(np.float32) for k in ("teacher_top_prob", "student_top_prob")}}


def sequence_fit(x: np.ndarray, y: np.ndarray, sequence: np.ndarray, resamples: int = 1000, seed: int = 0) -> dict:
    """Slope and intercept of y on x over all positions, with intervals resampling whole sequences."""
    per_seq = deviation.moments(x, y, sequence)
    slope, intercept = deviation.ols_from_moments(per_seq.sum(0))
    boot_slope, boot_intercept = deviation.ols_from_moments(deviation.resample_counts(len(per_seq), resamples, seed) @ per_seq)
    return {"n": int(len(x)), "sequences": int(len(per_seq)), "slope": float(slope),
            "slope_ci": deviation.interval(boot_slope), "intercept": float(intercept),
            "intercept_ci": deviation.interval(boot_intercept), "frac_below_diagonal": float((y < x).mean())}


def sequence_deciles(key: np.ndarray, gap: np.ndarray, sequence: np.ndarray, resamples: int = 1000, seed: int = 0,
                     bins: int = 10) -> list[dict]:
    """Mean gap (y - x) in equal-count groups of positions sorted by `key`, intervals resampling sequences."""
    group = np.empty(len(key), dtype=int)
    for b, idx in enumerate(np.array_split(np.argsort(key, kind="stable"), bins)):
        group[idx] = b
    ids, inv = np.unique(sequence, return_inverse=True)
    sums, counts = np.zeros((len(ids), bins)), np.zeros((len(ids), bins))
    np.add.at(sums, (inv, group), gap)
    np.add.at(counts, (inv, group), 1)
    draws = deviation.resample_counts(len(ids), resamples, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (draws @ sums) / (draws @ counts)
    return [{"decile": b + 1, "n": int(counts[:, b].sum()), "key": [float(key[group == b].min()), float(key[group == b].max())],
             "mean_deviation": float(sums[:, b].sum() / counts[:, b].sum()), "ci": deviation.interval(boot[:, b])}
            for b in range(bins) if counts[:, b].sum() > 0]


def summarize(points: dict[str, np.ndarray], resamples: int, seed: int) -> dict:
    """One class choice's entry: the fit, deciles by teacher confidence and by entropy, slopes by position
    bucket and by frequency band."""
    x, y, seq = points["x"], points["y"], points["sequence"]
    out = {**sequence_fit(x, y, seq, resamples, seed), "robust": deviation.robust(x, y, seq, resamples=resamples, seed=seed),
           "deciles": sequence_deciles(x, y - x, seq, resamples, seed),
           "entropy_deciles": sequence_deciles(points["entropy"], y - x, seq, resamples, seed),
           "mean_kl_teacher_student": float(points["kl"].mean()), "by_position": {}, "by_frequency": {}}
    edges = [*POSITION_EDGES, int(points["position"].max()) + 1]
    for lo, hi in zip(edges, edges[1:]):
        keep = (points["position"] >= lo) & (points["position"] < hi)
        if keep.sum() > 2:
            out["by_position"][f"{lo}-{hi - 1}"] = sequence_fit(x[keep], y[keep], seq[keep], resamples, seed)
    order = np.argsort(points["count"], kind="stable")  # thirds of the positions by their token's train count
    for band, idx in zip(FREQUENCY_BANDS, np.array_split(order, len(FREQUENCY_BANDS))):
        if len(idx) > 2:
            out["by_frequency"][band] = {**sequence_fit(x[idx], y[idx], seq[idx], resamples, seed),
                                         "train_count": [int(points["count"][idx].min()), int(points["count"][idx].max())]}
    return out


def probe_tokens(run, opts, log=print) -> dict:
    """Write RUN/probes/deviation.json, deviation_{set}.png, regions.csv and (opts.map) tokens.npz for an
    LM run; return the report."""
    names, start = opts.on or DEFAULT_ON, time.perf_counter()
    report = {"phi": {"definition": "log(p / (1 - p)), computed from logits as z_c - logsumexp_{j != c} z_j",
                      "prob_clip": [deviation.PROB_CLIP, 1 - deviation.PROB_CLIP], "phi_max": deviation.PHI_MAX},
              "unit": "a counted position (next token); intervals resample whole sequences",
              "resamples": opts.resamples, "options": dataclasses.asdict(opts), "distributions": {}}
    sets = {}
    for name in names:
        x, mask = heldout_tokens(name, run.data, run.cfg.eval, run.teacher.model, run.student)
        points = token_points(run.teacher.model, run.student, x, mask, run.data.token_counts)
        sets[name] = (x, points)
        points = {c: {**points["positions"], **points[c]} for c in deviation.CLASS_CHOICES}
        fits = {choice: summarize(p, opts.resamples, opts.seed) for choice, p in points.items()}
        report["distributions"][name] = fits
        deviation.plot(run.dir / PROBES / DEVIATION_PLOT.format(name), name,
                       {c: (p["x"], p["y"]) for c, p in points.items()}, fits)
        log(f"{name}: {fits['teacher_top1']['n']} positions of {fits['teacher_top1']['sequences']} sequences, slope "
            f"(teacher top-1) {fits['teacher_top1']['slope']:.3f} {fits['teacher_top1']['slope_ci']}")
    report["seconds"] = {"deviation": round(time.perf_counter() - start, 3)}
    table, region = context_regions(run, sets, opts.regions, opts.pca_dim, opts.seed)
    save_csv(table, run.dir / PROBES / REGIONS)
    report["seconds"]["regions"] = round(time.perf_counter() - start - sum(report["seconds"].values()), 3)
    if opts.map:  # the explorer's arrays and their UMAP, as the map of a classifier run (studies probe without)
        save_arrays(run.dir / PROBES / TOKENS, **explorer_arrays(run, sets, region, opts.pca_dim, opts.seed, opts.map_epochs))
        report["seconds"]["explorer"] = round(time.perf_counter() - start - sum(report["seconds"].values()), 3)
    write_json(run.dir / PROBES / DEVIATION, report)
    return report
