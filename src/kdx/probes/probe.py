"""`kdx probe RUN`: run teacher and student once over the evaluation points and a stream of the
run's distillation inputs, then write RUN/probes/: deviation.json and plots, regions.csv/png,
map.parquet/png and map_arrays.npz (reused when present and made from the same inputs and models),
summary.json."""
from __future__ import annotations

import dataclasses
import hashlib
import time

import numpy as np
import pandas as pd
import torch

from kdx.errors import KdxError
from kdx.eval import heldout
from kdx.io import read_parquet_meta, save_arrays, save_csv, save_parquet, write_json
from kdx.models import predict
from kdx.neighbors import Projection, kmeans, search
from kdx.probes import deviation, maps, regions, tokens
from kdx.rundir import DEVIATION, DEVIATION_PLOT, DRAWS, MAP, MAP_ARRAYS, PROBES, REGIONS, STUDENT, SUMMARY, load_run
from kdx.trackers import report_figures

DEFAULT_ON = ["train_subset", "test"]
MAP_FORMAT = 3  # bump when map.parquet's columns change meaning, so stale maps are recomputed


@dataclasses.dataclass
class ProbeOptions:
    on: list[str] | None = None  # held-out distributions; None: DEFAULT_ON
    regions: int = 20  # k of k-means
    source_n: int = 60_000  # distillation inputs streamed for coverage (one Fashion-MNIST epoch)
    map: bool = True
    remap: bool = False  # recompute map.parquet even when a matching one exists
    map_source_n: int = 5_000  # of those, how many go on the map beside the evaluation points
    map_epochs: int | None = None  # UMAP epochs; None: UMAP's default (200 above 10k points)
    neighbors: int = 10  # neighbour list length in map.parquet
    pca_dim: int = 64  # faiss works on teacher features projected to this many dimensions
    resamples: int = 1000  # bootstrap resamples for the slope intervals
    seed: int = 0


@dataclasses.dataclass
class ModelOutputs:
    """One set of inputs seen by both models: teacher features (projected later) and logits."""

    features: np.ndarray
    teacher_logits: torch.Tensor
    student_logits: torch.Tensor  # of a source stream: its first student_n inputs only
    labels: torch.Tensor | None
    x: torch.Tensor | None = None  # the inputs themselves, where kept (a source stream's first student_n)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def check_features(model: torch.nn.Module, x: torch.Tensor, where: str) -> None:
    """Probes need the teacher's penultimate features from the same pass as its logits."""
    try:
        out = predict(model, x[:2], features=True)
        ok = isinstance(out, tuple) and out[1].ndim == 2 and len(out[1]) == len(out[0])
    except TypeError:
        ok = False
    if not ok:
        raise KdxError(f"the run's {where} ({type(model).__name__}) cannot give penultimate features: probes call "
                       "model(x, return_features=True) -> (logits, features). Use a kdx model (kdx list: models), "
                       "or wrap yours in kdx.models.base.Classifier (a body giving features, a linear head)")


def model_outputs(run, x: torch.Tensor, labels: torch.Tensor | None, student: bool = True,
                  features: bool = True) -> ModelOutputs:
    bs = run.cfg.eval.batch_size
    if features:
        t_logits, feats = predict(run.teacher.model, x, bs, features=True)
        feats = feats.cpu().numpy()
    else:  # a black-box teacher: its outputs only
        t_logits, feats = predict(run.teacher.model, x, bs), np.empty((len(x), 0), dtype=np.float32)
    s_logits = predict(run.student, x, bs).cpu() if student else None
    return ModelOutputs(feats, t_logits.cpu(), s_logits, labels)


def source_outputs(run, n: int, project, student_n: int) -> ModelOutputs:
    """The first n inputs of the run's source stream (the same draws as training from step 0), with
    features projected batch by batch so 60k x 1200-d features never sit in memory at once. The
    student sees only the first student_n (those go on the map): coverage needs the teacher alone."""
    src = run.source()
    src.setup(_device(run.teacher.model), None, teacher=run.teacher.model, student=run.student)  # synthesis needs both
    parts, step, got = [], 0, 0
    while got < n:
        b = src.batch(step, min(run.cfg.eval.batch_size, n - got))
        o = model_outputs(run, b.x, b.y.cpu() if b.y is not None and b.y.ndim == 1 else None, student=got < student_n)
        # the map's distillation inputs are kept: synthesised ones cannot be looked up again cheaply
        parts.append(dataclasses.replace(o, features=project(o.features), x=b.x.cpu() if got < student_n else None))
        step, got = step + 1, got + len(b.x)
    labels = [p.labels for p in parts]
    return ModelOutputs(np.concatenate([p.features for p in parts]), torch.cat([p.teacher_logits for p in parts]),
                   torch.cat([p.student_logits for p in parts if p.student_logits is not None] or [torch.empty(0)]),
                   torch.cat(labels) if all(v is not None for v in labels) else None,
                   torch.cat([p.x for p in parts if p.x is not None] or [torch.empty(0)]))


