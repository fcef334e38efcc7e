"""The in-memory dataset every source, model and eval reads: tensors, so the loop can keep them on the device.

This is the one seam between modalities. A `Dataset` holds stored inputs of one `modality`:

    image   uint8 (N, C, H, W) in [0, 255]       continuous: mean/std, the input box lo/hi
    signal  float32 (N, C, L)                    continuous: mean/std, the input box lo/hi
    text    int64 token ids (N, L), padded       discrete: vocab_size, pad_id, decode(), token statistics
    lm      int64 token windows (N, L), padded   text's attributes; y: each window's document (kdx.data.lm_text)
    tabular float32 features (N, D)              continuous: per-feature mean/std and box; `categories`:
                                                 columns holding integer codes (kdx.data.tabular)

`model_input(x)` is the one conversion from stored to model inputs (images to [0, 1] floats, signals as
floats, token ids unchanged), used by the loop's sources, `predict`, the held-out sets and the probes.
Everything past it (the loop, the teacher-logit cache keyed by the inputs' bytes, eval, statistics,
probes, studies, the explorer) is modality-blind. What is not (noise in an input box, pixel corruptions,
image models; random tokens, typos, text models) asks `data.modality` or `data.require(...)`, which
refuses the wrong data with a KdxError naming what works instead. A 4th modality is a new data module
plus its models, sources and held-out sets.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from kdx.errors import KdxError

MODALITIES = ("image", "signal", "text", "lm", "tabular")
PLURAL = {"image": "images", "signal": "signals", "text": "text", "lm": "language-model corpora", "tabular": "tables"}
CONTINUOUS = ("image", "signal", "tabular")  # the modalities with an input box and moments
TOKENS = ("text", "lm")  # the modalities of token ids: vocabulary, padding, decode/encode


@dataclasses.dataclass
class Dataset:
    """Images are uint8 (N, C, H, W) in [0, 255]; signals are float32 (N, C, L); text is int64 token ids
    (N, L) padded with `pad_id` (attention mask: ids != pad_id). Labels int64.

    Models see `model_input(x)`. For images and signals `mean`/`std` (per channel, in that float space)
    are what models normalise with and `lo`/`hi` is the per-channel input box measured on the train
    set, over which the noise sources sample and inside which synthesis stays; text has no box (they
    are None) but `vocab_size`, `pad_id`, `special_ids`, `decode`/`encode` and token statistics
    (`token_counts`, `lengths`, `word_start`). Tables are float32 features (N, D) with per-feature mean/std and
    box; `categories` maps the columns holding integer codes to their category names (kdx.data.tabular).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    default_heldout: list[str] = dataclasses.field(default_factory=lambda: ["test", "train_subset"])
    modality: str = ""  # image | signal | text; inferred from the stored tensors when empty
    # text only
    vocab_size: int = 0
    pad_id: int = 0
    special_ids: list[int] = dataclasses.field(default_factory=list)  # never drawn by noise, never flipped
    tokenizer: Any = None  # kdx.data.text.Tokenizer: decode/encode
    extra: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = dataclasses.field(default_factory=dict)
    texts: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # raw texts per split (text)
    # tabular only: column -> its category names (the column holds codes 0..K-1); every feature's name
    categories: dict[int, list[str]] = dataclasses.field(default_factory=dict)
    feature_names: list[str] = dataclasses.field(default_factory=list)
    # a train subset or noisy labels (kdx.data.difficulty): train_index, clean and noisy train labels
    train_labels: dict | None = dataclasses.field(default=None, repr=False)
    mean: torch.Tensor | None = dataclasses.field(init=False, default=None)
    std: torch.Tensor | None = dataclasses.field(init=False, default=None)
    lo: torch.Tensor | None = dataclasses.field(init=False, default=None)
    hi: torch.Tensor | None = dataclasses.field(init=False, default=None)
    token_counts: torch.Tensor | None = dataclasses.field(init=False, default=None)
    lengths: torch.Tensor | None = dataclasses.field(init=False, default=None)
    word_start: torch.Tensor | None = dataclasses.field(init=False, default=None)

    def __post_init__(self):
        if not self.modality:
            self.modality = infer_modality(self.x_train, self.name)
        if self.modality not in MODALITIES:
            raise KdxError(f"dataset '{self.name}': modality must be one of {', '.join(MODALITIES)}, got '{self.modality}'")
        self.y_train = self.y_train.long()
        self.y_test = self.y_test.long()
        if self.modality in TOKENS:
            self._text_stats()
            return
        if self.modality == "tabular":
            self._tabular_stats()
            return
        if self.x_train.ndim not in (3, 4):
            raise KdxError(f"dataset '{self.name}': inputs must be (N, C, L) or (N, C, H, W), got {tuple(self.x_train.shape)}")
        x = model_input(self.x_train)
        dims = [0] + list(range(2, x.ndim))
        self.mean, self.std = x.mean(dims), x.std(dims).clamp_min(1e-6)
        self.lo, self.hi = x.amin(dims), x.amax(dims)

    def _tabular_stats(self):
        for split, x in (("train", self.x_train), ("test", self.x_test)):
            if x.ndim != 2 or not x.dtype.is_floating_point:
                raise KdxError(f"dataset '{self.name}': tabular inputs must be float features (N, D), "
                               f"the {split} split is {x.dtype} {tuple(x.shape)}")
        d = self.x_train.shape[1]
        if not self.feature_names:
            self.feature_names = [f"x{i}" for i in range(d)]
        bad = [c for c in self.categories if not 0 <= c < d]
        if bad:
            raise KdxError(f"dataset '{self.name}': categorical column {bad[0]} is not one of the {d} features")
        x = self.x_train.float()
        std = x.std(0).nan_to_num(1.0)
        # a feature constant on the train split is not rescaled: a test value off it would be blown up by 1/std
        self.mean, self.std = x.mean(0), torch.where(std > 1e-6, std, torch.ones_like(std))
        self.lo, self.hi = x.amin(0), x.amax(0)
        for c in self.categories:  # codes reach the models' one-hot layer unscaled
            self.mean[c], self.std[c] = 0.0, 1.0

    @property
    def continuous_columns(self) -> list[int]:
        """Tabular: the columns that are not categorical codes."""
        return [c for c in range(self.x_train.shape[1]) if c not in self.categories]

    def _text_stats(self):
        for split, x in (("train", self.x_train), ("test", self.x_test)):
            if x.ndim != 2 or x.dtype != torch.long:
                raise KdxError(f"dataset '{self.name}': text inputs must be int64 token ids (N, L), "
                               f"the {split} split is {x.dtype} {tuple(x.shape)}")
        if self.vocab_size <= 0:
            raise KdxError(f"dataset '{self.name}': text needs vocab_size > 0")
        hi = int(max(self.x_train.max(), self.x_test.max())) if self.x_train.numel() else 0
        if hi >= self.vocab_size or int(min(self.x_train.min(), self.x_test.min())) < 0:
            raise KdxError(f"dataset '{self.name}': token ids must lie in 0..{self.vocab_size - 1}, got up to {hi}")
        mask = self.x_train != self.pad_id
        self.lengths = mask.sum(1)  # train lengths (pad excluded), what the noise sources follow
        self.token_counts = torch.bincount(self.x_train[mask], minlength=self.vocab_size)
        if self.word_start is None:  # WordPiece: pieces starting '##' continue a word
            self.word_start = torch.ones(self.vocab_size, dtype=torch.bool)
            if self.tokenizer is not None:
                for i, tok in enumerate(self.tokenizer.vocab()):
                    if tok.startswith("##"):
                        self.word_start[i] = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.modality == "image"

    @property
    def is_text(self) -> bool:
        return self.modality == "text"

    @property
    def max_length(self) -> int:
        return self.x_train.shape[1] if self.modality in TOKENS else 0

    def require(self, modalities: str | tuple[str, ...], what: str, instead: str = "") -> None:
        """Refuse data of another modality: `what` (e.g. "held-out 'blur'") needs one of `modalities`."""
        modalities = (modalities,) if isinstance(modalities, str) else tuple(modalities)
        if self.modality not in modalities:
            raise KdxError(f"{what} needs {' or '.join(PLURAL[m] for m in modalities)}; dataset '{self.name}' "
                           f"holds {PLURAL[self.modality]}" + (f": use {instead}" if instead else ""))

    # -- continuous modalities: the input box
    def channel_view(self, v: torch.Tensor) -> torch.Tensor:
        """Reshape a per-channel vector to broadcast against a batch."""
        return v.view(1, -1, *([1] * (self.x_train.ndim - 2)))

    def box(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel input box (lo, hi), shaped to broadcast against a batch, on `device`."""
        self.require(CONTINUOUS, "an input box (noise, clipping, synthesis in input space)",
                     "the text sources (noise kind=uniform|unigram, hotflip) and held-out sets (random_tokens)")
        return self.channel_view(self.lo).to(device), self.channel_view(self.hi).to(device)

    def clip_to_box(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.box(x.device)
        return torch.maximum(torch.minimum(x, hi), lo)

    def uniform_in_box(self, n: int, g: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
        """n inputs uniform over the box: the integral over the whole input space."""
        lo, hi = self.box(device)
        return lo + (hi - lo) * torch.rand((n, *self.input_shape), generator=g, device=device)

    # -- text
    def decode(self, ids: torch.Tensor) -> list[str] | str:
        """Token ids -> text (one string for a 1-D row, a list for a batch); images/signals have none."""
        self.require(TOKENS, "decode()")
        if ids.ndim == 1:
            return self.decode(ids[None])[0]
        rows = [[int(t) for t in r if int(t) != self.pad_id] for r in ids.cpu()]
        if self.tokenizer is None:
            return [" ".join(map(str, r)) for r in rows]
        return self.tokenizer.decode(rows)

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Texts -> (N, max_length) int64 ids with this dataset's tokenizer (text only)."""
        self.require(TOKENS, "encode()")
        if self.tokenizer is None:
            raise KdxError(f"dataset '{self.name}' has no tokenizer to encode texts with")
        return self.tokenizer.encode(texts, self.max_length)

    def mask(self, ids: torch.Tensor) -> torch.Tensor:
        """The attention mask of token ids: True where not padding."""
        return ids != self.pad_id

    def candidate_ids(self) -> torch.Tensor:
        """Token ids that noise and substitutions may use: every id but padding and the special tokens."""
        keep = torch.ones(self.vocab_size, dtype=torch.bool)
        keep[[self.pad_id, *self.special_ids]] = False
        return keep.nonzero().flatten()


def infer_modality(x: torch.Tensor, name: str = "dataset") -> str:
    if x.ndim == 2 and not x.dtype.is_floating_point and x.dtype != torch.uint8:
        return "text"
    if x.ndim == 2 and x.dtype.is_floating_point:
        return "tabular"
    if x.ndim == 4:
        return "image"
    if x.ndim == 3:
        return "signal"
    raise KdxError(f"dataset '{name}': inputs must be (N, C, H, W) images, (N, C, L) signals, (N, L) int64 token "
                   f"ids or (N, D) float features, got {x.dtype} {tuple(x.shape)}")


def model_input(x: torch.Tensor) -> torch.Tensor:
    """The one conversion from stored inputs to model inputs: uint8 images to [0, 1] floats, token ids
    (any integer type but uint8) to int64, unchanged; everything else to float32."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if not x.dtype.is_floating_point and x.dtype != torch.bool:
        return x.long()
    return x.float()




def index_labels(train: list, test: list, where: str) -> tuple[list[str], list[int], list[int]]:
    """Plain label values (a column of ints or names, not a ClassLabel) -> (class names, train indices,
    test indices): the classes are the distinct values of both splits, numbers in numeric order, anything
    else by its text. A missing (None, NaN), unhashable (list, dict) or oddly typed value is refused."""
    values = {}
    for split, column in (("train", train), ("test", test)):
        for i, v in enumerate(column):
            ok = isinstance(v, (str, int)) or (isinstance(v, float) and v == v)
            if not ok:
                raise KdxError(f"{where}: split '{split}' row {i} has label {v!r} ({type(v).__name__}); every row needs "
                               "a label that is a number or a class name: fix or drop that row")
            values.setdefault(v, None)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    classes = sorted(values, key=(lambda v: v) if numeric else (lambda v: (str(v), type(v).__name__)))
    index = {v: i for i, v in enumerate(classes)}
    return [str(v) for v in classes], [index[v] for v in train], [index[v] for v in test]


def data_root(root: str | None, *subdirs: str) -> list[Path]:
    """Where to look for a dataset's files: the given root alone (a root the user names is
    authoritative: no silent fallback to another copy), else $KDX_DATA, then ~/.cache/kdx/data."""
    if root:
        bases = [Path(root).expanduser()]
    else:
        bases = [Path(os.environ["KDX_DATA"])] if os.environ.get("KDX_DATA") else []
        bases.append(Path.home() / ".cache" / "kdx" / "data")
    return [b.joinpath(*subdirs) for b in bases] + bases


