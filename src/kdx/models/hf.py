"""Your own Hugging Face image classifier as a teacher (or student): a save_pretrained folder.

`teacher.model={name: hf, path: DIR}` loads any AutoModelForImageClassification saved with
`model.save_pretrained(DIR)` (and `processor.save_pretrained(DIR)`), from the local folder only.
The image processor's resize, center crop, rescale and normalisation run inside the model as
torch ops, so kdx keeps feeding raw [0, 1] images; logits come back in the dataset's class order
(the model's id2label matched to the dataset's class names, or `label_map`).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from kdx.data.base import Dataset
from kdx.errors import KdxError, first_line
from kdx.models.base import require_image
from kdx.models.pretrained import PretrainedClassifier, Preprocess, files_digest, require_image_channels
from kdx.registry import MODELS

HEAD_NAMES = ("classifier", "head", "fc", "score")  # what transformers calls the final layer
# PIL resampling codes (what processors store) -> torchvision interpolation; Lanczos falls back to
# bicubic as transformers' own torchvision backend does on GPU, box and hamming to bilinear.
RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bilinear"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".pt", ".pth", ".h5", ".msgpack")


def norm_label(s: Any) -> str:
    """Label names compared ignoring case, surrounding space and runs of spaces/underscores."""
    return re.sub(r"[\s_]+", " ", str(s)).strip().casefold()


def match_labels(classes: Sequence[str], labels: Sequence[str], label_map: Optional[dict] = None,
                 where: str = "model 'hf'") -> list[int]:
    """For each dataset class, the index of its label among the model's `labels`.

    A class is looked up under `label_map[class]` when given (dataset class name -> model label
    name), else under its own name; exact label names first, then names compared by `norm_label`.
    """
    label_map = {str(k): str(v) for k, v in (label_map or {}).items()}
    unknown = [k for k in label_map if k not in classes and norm_label(k) not in {norm_label(c) for c in classes}]
    if unknown:
        raise KdxError(f"{where}: label_map names {unknown}, which are not classes of the dataset "
                       f"(its classes: {list(classes)})")
    by_norm_key = {norm_label(k): v for k, v in label_map.items()}
    exact = {lab: i for i, lab in enumerate(labels)}
    by_norm: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_norm.setdefault(norm_label(lab), []).append(i)

    order, missing, ambiguous, taken = [], [], [], {}
    for c in classes:
        target = label_map.get(c, by_norm_key.get(norm_label(c), c))
        hits = [exact[target]] if target in exact else by_norm.get(norm_label(target), [])
        if len(hits) == 1:
            if hits[0] in taken:
                raise KdxError(f"{where}: dataset classes {taken[hits[0]]!r} and {c!r} both map to the model's label "
                               f"{labels[hits[0]]!r}; give each class its own label in label_map")
            taken[hits[0]] = c
            order.append(hits[0])
        elif hits:
            ambiguous.append(f"{c!r} ({', '.join(repr(labels[i]) for i in hits)})")
        else:
            missing.append(c if target == c else f"{c} (label_map: {target})")
    if missing or ambiguous:
        shown = ", ".join(map(repr, labels[:30])) + (f", ... ({len(labels)} in all)" if len(labels) > 30 else "")
        msg = f"{where}: the model's labels do not cover the dataset's classes."
        if missing:
            msg += f" No label for {', '.join(map(repr, missing))}."
        if ambiguous:
            msg += f" Several labels match {'; '.join(ambiguous)}."
        example = f"teacher.model.label_map.{classes[0]}={labels[0]!s}" if labels else "teacher.model.label_map.CLASS=LABEL"
        raise KdxError(f"{msg} The model's labels (config.id2label): {shown}. Names are matched ignoring case, "
                       f"spaces and underscores; map the others with `teacher.model.label_map` (dataset class -> "
                       f"model label; `student.model.label_map` for a student), e.g. `{example}`")
    return order


def find_head(net: nn.Module, num_labels: int) -> Optional[str]:
    """The final classification layer: a Linear with num_labels outputs, preferably in a module
    named classifier/head/fc/score (the last one in module order)."""
    linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_labels]
    preferred = [n for n in linears if any(part in HEAD_NAMES for part in n.split("."))]
    pick = preferred or linears
    return pick[-1] if pick else None


def _size_get(size, key):
    if size is None:
        return None
    return size.get(key) if hasattr(size, "get") else getattr(size, key, None)


def _interpolation(resample) -> str:
    if resample is None:
        return "bilinear"
    value = getattr(resample, "value", resample)
    if isinstance(value, str):  # a torchvision InterpolationMode
        return value if value in ("nearest", "bilinear", "bicubic") else "bilinear"
    return RESAMPLE.get(int(value), "bilinear")


def _per_channel(v, channels: int, default: float) -> list[float]:
    if v is None:
        return [default] * channels
    v = [float(a) for a in (v if isinstance(v, (list, tuple)) else [v])]
    return v * channels if len(v) == 1 else v


def processor_preprocess(proc, channels: int) -> Preprocess:
    """The image processor's resize / crop / rescale / normalise as a Preprocess (raw inputs in [0, 1])."""
    resize, crop = None, None
    if getattr(proc, "do_resize", True) and getattr(proc, "size", None) is not None:
        size = proc.size
        h, w, edge = _size_get(size, "height"), _size_get(size, "width"), _size_get(size, "shortest_edge")
        crop_pct = getattr(proc, "crop_pct", None)
        if edge and type(proc).__name__.startswith("Levit"):
            edge = int(256 / 224 * edge)  # LeViT resizes the short side to 256/224 of it, then crops
        if h and w:
            resize = ("exact", int(h), int(w))
        elif edge and crop_pct and not (type(proc).__name__.startswith("ConvNext") and edge >= 384):
            # ConvNeXt-style: resize the short side to edge / crop_pct, then crop edge x edge
            resize, crop = ("shortest", int(edge / crop_pct), 0), (int(edge), int(edge))
        elif edge and type(proc).__name__.startswith("ConvNext"):
            resize = ("exact", int(edge), int(edge))  # ConvNeXt at >= 384: warp, no crop
        elif edge:
            resize = ("shortest", int(edge), 0)
        else:
            raise KdxError(f"model 'hf': image processor {type(proc).__name__} has size {dict(size)}; kdx handles "
                           "height/width and shortest_edge sizes")
    if getattr(proc, "do_center_crop", False) and getattr(proc, "crop_size", None) is not None:
        ch, cw = _size_get(proc.crop_size, "height"), _size_get(proc.crop_size, "width")
        if ch and cw:
            crop = (int(ch), int(cw))
    # The processor sees pixels p = 255 x; the network sees (p * r - m) / s = (x - m / (255 r)) / (s / (255 r)).
    scale = 255.0 * float(proc.rescale_factor) if getattr(proc, "do_rescale", True) else 255.0
    if getattr(proc, "do_normalize", True):
        mean = _per_channel(getattr(proc, "image_mean", None), channels, 0.0)
        std = _per_channel(getattr(proc, "image_std", None), channels, 1.0)
    else:
        mean, std = [0.0] * channels, [1.0] * channels
    if getattr(proc, "do_rescale", True) and getattr(proc, "rescale_offset", False):  # EfficientNet: p * r - 1
        mean = [m + 1.0 for m in mean]
    if getattr(proc, "do_normalize", True) and getattr(proc, "include_top", False):  # EfficientNet: / std again
        std = [s * s for s in std]
    if len(mean) != channels or len(std) != channels:
        raise KdxError(f"model 'hf': the image processor normalises {len(mean)} channels, the model takes {channels}")
    return Preprocess(channels=channels, resize=resize, crop=crop, interpolation=_interpolation(getattr(proc, "resample", None)),
                      mean=tuple(m / scale for m in mean), std=tuple(s / scale for s in std),
                      flip_channels=bool(getattr(proc, "do_flip_channel_order", False)))