def point_frame(o: ModelOutputs, kind: str, source: str) -> pd.DataFrame:
    """Per-input columns shared by regions and the map. `item` names the input: '<distribution>:<i>' is
    row i of heldout.load(distribution, data, eval.n, eval.seed); 'distill-<source>:<i>' the i-th input
    of the run's source stream from step 0."""
    pt, ps = torch.softmax(o.teacher_logits.double(), 1), torch.softmax(o.student_logits.double(), 1)
    t_cls, s_cls = pt.argmax(1), ps.argmax(1)
    rows, t_phi = torch.arange(len(pt)), deviation.phi(o.teacher_logits, t_cls)
    return pd.DataFrame({
        "item": [f"{source}:{i}" for i in range(len(pt))], "kind": kind, "source": source,
        "class": (o.labels.numpy() if o.labels is not None else np.full(len(pt), -1)).astype(np.int64),
        "teacher_class": t_cls.numpy(), "teacher_prob": pt[rows, t_cls].numpy(),
        "student_class": s_cls.numpy(), "student_prob": ps[rows, s_cls].numpy(),
        "disagreement": (0.5 * (pt - ps).abs().sum(1)).numpy(),  # total variation
        "teacher_phi": t_phi, "deviation": deviation.phi(o.student_logits, t_cls) - t_phi,
    })


def _map_key(run, names: list[str], opts: ProbeOptions) -> dict:
    """What map.parquet depends on: the inputs, the models and the map's own options."""
    student = hashlib.blake2b((run.dir / STUDENT).read_bytes(), digest_size=8).hexdigest()
    return {"format": MAP_FORMAT, "on": names, "eval_n": run.cfg.eval.n, "eval_seed": run.cfg.eval.seed,
            "teacher": str(run.teacher.checkpoint), "student": student, "map_source_n": opts.map_source_n,
            "map_epochs": opts.map_epochs, "neighbors": opts.neighbors, "pca_dim": opts.pca_dim, "seed": opts.seed}


def probe(run, opts: ProbeOptions | None = None, log=print) -> dict:
    """Write RUN/probes/ for a FinishedRun (or a run directory); return summary.json's content."""
    opts = opts or ProbeOptions()
    run = run if hasattr(run, "teacher") else load_run(run)
    out_dir, data, seconds = run.dir / PROBES, run.data, {}
    if data.modality == "lm":  # per-token deviation slopes (kdx.probes.tokens)
        return tokens.probe_tokens(run, opts, log)
    data.require(("image", "signal", "text"), "kdx probe (per-class deviation slopes, regions, the map)",
                 "metrics.json's eval per held-out shift (probes of tables are not built yet; a study sets probe: false)")
    names = opts.on or DEFAULT_ON
    # a black box (TF-IDF + LR, a fitted scikit-learn model) has outputs but no features: its probe is the
    # deviation slopes alone, which need only the two models' probabilities; regions, coverage and the map need features
    black_box = bool(getattr(run.teacher.model, "black_box", False))
    if not black_box:
        check_features(run.teacher.model, data.x_test, "teacher model")
    clock = time.perf_counter()

    def lap(what):
        nonlocal clock
        seconds[what] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()

    evals = {}
    for name in names:
        ho = heldout.load(name, data, run.cfg.eval.n, run.cfg.eval.seed)
        evals[name] = model_outputs(run, ho.x, ho.y, features=not black_box)
    lap("eval_outputs")

    report = {"phi": {"definition": "log(p / (1 - p)), computed from logits as z_c - logsumexp_{j != c} z_j",
                      "prob_clip": [deviation.PROB_CLIP, 1 - deviation.PROB_CLIP], "phi_max": deviation.PHI_MAX},
              "resamples": opts.resamples, "distributions": {}}
    for name, o in evals.items():
        fits, points = deviation.summarize(o.teacher_logits, o.student_logits, o.labels, opts.resamples, opts.seed)
        report["distributions"][name] = fits
        deviation.plot(out_dir / DEVIATION_PLOT.format(name), name, points, fits)
    write_json(out_dir / DEVIATION, report)
    lap("deviation")
    if black_box:
        summary = {"run": str(run.dir), "on": names, "options": dataclasses.asdict(opts), "seconds": seconds,
                   "deviation_only": f"the teacher ({type(run.teacher.model.estimator).__name__}) is a black box: no "
                                     "features, so no regions, coverage or map"}
        write_json(out_dir / SUMMARY, summary)
        return summary

    project = Projection(np.concatenate([o.features for o in evals.values()]), opts.pca_dim)
    eval_feats = np.concatenate([project(o.features) for o in evals.values()])
    lap("pca")
    src = source_outputs(run, opts.source_n, project, opts.map_source_n if opts.map else 0)
    lap("source_outputs")

    points = pd.concat([point_frame(o, "eval", name) for name, o in evals.items()], ignore_index=True)
    points["coverage"] = regions.coverage(eval_feats, src.features)
    lap("coverage_knn")
    assign, centroids = kmeans(eval_feats, opts.regions, opts.seed)
    points["region"] = assign
    lap("kmeans")
    table = regions.region_table(points, data.classes)
    save_csv(table, out_dir / REGIONS)
    regions.plot(table, (out_dir / REGIONS).with_suffix(".png"))
    summary = {"run": str(run.dir), "on": names, "options": dataclasses.asdict(opts),
               "pca_explained_variance": project.explained,
               "coverage_vs_disagreement_spearman": regions.coverage_correlation(points)}
    lap("regions")

    if opts.map:
        summary["map"] = write_map(run, names, opts, points, eval_feats, src, centroids, log)
        lap("map")
    summary["seconds"] = seconds
    write_json(out_dir / SUMMARY, summary)
    report_figures(run.dir, run.cfg, sorted(out_dir.glob("*.png")))  # to the run's trackers (`report`), if any
    return summary


