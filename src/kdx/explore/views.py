"""What the explorer shows of one probed run: map.parquet's points, a thumbnail of each point's
input, the regions table and the class names; of a language-model run (LmView), the token probe's
tokens.npz and its context regions."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kdx import probes
from kdx.errors import KdxError
from kdx.eval import heldout
from kdx.explore import thumbs as th
from kdx.io import read_json, read_parquet_meta, reading
from kdx.data import load_dataset
from kdx.probes.probe import MAP_FORMAT
from kdx.probes.tokens import TOKENS_FORMAT
from kdx.rundir import DEVIATION, MAP, MAP_ARRAYS, METRICS, PROBES, REGIONS, TOKENS, load_run, read_run_config


TEXT_CHARS = 400  # of each decoded text input, what the page keeps


@dataclasses.dataclass
class View:
    name: str  # the run's directory name, shown in a study's run selector
    points: pd.DataFrame  # map.parquet: one row per point, `id` = row number
    thumbs: np.ndarray  # (N, h, w, c) uint8, row i the input of point i (text: (N, 0, 0, 1), none)
    lossy: bool  # thumbnails are photographs (WebP) rather than line plots (PNG)
    regions: pd.DataFrame  # regions.csv, most underfit first
    classes: list[str]
    texts: list[str] | None = None  # text data: point i's decoded input, shown instead of a thumbnail


@dataclasses.dataclass
class LmView:
    """A language-model run: tokens.npz's arrays (kdx.probes.tokens.explorer_arrays) and regions.csv."""
    name: str
    arrays: dict[str, np.ndarray]
    regions: pd.DataFrame


def _probe_or_explain(run_dir: Path, why: str, probe: bool, log) -> None:
    if not probe:
        raise KdxError(f"{run_dir} {why}: run `kdx probe {run_dir}` first (about a minute on Fashion-MNIST), "
                       "or pass --probe to have kdx explore run it")
    log(f"{run_dir} {why}: running `kdx probe {run_dir}` first")


def load_lm_view(run_dir: Path, probe: bool = False, log=print) -> LmView:
    """A current RUN/probes/tokens.npz (or the token probe run now when `probe`) and regions.csv."""
    path, fix = run_dir / PROBES / TOKENS, f"run `kdx probe {run_dir}` again"
    with reading(path, fix):
        fmt = int(np.load(path)["format"]) if path.exists() else None
    if fmt != TOKENS_FORMAT:
        _probe_or_explain(run_dir, f"has no {PROBES}/{TOKENS}" if fmt is None else
                          f"has a {PROBES}/{TOKENS} from an older kdx probe", probe, log)
        dev = run_dir / PROBES / DEVIATION  # probed before (a study: without the map): the same sets again
        on = read_json(dev, fix).get("options", {}).get("on") if dev.exists() else None
        probes.probe(run_dir, probes.ProbeOptions(on=on))
    with reading(path, fix):
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
    with reading(run_dir / PROBES / REGIONS, fix):
        regions = pd.read_csv(run_dir / PROBES / REGIONS)
    return LmView(run_dir.name, arrays, regions)


def check_probed(run_dir: Path, probe: bool = False, log=print) -> None:
    """A current map.parquet in RUN/probes, or probe the run now when `probe`, or say how to get one."""
    path = run_dir / PROBES / MAP
    with reading(path, f"run `kdx probe {run_dir} --remap` again"):
        meta = read_parquet_meta(path) if path.exists() else None
    have = path.with_name(MAP_ARRAYS).exists() and (meta or {}).get("format") == MAP_FORMAT
    if have:
        return
    why = f"has no {PROBES}/{MAP}" if meta is None else "has a map from an older kdx probe"
    _probe_or_explain(run_dir, why, probe, log)
    probes.probe(run_dir, probes.ProbeOptions(on=meta["on"]) if meta else None)


def load_view(run_dir, probe: bool = False, log=print) -> View | LmView:
    run_dir = Path(run_dir)
    if load_dataset(read_run_config(run_dir).data).modality == "lm":
        return load_lm_view(run_dir, probe, log)
    check_probed(run_dir, probe, log)
    probes_dir = run_dir / PROBES
    with reading(probes_dir / MAP, f"run `kdx probe {run_dir} --remap` again"):
        points = pd.read_parquet(probes_dir / MAP)
        meta = read_parquet_meta(probes_dir / MAP)
    run = load_run(run_dir)
    data = run.data
    # The inputs again: evaluation points are rows of their held-out set (a function of data and
    # seed); the map's distillation inputs were kept by the probe in map_arrays.npz.
    inputs = []
    for source, g in points.groupby("source", sort=False):
        rows = torch.from_numpy(g["item"].str.rsplit(":", n=1).str[1].astype(np.int64).to_numpy(copy=True))
        if g["kind"].iloc[0] == "eval":
            x = heldout.load(source, data, meta["eval_n"], meta["eval_seed"]).x[rows]
        else:
            arr = np.load(probes_dir / MAP_ARRAYS)["distill_x"]
            x = torch.from_numpy(arr.astype(np.float32 if arr.dtype.kind == "f" else np.int64))[rows]
        inputs.append((g["id"].to_numpy(), data.decode(x) if data.is_text else th.images(x, data.lo, data.hi)))
    with reading(probes_dir / REGIONS, f"run `kdx probe {run_dir}` again"):
        regions = pd.read_csv(probes_dir / REGIONS)
    if data.is_text:  # the decoded text is the point's "thumbnail"
        texts = [""] * len(points)
        for ids, t in inputs:
            for i, s in zip(ids.tolist(), t):
                texts[i] = s[:TEXT_CHARS]
        return View(run_dir.name, points, np.zeros((len(points), 0, 0, 1), np.uint8), False, regions,
                    list(data.classes), texts)
    first = inputs[0][1]
    thumbs = np.zeros((len(points), *first.shape[1:]), np.uint8)
    for ids, t in inputs:
        thumbs[ids] = t
    return View(run_dir.name, points, thumbs, data.is_image, regions, list(data.classes))


def run_dirs(target: Path) -> list[Path]:
    """A run directory, or a study's (DIR/studies/NAME) finished runs in name order."""
    target = Path(target)
    if (target / METRICS).exists():
        return [target]
    runs = sorted(p for p in (target / "runs").glob("*") if (p / METRICS).exists())
    if not runs:
        raise KdxError(f"{target} is neither a finished run (no {METRICS}) nor a study with finished runs "
                       f"(no runs/*/{METRICS}): pass a directory that `kdx run` or `kdx study` wrote")
    return runs
