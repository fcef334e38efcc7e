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
from kdx.io import read_json, reading, save_torch, write_json
from kdx.models import Classifier, build_model, load_weights, predict
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


def teacher_key(cfg: RunConfig) -> str:
    ident = {"data": cfg.data, "model": cfg.teacher.model, "train": dataclasses.asdict(cfg.teacher.train),
             "seed": cfg.teacher.seed, "format": TEACHER_FORMAT}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


def user_teacher_key(cfg: RunConfig, weights_digest: str) -> str:
    """A user's teacher is its weights' content (not their file names), on this data, under this model spec."""
    spec = {k: v for k, v in cfg.teacher.model.items() if k not in ("path", "weights")}
    ident = {"data": cfg.data, "model": spec, "weights": weights_digest, "format": TEACHER_FORMAT}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


def get_teacher(cfg: RunConfig, data: Dataset, progress_desc: str = "teacher") -> Teacher:
    """Load the user's checkpoint, or the cached teacher, or train it (resuming a killed training)."""
    device = resolve_device(cfg.distill.device)
    model = build_model(cfg.teacher.model, data, "teacher.model", cfg.teacher.seed)
    if cfg.teacher.checkpoint:
        ckpt = Path(cfg.teacher.checkpoint)
        load_weights(model, ckpt, "teacher.checkpoint")
        out_dir = cache_root(cfg) / "teachers" / f"user-{user_teacher_key(cfg, hashlib.sha256(ckpt.read_bytes()).hexdigest())}"
    elif getattr(model, "arrives_trained", False):  # hf, torchvision or timm with weights: used as is, never trained here
        spec = cfg.teacher.model
        ckpt = Path(spec.get("path") or spec.get("weights") or spec.get("checkpoint_file"))  # hf, torchvision, timm
        out_dir = cache_root(cfg) / "teachers" / f"user-{user_teacher_key(cfg, model.weights_digest)}"
        out_dir.mkdir(parents=True, exist_ok=True)
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
    return Teacher(model, ckpt, test_acc, logits)