def adaptive_draws(run, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """For train_subset points of a run whose adaptive source drew from the train set: how often it drew
    each, and when (mean step / steps, 0..1); NaN elsewhere and for other runs."""
    drawn, when = np.full(len(frame), np.nan), np.full(len(frame), np.nan)
    path = run.dir / DRAWS
    if not path.exists():
        return drawn, when
    log = np.load(path)
    if not bool(log["train_pool"]):
        return drawn, when
    at = (frame["source"] == "train_subset").to_numpy()
    rows = frame.loc[at, "item"].str.rsplit(":", n=1).str[1].astype(np.int64).to_numpy()
    train_rows = heldout.train_subset_rows(run.data, run.cfg.eval.n, run.cfg.eval.seed).numpy()[rows]
    drawn[at] = log["counts"][train_rows]
    when[at] = log["mean_step"][train_rows] / max(int(log["steps"]), 1)
    return drawn, when


def write_map(run, names, opts, points, eval_feats, src: ModelOutputs, centroids, log) -> str:
    """map.parquet, map.png and map_arrays.npz (each map row's projected teacher features, and the
    distillation inputs on the map, for the explorer), or nothing when a map of the same inputs and
    models exists."""
    path, key = run.dir / PROBES / MAP, _map_key(run, names, opts)
    arrays = path.with_name(MAP_ARRAYS)
    if path.exists() and arrays.exists() and not opts.remap and read_parquet_meta(path) == key:
        log(f"{path}: made from the same inputs and models; reused (--remap recomputes it)")
        return "reused"
    m = min(opts.map_source_n, len(src.student_logits))
    sample = ModelOutputs(src.features[:m], src.teacher_logits[:m], src.student_logits[:m],
                     src.labels[:m] if src.labels is not None else None)
    distill = point_frame(sample, "distill", f"distill-{run.cfg.source['name']}")
    distill["coverage"] = 0.0  # each is itself a distillation input
    distill["region"] = search(centroids, sample.features, 1)[1][:, 0]
    feats = np.concatenate([eval_feats, sample.features])
    frame = pd.concat([points, distill], ignore_index=True)
    frame["drawn"], frame["drawn_when"] = adaptive_draws(run, frame)
    df = maps.build(feats, frame, opts.neighbors, opts.seed, opts.map_epochs)
    x = src.x[:m].numpy()  # float inputs as float16; token ids (text) exactly, as int32
    save_arrays(arrays, features=feats, distill_x=x.astype(np.float16 if x.dtype.kind == "f" else np.int32))
    save_parquet(df, path, key)
    maps.plot(df, run.data.classes, path.with_suffix(".png"))
    return "computed"