def check_against_processor(model: PretrainedClassifier, proc, data: Dataset) -> Optional[str]:
    """Run the processor itself on two random inputs; a message when kdx's torch ops give other values."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, model.prep.channels, *data.input_shape[1:], generator=g)  # channels that differ
    with torch.no_grad():
        ours = model.resize_normalise(x)
        pixels = x * 255.0
    try:
        ref = proc(images=list(pixels), return_tensors="pt")["pixel_values"].float()
    except Exception:  # noqa: BLE001 - a processor that cannot take tensors: nothing to compare
        return None
    if ref.shape != ours.shape:
        return f"shape {tuple(ours.shape[1:])} where the processor gives {tuple(ref.shape[1:])}"
    diff = float((ref - ours).abs().max())
    return f"values up to {diff:.3g} away from the processor's" if diff > 1e-3 else None


def _load_dir(path: str) -> Path:
    d = Path(path).expanduser()
    if not path:
        raise KdxError("model 'hf': set `teacher.model.path` to a folder written by model.save_pretrained(DIR)")
    if not d.is_dir():
        hint = ""
        if not path.startswith(("/", ".", "~")) and path.count("/") == 1:
            hint = (f" kdx loads models from local folders only: on a machine with network run "
                    f"`AutoModelForImageClassification.from_pretrained('{path}').save_pretrained(DIR)` and "
                    f"`AutoImageProcessor.from_pretrained('{path}').save_pretrained(DIR)`, copy DIR here and pass path=DIR.")
        raise KdxError(f"model 'hf': folder {d} does not exist; expected a folder written by "
                       f"save_pretrained holding config.json and the weights (model.safetensors).{hint}")
    if not (d / "config.json").is_file():
        raise KdxError(f"model 'hf': {d} has no config.json (looked for {d / 'config.json'}); point path at the "
                       f"folder written by model.save_pretrained(DIR) (it holds config.json, model.safetensors and, "
                       f"from processor.save_pretrained(DIR), preprocessor_config.json)")
    return d


@MODELS.register(context=("data",))
def hf(data: Dataset, path: str, label_map: Optional[dict[Any, str]] = None) -> PretrainedClassifier:
    """Your trained transformers image classifier (save_pretrained folder at path), its processor applied inside."""
    require_image(data, "model 'hf'")
    d = _load_dir(path)
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    try:
        net, info = AutoModelForImageClassification.from_pretrained(d, local_files_only=True, dtype=torch.float32,
                                                                    output_loading_info=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a bad folder
        raise KdxError(f"model 'hf': cannot load {d} as an AutoModelForImageClassification "
                       f"({type(e).__name__}: {first_line(e, 10_000)}); re-save the classifier "
                       "with model.save_pretrained(DIR)") from None
    untrained = sorted(info.get("missing_keys") or []) + sorted(str(k[0] if isinstance(k, tuple) else k)
                                                                for k in info.get("mismatched_keys") or [])
    if untrained:  # transformers would initialise those at random: not the classifier the user trained
        raise KdxError(f"model 'hf': {d} has no trained weights for {', '.join(untrained[:6])}"
                       f"{', ...' if len(untrained) > 6 else ''} (transformers would start them at random): save the "
                       f"fine-tuned classifier itself (AutoModelForImageClassification...save_pretrained), not a base model")
    net.eval()
    config = net.config
    channels = int(getattr(config, "num_channels", 3) or 3)
    require_image_channels(data, "hf", channels)
    labels = [str(config.id2label.get(i, config.id2label.get(str(i), f"LABEL_{i}"))) for i in range(config.num_labels)]
    order = match_labels(data.classes, labels, label_map)

    proc = None
    if (d / "preprocessor_config.json").is_file():
        try:
            proc = AutoImageProcessor.from_pretrained(d, local_files_only=True)
        except Exception as e:  # noqa: BLE001
            raise KdxError(f"model 'hf': cannot load the image processor in {d / 'preprocessor_config.json'} "
                           f"({type(e).__name__}: {first_line(e, 10_000)}); re-save it with "
                           "processor.save_pretrained(DIR)") from None
        prep = processor_preprocess(proc, channels)
    else:
        size = getattr(config, "image_size", None)
        size = (size, size) if isinstance(size, int) else tuple(size) if size else None
        prep = Preprocess(channels=channels, resize=("exact", *size) if size else None,
                          mean=(0.0,) * channels, std=(1.0,) * channels)
        print(f"kdx: model 'hf': {d} has no preprocessor_config.json (save the processor with "
              f"processor.save_pretrained(DIR)); feeding [0, 1] images{f', resized to {size[0]}x{size[1]}' if size else ''}, "
              "not normalised", file=sys.stderr)

    head = find_head(net, config.num_labels)
    hint = "" if head else (f"no nn.Linear with {config.num_labels} outputs (the classification head, usually "
                            f"a module named 'classifier') in {type(net).__name__}")
    files = [f for f in d.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES]
    model = PretrainedClassifier(net, prep, data.input_shape[0], head, hint, order, "hf", files_digest(files))
    if proc is not None:
        off = check_against_processor(model, proc, data)
        if off:
            print(f"kdx: model 'hf': kdx's in-model preprocessing ({prep.describe()}) gives {off} "
                  f"({type(proc).__name__} in {d}); the teacher's outputs may differ from the processor's pipeline",
                  file=sys.stderr)
    return model
