"""Any torchvision classification architecture, at its own input size, with your trained weights.

`teacher.model={name: torchvision, arch: resnet50, weights: FILE}` builds `torchvision.models.get_model(arch)`
with as many classes as FILE's final layer has (a state dict as torchvision publishes them) and
loads it; inputs are resized inside the model to the architecture's size (grey repeated to RGB) and
normalised, so kdx keeps feeding raw [0, 1] images. Without weights it is an untrained network
(num_classes = the dataset's), trained like any other kdx model. Unlike `resnet18` /
`mobilenet_v3_small` (small-image stems), the architecture is unchanged.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Optional

import torch

from kdx.data.base import Dataset
from kdx.errors import KdxError
from kdx.models.base import read_state_dict
from kdx.models.pretrained import PretrainedClassifier, Preprocess, files_digest, require_image_channels
from kdx.registry import MODELS

NORMALIZE = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "none": ((0.0,) * 3, (1.0,) * 3)}
SENTINEL = 7919  # a class count no layer has by chance: the final layers are those with this many outputs


def architectures() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def check_arch(arch: str) -> None:
    names = architectures()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=5, cutoff=0.5)
        raise KdxError(f"model 'torchvision': unknown arch '{arch}'" + (f"; did you mean {', '.join(close)}?" if close else "")
                       + f" ({len(names)} classification architectures: torchvision.models.list_models("
                         f"module=torchvision.models), e.g. {', '.join(names[:6])}, ...)")


def expected_input(arch: str) -> tuple[int, str, int]:
    """(image size, interpolation, minimum size) of the arch's default published weights; (224, bilinear, 1)
    where torchvision knows none. Read from the weights enum: nothing is downloaded."""
    import torchvision

    try:
        w = torchvision.models.get_model_weights(arch).DEFAULT
        kw = getattr(w.transforms, "keywords", {})
        size = int(kw.get("crop_size", 224))
        interp = kw.get("interpolation")
        interp = interp.value if interp is not None else "bilinear"
        min_size = int(min(w.meta.get("min_size", (1, 1))))
        return size, interp if interp in ("nearest", "bilinear", "bicubic") else "bilinear", min_size
    except Exception:  # noqa: BLE001 - an arch without registered weights
        return 224, "bilinear", 1


def final_layers(arch: str, kwargs: dict) -> list[str]:
    """Names of the layers that output the classes (the last one is the final classifier; Inception
    and GoogLeNet also have auxiliary ones), found on a meta-device copy built with SENTINEL classes."""
    import torchvision

    try:
        with torch.device("meta"):
            net = torchvision.models.get_model(arch, num_classes=SENTINEL, **kwargs)
    except Exception:  # noqa: BLE001 - an architecture that cannot be built on the meta device
        net = torchvision.models.get_model(arch, num_classes=SENTINEL, **kwargs)
    return [n for n, m in net.named_modules() if getattr(m, "out_features", getattr(m, "out_channels", None)) == SENTINEL]


def load_state(path: str) -> dict[str, torch.Tensor]:
    return read_state_dict(Path(path).expanduser(), "model 'torchvision': weights")


@MODELS.register(name="torchvision", context=("data",))
def torchvision_pretrained(data: Dataset, arch: str, weights: Optional[str] = None, image_size: Optional[int] = None,
                           normalize: str = "imagenet") -> PretrainedClassifier:
    """Any torchvision classifier (arch) at its own input size, with your state-dict weights; resized inside."""
    import torchvision

    require_image_channels(data, "torchvision", 3)
    check_arch(arch)
    if normalize == "data":
        mean, std = tuple(data.mean.tolist()), tuple(data.std.tolist())
        mean, std = (mean * 3, std * 3) if len(mean) == 1 else (mean, std)
    elif normalize in NORMALIZE:
        mean, std = NORMALIZE[normalize]
    else:
        raise KdxError(f"model 'torchvision': normalize must be one of {', '.join([*NORMALIZE, 'data'])} "
                       f"(imagenet: torchvision's published weights; data: the dataset's own statistics), got '{normalize}'")
    size, interp, min_size = expected_input(arch)
    size = image_size or size
    if size < min_size:
        raise KdxError(f"model 'torchvision': {arch} needs image_size >= {min_size}, got {size}")
    # ViT and MaxViT fix their input size at construction
    kwargs = {"image_size": size} if arch.startswith("vit_") else {"input_size": (size, size)} if arch.startswith("maxvit") else {}
    heads = final_layers(arch, kwargs)
    if not heads:
        raise KdxError(f"model 'torchvision': cannot find {arch}'s final classification layer")
    head = heads[-1]

    digest, state = None, None
    num_classes = data.num_classes
    if weights:
        state = load_state(weights)
        key = f"{head}.weight"
        if key not in state:
            raise KdxError(f"model 'torchvision': {weights} has no '{key}' (the final layer of {arch}); is it a "
                           f"{arch} state dict? Its first keys: {', '.join(list(state)[:5])}")
        num_classes = int(state[key].shape[0])
        if num_classes != data.num_classes:
            raise KdxError(f"model 'torchvision': {weights} classifies {num_classes} classes (its final layer "
                           f"'{head}' has {num_classes} outputs), but dataset '{data.name}' has {data.num_classes}; "
                           f"kdx needs the model's outputs in the dataset's class order")
        digest = files_digest([Path(weights).expanduser()])
    net = torchvision.models.get_model(arch, num_classes=num_classes, **kwargs)
    if state is not None:
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            lines = [s.strip() for s in str(e).splitlines() if s.strip()]
            raise KdxError(f"model 'torchvision': {weights} does not fit {arch}: {' '.join(lines[:3])[:600]}") from None
    net.eval()
    prep = Preprocess(channels=3, resize=("exact", size, size), interpolation=interp, mean=tuple(mean), std=tuple(std))
    return PretrainedClassifier(net, prep, data.input_shape[0], head, "", None, "torchvision", digest)
