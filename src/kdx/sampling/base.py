"""What a sample source is: a resumable stream of input batches on the loop's device.

A batch carries the teacher's logits when the source could look them up for the exact inputs it
returns (a fixed pool without augmentation); otherwise `teacher_logits` is None and the loop runs
the teacher on the very view the student sees.
"""
from __future__ import annotations

import dataclasses
import hashlib

import torch

from kdx.data.base import Dataset, model_input
from kdx.sampling.view import View


@dataclasses.dataclass
class Batch:
    x: torch.Tensor  # model inputs (model_input of stored ones: floats, or int64 token ids), on the device
    y: torch.Tensor | None = None  # int labels, or (N, K) soft labels after mixup/cutmix; None if unlabeled
    teacher_logits: torch.Tensor | None = None
    counted: bool = False  # the source already counted these logits in its accounting() (computed or looked up)
    mask: torch.Tensor | None = None  # LM: (N, L) bool, the positions whose next token the loss counts


def step_generator(seed: int, step: int, device: torch.device, salt: str = "") -> torch.Generator:
    """A generator that depends only on (seed, step, salt): random draws survive a resume unchanged."""
    h = int.from_bytes(hashlib.blake2b(f"{seed}:{step}:{salt}".encode(), digest_size=8).digest(), "little")
    return torch.Generator(device=device).manual_seed(h & 0x7FFF_FFFF_FFFF_FFFF)


# the registered sources that need a teacher's gradients or features (kdx.run.check_source_fits_teacher names
# the others); adaptive needs them only for score=region or candidates from one of these
GRADIENT_SOURCES = ("inversion", "adversarial", "langevin", "boundary", "hotflip")


class Source:
    """Base class. Subclasses set `has_labels` and implement `batch`; pools also `state_dict`."""

    has_labels: bool = False
    epoch_size: int | None = None  # inputs per pass, for reporting epochs; None for endless generators
    # needs the teacher's gradients or penultimate features, which a black-box (predict_proba) teacher lacks
    needs_teacher_internals: bool = False

    def __init__(self, data: Dataset, seed: int):
        self.data, self.seed = data, seed
        self.device = torch.device("cpu")

    def setup(self, device: torch.device, teacher_logits_fn, teacher: torch.nn.Module | None = None,
              student: torch.nn.Module | None = None) -> None:
        """Move data to the device; `teacher_logits_fn(stored_inputs)` returns cached teacher logits.
        Sources that make inputs with the models (kdx.sampling.synthesis) also get the teacher (eval
        mode, no parameter gradients) and the student being trained; the others ignore them."""
        self.device = device

    def batch(self, step: int, n: int) -> Batch:
        raise NotImplementedError

    def skip(self, step: int, n: int) -> None:
        """Advance the stream exactly as batch(step, n) would, without the batch (under DDP each rank
        skips the other ranks' draws). Making the batch and dropping it is always right; sources
        override it where advancing is cheaper."""
        self.batch(step, n)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def accounting(self) -> dict:
        """The source's own model forwards (e.g. scoring candidates: kdx.sampling.adaptive), as counts
        of inputs; the loop adds its own. Empty for sources that run no model."""
        return {}


class PoolSource(Source):
    """A fixed pool of stored inputs, drawn without replacement in per-epoch permutations, each batch
    seen through `view` (kdx.sampling.view) if one is given."""

    def __init__(self, data: Dataset, seed: int, x: torch.Tensor, y: torch.Tensor | None, view: View | None = None):
        super().__init__(data, seed)
        self.x, self.y, self.view = x, y, view
        self.has_labels = y is not None
        self.epoch_size = len(x)
        self.cursor = 0
        self.cached_logits: torch.Tensor | None = None
        self._perm_epoch, self._perm = -1, None

    def setup(self, device, teacher_logits_fn, teacher=None, student=None) -> None:
        super().setup(device, teacher_logits_fn)
        self.x = self.x.to(device)
        self.y = self.y.to(device) if self.y is not None else None
        if self.view is not None:
            self.view.setup(device)
        elif teacher_logits_fn is not None:
            self.cached_logits = teacher_logits_fn(self.x)  # the exact stored inputs: safe to cache

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.x), generator=g).to(self.device), epoch
        return self._perm

    def indices(self, n: int) -> torch.Tensor:
        out, size = [], len(self.x)
        while n > 0:
            epoch, offset = divmod(self.cursor, size)
            take = min(n, size - offset)
            out.append(self._permutation(epoch)[offset:offset + take])
            self.cursor += take
            n -= take
        return torch.cat(out)

    def batch(self, step: int, n: int) -> Batch:
        idx = self.indices(n)
        self.last_indices = idx  # which pool rows this batch holds (an adaptive source logs its picks by them)
        x, y = model_input(self.x[idx]), (self.y[idx] if self.y is not None else None)
        if self.view is None:
            return Batch(x, y, self.cached_logits[idx] if self.cached_logits is not None else None)
        x, y = self.view(x, y, step_generator(self.seed, step, self.device, "augment"))
        return Batch(x, y, None)  # a fresh view: the loop runs the teacher on it

    def skip(self, step: int, n: int) -> None:
        self.cursor += n

    def state_dict(self) -> dict:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = int(state["cursor"])
