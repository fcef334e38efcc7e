"""Synthesis pools (`kdx synth`): pay for synthesis once. Make N inputs with a synthesis source (inversion, adversarial,
langevin, boundary), save them with the teacher's logits and the method's parameters as a Hugging Face
dataset on disk, and distil any number of students from it with the `downstream` source:

    kdx synth configs/fashion_mnist.yaml source.name=inversion --n 10000 --out pools/inversion
    kdx run configs/fashion_mnist.yaml source.name=downstream source.dataset=hf source.args.path=pools/inversion

Images are stored as 8-bit PNGs (what the `hf` reader loads), so the pool is quantised to 1/255 before
the teacher's logits are taken: the stored logits are the teacher's on exactly the stored inputs.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from kdx.device import resolve_device
from kdx.distill.loop import distill
from kdx.errors import KdxError
from kdx.io import atomic_dir, write_json
from kdx.models import build_model, predict
from kdx.registry import SOURCES
from kdx.sampling.synthesis import SynthesisSource

TEST_ROWS = 1000  # the `hf` reader wants a test split; it holds a copy of the first rows, not held-out data


def synthesis_source(cfg, data) -> SynthesisSource:
    """The config's source, which must make inputs; built (its values checked) before any teacher work."""
    source = SOURCES.build(cfg.source, "source", data=data, seed=cfg.seed)
    if not isinstance(source, SynthesisSource):
        raise KdxError(f"kdx synth makes inputs with a synthesis source (source.name=inversion, adversarial, langevin "
                       f"or boundary); '{cfg.source['name']}' only reads inputs that exist already")
    return source


def synthesize_pool(cfg, data, teacher, n: int, *, source: SynthesisSource | None = None) -> dict:
    """N inputs from the config's source (or `source`, built from it by synthesis_source) with the teacher's
    logits on them, and how they were made.

    Sources that play against a student (adversarial, adaptive inversion) run the whole distillation
    (cfg.distill, at least long enough for N inputs) with a fresh config student, and keep the last N
    inputs made: the generator's outputs once the game has been played."""
    source = source or synthesis_source(cfg, data)
    batches = math.ceil(n / source.synth_batch)
    source.record = collections.deque(maxlen=batches)
    t0 = time.perf_counter()
    if source.needs_student:
        student = build_model(cfg.student.model, data, "student.model", cfg.seed)
        samples = max(cfg.distill.samples, batches * source.refresh_every * cfg.distill.batch_size)
        distill(student, source, dataclasses.replace(cfg.distill, samples=samples), teacher=teacher,
                desc=f"synth {source.method}")
    else:
        source.setup(resolve_device(cfg.distill.device), teacher.logits, teacher=teacher.model)
        for i in range(batches):
            source.refresh(i * source.refresh_every)  # the steps at which the loop would refresh its pool
    seconds = time.perf_counter() - t0
    x = torch.cat([b[0] for b in source.record])[-n:]
    logits = torch.cat([b[1] for b in source.record])[-n:]
    return {"x": x, "logits": logits, "seconds": seconds, "stats": source.stats()}


def save_pool(out: Path, data, x: torch.Tensor, teacher_model, params: dict) -> torch.Tensor:
    """Write the pool as a DatasetDict (train: the N inputs; test: a copy of the first rows) with columns
    image (or input, for signals; input_ids and text, for text), label (the teacher's top-1 class) and teacher_logits; the parameters
    go in the dataset's description and in synth.json. Returns the logits stored."""
    import datasets
    from PIL import Image

    if data.is_image:  # quantise to what an 8-bit image holds, then take the teacher's outputs on that
        u8 = (x * 255).round().clamp(0, 255).to(torch.uint8)
        logits = predict(teacher_model, u8).cpu()
        arrays = u8.permute(0, 2, 3, 1).numpy()
        inputs = {"image": [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arrays]}
        input_feature = {"image": datasets.Image()}
    elif data.is_text:  # token ids exactly, and their decoded text (read back with hf_text, text_column: text)
        logits = predict(teacher_model, x).cpu()
        inputs = {"input_ids": x.numpy().astype(np.int64), "text": data.decode(x)}
        input_feature = {"input_ids": datasets.List(datasets.Value("int64")), "text": datasets.Value("string")}
    else:
        logits = predict(teacher_model, x).cpu()
        inputs = {"input": x.numpy().astype(np.float32)}
        input_feature = {"input": datasets.Array2D(tuple(x.shape[1:]), "float32")}
    features = datasets.Features({**input_feature, "label": datasets.ClassLabel(names=list(data.classes)),
                                  "teacher_logits": datasets.List(datasets.Value("float32"))})
    info = datasets.DatasetInfo(description=json.dumps(params), features=features)
    columns = {**inputs, "label": logits.argmax(1).tolist(), "teacher_logits": logits.numpy()}
    train = datasets.Dataset.from_dict(columns, features=features, info=info)
    test = train.select(range(min(TEST_ROWS, len(train))))
    with atomic_dir(out) as tmp:  # whole or absent, a full disk named
        datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp))
        write_json(tmp / "synth.json", params)
    return logits
