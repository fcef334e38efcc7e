"""Teachers: trained with the same loop (one-hot loss), cached by a hash of everything that defines
them; and the teacher-output cache, keyed by the exact bytes of the inputs (never by index)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from kdx.config import RunConfig
from kdx.data.base import Dataset
from kdx.data.text import cache_dir as cache_folder
from kdx.device import prepare_model, resolve_device
from kdx.distill.loop import CHECKPOINT, distill
from kdx.errors import KdxError
from kdx.io import read_json, reading, save_torch, write_json
from kdx.models import Classifier, build_model, load_weights, predict
from kdx.models.blackbox import load_estimator, save_estimator
from kdx.models.ensemble import EnsembleClassifier
from kdx.models.gpt import next_token_accuracy, top_k_log_probs
from kdx.registry import SOURCES

TEACHER_FORMAT = 1  # bump when the teacher recipe's meaning changes, to invalidate caches


def cache_root(cfg: RunConfig) -> Path:
    return cache_folder(cfg.cache_dir)


def damaged_cache(folder: Path) -> str:
    """The fix for a damaged file in a teacher's cache folder. (Not retrained silently: the user learns that
    the cache was damaged, and deleting the folder is always safe: the next run trains or loads it again.)"""
    return f"delete the teacher cache folder {folder} (the next run rebuilds it)"


class TeacherLogits:
    """Teacher logits for stored inputs, cached on disk by a hash of the inputs' exact bytes."""

    def __init__(self, teacher: torch.nn.Module, cache_dir: Path | None, batch_size: int = 1024):
        self.teacher, self.cache_dir, self.batch_size = teacher, cache_dir, batch_size

    def __call__(self, x_stored: torch.Tensor) -> torch.Tensor:
        device = next(self.teacher.parameters()).device
        key = hashlib.blake2b(x_stored.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()
        key += f"-{tuple(x_stored.shape)}".replace(" ", "")
        path = self.cache_dir / f"logits-{key}.pt" if self.cache_dir else None
        if path and path.exists():
            with reading(path, damaged_cache(self.cache_dir)):
                return torch.load(path, map_location=device, weights_only=True)
        logits = predict(self.teacher, x_stored, self.batch_size)
        if path:
            save_torch(path, logits.cpu())
        return logits

    def top_k(self, x_stored: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """LM: the teacher's k largest log-probabilities per position of token windows (N, L) and their ids
        (DistillKit's offline format), cached on disk by the inputs' bytes and k like the full logits."""
        key = hashlib.blake2b(x_stored.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()
        path = self.cache_dir / f"top{k}-{key}-{tuple(x_stored.shape)}.pt".replace(" ", "") if self.cache_dir else None
        if path and path.exists():
            with reading(path, damaged_cache(self.cache_dir)):
                values, ids = torch.load(path, weights_only=True)
                return values, ids
        values, ids = top_k_log_probs(self.teacher, x_stored, k)
        if path:
            save_torch(path, (values, ids))
        return values, ids


@dataclasses.dataclass
class Teacher:
    model: Classifier
    checkpoint: Path
    test_acc: float
    logits: TeacherLogits  # logits for stored inputs, cached on disk
    members: list[dict] = dataclasses.field(default_factory=list)  # an ensemble's: arch, test_acc, checkpoint


BLACK_BOX_FILE = "teacher.skops"  # a black-box teacher kdx fit, in its cache folder


def teacher_key(cfg: RunConfig, recipe: bool = True) -> str:
    """The hash of what defines a teacher kdx trains; a black box's fit ignores the loop's recipe (recipe=False)."""
    ident = {"data": cfg.data, "model": cfg.teacher.model, "train": dataclasses.asdict(cfg.teacher.train) if recipe else None,
             "seed": cfg.teacher.seed, "format": TEACHER_FORMAT}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


def user_teacher_key(cfg: RunConfig, weights_digest: str) -> str:
    """A user's teacher is its weights' content (not their file names), on this data, under this model spec."""
    spec = {k: v for k, v in cfg.teacher.model.items() if k not in ("path", "weights")}
    ident = {"data": cfg.data, "model": spec, "weights": weights_digest, "format": TEACHER_FORMAT}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


def get_teacher(cfg: RunConfig, data: Dataset, progress_desc: str = "teacher") -> Teacher:
    """Load the user's checkpoint, or the cached teacher, or train it (resuming a killed training); a black
    box is fit (or its fitted file loaded) instead, an ensemble's members each got and cached on their own."""
    if cfg.teacher.model["name"] == "ensemble":
        return ensemble_teacher(cfg, data, progress_desc)
    device = resolve_device(cfg.distill.device)
    model = build_model(cfg.teacher.model, data, "teacher.model", cfg.teacher.seed)
    if cfg.teacher.checkpoint and getattr(model, "black_box", False):
        raise KdxError("teacher.checkpoint holds torch weights; a black-box teacher's fitted file goes in "
                       "teacher.model: {name: sklearn_file, path: FILE}")
    if cfg.teacher.checkpoint:
        ckpt = Path(cfg.teacher.checkpoint)
        load_weights(model, ckpt, "teacher.checkpoint")
        out_dir = cache_root(cfg) / "teachers" / f"user-{user_teacher_key(cfg, hashlib.sha256(ckpt.read_bytes()).hexdigest())}"
    elif getattr(model, "arrives_trained", False):  # hf, torchvision or timm with weights: used as is, never trained here
        spec = cfg.teacher.model
        ckpt = Path(spec.get("path") or spec.get("weights") or spec.get("checkpoint_file"))  # hf, torchvision, timm
        out_dir = cache_root(cfg) / "teachers" / f"user-{user_teacher_key(cfg, model.weights_digest)}"
        out_dir.mkdir(parents=True, exist_ok=True)
    elif getattr(model, "black_box", False):  # fit by kdx, cached as skops
        out_dir = cache_root(cfg) / "teachers" / f"{cfg.teacher.model['name']}-{teacher_key(cfg, recipe=False)}"
        ckpt = out_dir / BLACK_BOX_FILE
        if ckpt.exists():
            try:
                model.estimator, model.fitted = load_estimator(ckpt, False, "teacher cache", own_cache=True), True
            except KdxError as e:
                raise KdxError(f"{e}; or {damaged_cache(out_dir)}") from None
        else:
            model.fit(data.x_train, data.y_train, cfg.teacher.seed)
            save_estimator(model, ckpt)
            write_json(out_dir / "recipe.json", {"data": cfg.data, "model": cfg.teacher.model, "seed": cfg.teacher.seed})
    else:
        out_dir = cache_root(cfg) / "teachers" / f"{cfg.teacher.model['name']}-{teacher_key(cfg)}"
        ckpt = out_dir / "teacher.pt"
        if ckpt.exists():
            with reading(ckpt, damaged_cache(out_dir)):
                model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["model"])
        else:
            recipe = cfg.teacher.train
            loop_cfg = recipe.loop_config(len(data.x_train), cfg.distill)
            spec = {"name": "corpus"} if data.modality == "lm" else {"name": "train", "augment": recipe.augment}
            source = SOURCES.build(spec, "teacher.train.augment", data=data, seed=cfg.teacher.seed,
                                   cache_dir=cache_root(cfg))
            out_dir.mkdir(parents=True, exist_ok=True)
            write_json(out_dir / "recipe.json", {"data": cfg.data, "model": cfg.teacher.model,
                                                 "train": dataclasses.asdict(recipe), "seed": cfg.teacher.seed})
            stats = distill(model, source, loop_cfg, run_dir=out_dir, resume=True, desc=progress_desc)
            save_torch(ckpt, {"model": model.state_dict(), "train": stats})
            (out_dir / CHECKPOINT).unlink(missing_ok=True)
    model = prepare_model(model, device, data.is_image).eval().requires_grad_(False)
    logits = TeacherLogits(model, out_dir)
    return Teacher(model, ckpt, test_accuracy(model, logits, data, out_dir, ckpt), logits)


def ensemble_teacher(cfg: RunConfig, data: Dataset, progress_desc: str) -> Teacher:
    """teacher.model {name: ensemble, members: [...], combine}: member i is the teacher that spec names, with
    teacher.seed + i, trained (or fit, or loaded) and cached on its own; the ensemble combines their logits."""
    spec = cfg.teacher.model
    members = []
    for i, member in enumerate(spec["members"]):
        sub = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, model=member, seed=cfg.teacher.seed + i))
        members.append(get_teacher(sub, data, f"{progress_desc} member {i}"))
    combine = spec.get("combine", "mean_probs")
    model = EnsembleClassifier([t.model for t in members], combine)
    model = prepare_model(model, resolve_device(cfg.distill.device), data.is_image).eval().requires_grad_(False)
    ident = {"members": [str(t.checkpoint) for t in members], "combine": combine, "data": cfg.data, "format": TEACHER_FORMAT}
    out_dir = cache_root(cfg) / "teachers" / f"ensemble-{hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]}"
    out_dir.mkdir(parents=True, exist_ok=True)
    logits = TeacherLogits(model, out_dir)
    info = [{"arch": type(t.model.estimator).__name__ if hasattr(t.model, "estimator") else m["name"], "test_acc": t.test_acc,
             "checkpoint": str(t.checkpoint)} for m, t in zip(spec["members"], members)]
    return Teacher(model, out_dir, test_accuracy(model, logits, data, out_dir, out_dir), logits, members=info)


def test_accuracy(model, logits: TeacherLogits, data: Dataset, out_dir: Path, ckpt: Path) -> float:
    """The teacher's test accuracy (LM: next-token), computed once and kept in its cache folder's info.json."""
    info_path = out_dir / "info.json"
    if info_path.exists():
        info = read_json(info_path, damaged_cache(out_dir))
        with reading(info_path, damaged_cache(out_dir)):
            test_acc = float(info["test_acc"])
    elif data.modality == "lm":  # next-token accuracy on the held-out windows
        test_acc = next_token_accuracy(model, data.x_test, data.pad_id)
        write_json(info_path, {"test_acc": test_acc, "checkpoint": str(ckpt)})
    else:
        test_acc = float((logits(data.x_test).argmax(1).cpu() == data.y_test).float().mean())
        write_json(info_path, {"test_acc": test_acc, "checkpoint": str(ckpt)})
    return test_acc
