"""Held-out distributions, registered and named: `test`, `train_subset`, `blur-2` (corruption at
severity 2), `downstream:fashion_mnist_upper`, `uniform_noise`; for text `typos-2`, `word_dropout-2`,
`truncation-2`, `domain`, `random_tokens`; for tables `feature_noise-2`, `covariate_shift`, `missing_features-2`;
`class_subset` for any data. Each returns a fixed set of
inputs (a function of the dataset and the eval seed) and labels where it has them. Corruptions of
pixels and signal values refuse text, and the text ones refuse images and signals, naming what works."""
from __future__ import annotations

import dataclasses
import random
import string

import torch

from kdx.data import load_dataset
from kdx.data.base import CONTINUOUS, Dataset, model_input
from kdx.data.transforms import gaussian_blur, rotate, translate
from kdx.errors import KdxError
from kdx.models.gpt import sample
from kdx.registry import HELDOUT
from kdx.sampling import text as sampling_text

_CTX = ("data", "n", "seed")


@dataclasses.dataclass
class HeldOut:
    name: str
    x: torch.Tensor  # stored form: uint8 images where untouched, float otherwise
    y: torch.Tensor | None


def parse(name: str) -> dict:
    """`blur-2` -> {name: blur, severity: 2}; `downstream:X` -> {name: downstream, dataset: X}."""
    if ":" in name:
        base, arg = name.split(":", 1)
        return {"name": base, "dataset": arg}
    base, _, sev = name.rpartition("-")
    if base and sev.isdigit():
        return {"name": base, "severity": int(sev)}
    return {"name": name}


TEXT_SETS = "test, train_subset, typos-N, word_dropout-N, truncation-N, class_subset, domain, random_tokens"
CONTINUOUS_SETS = "test, train_subset, class_subset, gaussian_noise-N, blur-N, contrast-N, translation-N, uniform_noise"
TABULAR_SETS = "test, train_subset, class_subset, feature_noise-N, covariate_shift, missing_features-N, uniform_noise"


def load(name: str, data: Dataset, n: int, seed: int) -> HeldOut:
    """The named set, made once per process and dataset (a run checks them all before training)."""
    made = data.__dict__.setdefault("_heldout_made", {})  # kept on the dataset: gone with it
    if (name, n, seed) not in made:
        x, y = HELDOUT.build(parse(name), f"eval.distributions: '{name}'", data=data, n=n, seed=seed)
        made[(name, n, seed)] = HeldOut(name, x, y)
    return made[(name, n, seed)]


def check(names: list[str], data: Dataset, n: int, seed: int) -> None:
    """Make every named set now, so one that does not fit the data fails before training, not after."""
    for name in names:
        load(name, data, n, seed)


def _continuous(data: Dataset, what: str) -> None:
    data.require(("image", "signal"), f"held-out '{what}'", TABULAR_SETS if data.modality == "tabular" else TEXT_SETS)


def _text(data: Dataset, what: str) -> None:
    data.require("text", f"held-out '{what}'", CONTINUOUS_SETS)


def _test_subset(data: Dataset, n: int, seed: int, what: str = ""):
    if what:
        _continuous(data, what)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_test), generator=g)[:n]
    return model_input(data.x_test[idx]), data.y_test[idx], g


def _severity(severity: int, levels: tuple) -> float:
    if severity not in (1, 2, 3):
        raise KdxError(f"corruption severity must be 1, 2 or 3, got {severity}")
    return levels[severity - 1]


@HELDOUT.register(context=_CTX)
def test(data: Dataset, n: int, seed: int):
    """The whole test set."""
    return data.x_test, data.y_test


@HELDOUT.register(context=_CTX)
def test_subset(data: Dataset, n: int, seed: int):
    """A fixed subset (5n inputs, at most the test set) of the test set: for data whose whole test set costs
    too much to score each run (an LM corpus's test windows, each scored at every position)."""
    idx = torch.randperm(len(data.x_test), generator=torch.Generator().manual_seed(seed))[:5 * n]
    return data.x_test[idx], data.y_test[idx]


@HELDOUT.register(context=_CTX)
def train_subset(data: Dataset, n: int, seed: int):
    """A fixed subset (5n inputs, at most the train set) of the distillation data: fidelity where the student trained."""
    idx = train_subset_rows(data, n, seed)
    return data.x_train[idx], data.y_train[idx]


def train_subset_rows(data: Dataset, n: int, seed: int) -> torch.Tensor:
    """The train rows `train_subset` holds, in its order."""
    return torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed))[:5 * n]


@HELDOUT.register(context=_CTX)
def gaussian_noise(data: Dataset, n: int, seed: int, severity: int = 2):
    """Test inputs plus Gaussian noise of 0.08/0.16/0.32 of the input range, clipped to the box."""
    x, y, g = _test_subset(data, n, seed, "gaussian_noise")
    scale = data.channel_view(data.hi - data.lo) * _severity(severity, (0.08, 0.16, 0.32))
    return data.clip_to_box(x + scale * torch.randn(x.shape, generator=g)), y


@HELDOUT.register(context=_CTX)
def blur(data: Dataset, n: int, seed: int, severity: int = 2):
    """Test inputs with Gaussian blur of sigma 0.5/1/1.5 pixels (steps for signals)."""
    x, y, _ = _test_subset(data, n, seed, "blur")
    return gaussian_blur(x, _severity(severity, (0.5, 1.0, 1.5))), y


@HELDOUT.register(context=_CTX)
def contrast(data: Dataset, n: int, seed: int, severity: int = 2):
    """Test inputs with contrast cut to 0.6/0.4/0.2 around each input's mean."""
    x, y, _ = _test_subset(data, n, seed, "contrast")
    m = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    return m + _severity(severity, (0.6, 0.4, 0.2)) * (x - m), y


@HELDOUT.register(context=_CTX)
def rotation(data: Dataset, n: int, seed: int, severity: int = 2):
    """Test images rotated by up to 15/30/45 degrees."""
    data.require("image", "held-out 'rotation'", TEXT_SETS if data.is_text else CONTINUOUS_SETS)
    x, y, g = _test_subset(data, n, seed)
    return rotate(x, _severity(severity, (15, 30, 45)), g), y


@HELDOUT.register(context=_CTX)
def translation(data: Dataset, n: int, seed: int, severity: int = 2):
    """Test inputs shifted by up to 10/20/30% of their size."""
    x, y, g = _test_subset(data, n, seed, "translation")
    return translate(x, _severity(severity, (0.1, 0.2, 0.3)), g), y


@HELDOUT.register(context=_CTX)
def negative(data: Dataset, n: int, seed: int, severity: int = 2):
    """Test inputs blended toward their negative in the box (lo + hi - x), by 0.3/0.6/1.0 (not the `inversion`
    source, which synthesises inputs from the teacher)."""
    x, y, _ = _test_subset(data, n, seed, "negative")
    a = _severity(severity, (0.3, 0.6, 1.0))
    return (1 - a) * x + a * (data.channel_view(data.lo + data.hi) - x), y


@HELDOUT.register(context=_CTX)
def downstream(data: Dataset, n: int, seed: int, dataset: str = ""):
    """The held-out (test) split of a registered downstream dataset, e.g. downstream:fashion_mnist_upper."""
    other = load_dataset({"name": dataset}, f"held-out downstream:{dataset}")
    if other.modality != data.modality:
        raise KdxError(f"held-out downstream:{dataset} has {other.modality} inputs, the teacher takes {data.modality} inputs")
    if data.is_text:  # another corpus, tokenised as the teacher's data
        idx = torch.randperm(len(other.x_test), generator=torch.Generator().manual_seed(seed))[:n]
        x = data.encode([other.texts["test"][i] for i in idx.tolist()])
        return x, other.y_test[idx] if other.classes == data.classes else None
    if other.input_shape != data.input_shape:
        raise KdxError(f"held-out downstream:{dataset} has inputs {other.input_shape}, the teacher takes {data.input_shape}")
    idx = torch.randperm(len(other.x_test), generator=torch.Generator().manual_seed(seed))[:n]
    labels_fit = other.num_classes == data.num_classes
    return other.x_test[idx], other.y_test[idx] if labels_fit else None


@HELDOUT.register(context=_CTX)
def uniform_noise(data: Dataset, n: int, seed: int):
    """Uniform noise over the train set's per-channel (tabular: per-feature) input box (no labels)."""
    data.require(CONTINUOUS, "held-out 'uniform_noise'", TEXT_SETS)
    return data.uniform_in_box(n, torch.Generator().manual_seed(seed)), None


@HELDOUT.register(context=_CTX)
def class_subset(data: Dataset, n: int, seed: int, classes: int = 0):
    """Test inputs of the first half of the classes only (a label shift; `classes`: how many, 0 = half)."""
    k = classes or max(1, data.num_classes // 2)
    idx = (data.y_test < k).nonzero().flatten()
    return data.x_test[idx], data.y_test[idx]


def _text_subset(data: Dataset, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_test), generator=g)[:n]
    return idx, g


@HELDOUT.register(context=_CTX)
def typos(data: Dataset, n: int, seed: int, severity: int = 2):
    """Test texts with character typos (swap, drop, insert, replace) in 10/25/50% of the words, re-tokenised."""
    _text(data, "typos")
    idx, _ = _text_subset(data, n, seed)
    p = _severity(severity, (0.10, 0.25, 0.50))
    rng = random.Random(seed * 31 + severity)
    letters = string.ascii_lowercase

    def typo(word: str) -> str:
        if len(word) < 2 or rng.random() >= p:
            return word
        i, op = rng.randrange(len(word) - 1), rng.randrange(4)
        if op == 0:
            return word[:i] + word[i + 1] + word[i] + word[i + 2:]
        if op == 1:
            return word[:i] + word[i + 1:]
        if op == 2:
            return word[:i] + rng.choice(letters) + word[i:]
        return word[:i] + rng.choice(letters) + word[i + 1:]

    texts = [" ".join(typo(w) for w in data.texts["test"][i].split()) for i in idx.tolist()]
    return data.encode(texts), data.y_test[idx]


@HELDOUT.register(context=_CTX)
def word_dropout(data: Dataset, n: int, seed: int, severity: int = 2):
    """Test texts with 10/25/50% of their words dropped (the token-level view the train source's augment makes)."""
    _text(data, "word_dropout")
    idx, g = _text_subset(data, n, seed)
    return sampling_text.word_dropout(data.x_test[idx], g, data, _severity(severity, (0.10, 0.25, 0.50))), data.y_test[idx]


@HELDOUT.register(context=_CTX)
def truncation(data: Dataset, n: int, seed: int, severity: int = 2):
    """Test texts cut to their first 75/50/25% of tokens (the closing special token kept)."""
    _text(data, "truncation")
    idx, _ = _text_subset(data, n, seed)
    x = data.x_test[idx].clone()
    bos, eos = sampling_text.template(data)
    lengths = (x != data.pad_id).sum(1)
    ends = int(bos is not None) + int(eos is not None)
    keep = ((lengths - ends).float() * _severity(severity, (0.75, 0.50, 0.25))).ceil().long().clamp_min(1)
    new_len = keep + ends
    pos = torch.arange(x.shape[1]).expand_as(x)
    x = x.masked_fill(pos >= new_len.view(-1, 1), data.pad_id)
    if eos is not None:
        x.scatter_(1, (new_len - 1).view(-1, 1), eos)
    return x, data.y_test[idx]


@HELDOUT.register(context=_CTX)
def domain(data: Dataset, n: int, seed: int):
    """The dataset's domain-shifted test set (debian_descriptions: the test packages' one-line synopses)."""
    if "domain" not in data.extra:
        raise KdxError(f"held-out 'domain': dataset '{data.name}' has no domain-shifted test set "
                       "(debian_descriptions has one; hf_text with data.domain_column=COLUMN)")
    x, y = data.extra["domain"]
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], None if y is None else y[idx]


@HELDOUT.register(context=_CTX)
def random_tokens(data: Dataset, n: int, seed: int):
    """Uniformly random token sequences with the train set's lengths (no labels): text's uniform_noise."""
    data.require(("text", "lm"), "held-out 'random_tokens'", CONTINUOUS_SETS)
    return sampling_text.random_sequences(data, n, torch.Generator().manual_seed(seed), "cpu", "uniform"), None


# ----------------------------------------------------------------------------------------- tabular
# Shifts of tables (kdx.data.tabular), in standardised units: the train split's per-feature std.


def _table_rows(data: Dataset, n: int, seed: int, what: str):
    data.require("tabular", f"held-out '{what}'", CONTINUOUS_SETS if data.modality in CONTINUOUS else TEXT_SETS)
    return _test_subset(data, n, seed)


@HELDOUT.register(context=_CTX)
def feature_noise(data: Dataset, n: int, seed: int, severity: int = 2):
    """Tables: test rows plus Gaussian noise of 0.1/0.3/1.0 train standard deviations on each continuous feature."""
    x, y, g = _table_rows(data, n, seed, "feature_noise")
    noise = data.std * _severity(severity, (0.1, 0.3, 1.0)) * torch.randn(x.shape, generator=g)
    noise[:, list(data.categories)] = 0.0  # codes are not shifted by noise
    return x + noise, y


@HELDOUT.register(context=_CTX)
def covariate_shift(data: Dataset, n: int, seed: int, feature: int = -1, quantile: float = 0.8):
    """Tables: the test rows whose `feature` (a column; -1: the first continuous one not constant on the train split)
    lies beyond the train split's `quantile` of it."""
    _table_rows(data, n, seed, "covariate_shift")
    if feature == -1:
        varying = [c for c in data.continuous_columns if data.hi[c] > data.lo[c]]
        feature = varying[0] if varying else 0
    if not 0 <= feature < data.x_train.shape[1] or feature in data.categories or not 0 < quantile < 1:
        raise KdxError(f"held-out 'covariate_shift': feature must be a continuous column in 0..{data.x_train.shape[1] - 1} "
                       f"and quantile in (0, 1), got feature={feature}, quantile={quantile}")
    cut = torch.quantile(data.x_train[:, feature].float(), quantile)
    idx = (data.x_test[:, feature] > cut).nonzero().flatten()
    if len(idx) == 0:
        raise KdxError(f"held-out 'covariate_shift': no test row has feature {feature} beyond its train {quantile} "
                       "quantile; lower the quantile or pick another feature")
    return data.x_test[idx], data.y_test[idx]


@HELDOUT.register(context=_CTX)
def missing_features(data: Dataset, n: int, seed: int, severity: int = 2):
    """Tables: 10/25/50% of each test row's features missing and imputed with the train means (categories: modes)."""
    x, y, g = _table_rows(data, n, seed, "missing_features")
    fill = data.x_train.float().mean(0)
    for c in data.categories:
        fill[c] = torch.mode(data.x_train[:, c]).values
    missing = torch.rand(x.shape, generator=g) < _severity(severity, (0.10, 0.25, 0.50))
    return torch.where(missing, fill.expand_as(x), x), y


# ---------------------------------------------------------------------------------------------- LM
# Sampled held-out sets of causal LMs: completions of held-out prompts by the trained models, made by
# kdx.eval.lm after training (teacher/student given; before it, with None, only the data is checked).
# They return (ids, mask): the mask marks the sampled positions, the ones the LM metrics count.
_LM_CTX = (*_CTX, "teacher", "student")


def lm_prompt_samples(data: Dataset, n: int, seed: int, model, what: str, new_tokens: int = 0,
                      temperature: float = 1.0, top_p: float = 1.0):
    """`model`'s seeded completions of n held-out (test) prompts, up to the context length."""
    data.require("lm", f"held-out '{what}'", "test, train_subset and the text sets (typos-N, ...)")
    prompts = data.extra["prompts_test"][0]
    prompts = prompts[torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed))[:n]]
    new = new_tokens or data.max_length - prompts.shape[1]
    if not 1 <= new <= data.max_length - prompts.shape[1]:
        raise KdxError(f"held-out '{what}': new_tokens={new} must be in 1..{data.max_length - prompts.shape[1]} "
                       f"(the context {data.max_length} minus the prompt's {prompts.shape[1]} tokens)")
    if model is None:
        return prompts, None
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    ids, mask = sample(model, prompts.to(device), new, g, temperature, top_p, data.tokenizer.eos_id, data.pad_id)
    return ids.cpu(), mask.cpu()


@HELDOUT.register(context=_LM_CTX)
def teacher_samples(data: Dataset, n: int, seed: int, teacher=None, student=None, new_tokens: int = 0,
                    temperature: float = 1.0, top_p: float = 1.0):
    """LM: the teacher's completions of held-out prompts (seeded; sequence-level KD's distribution)."""
    return lm_prompt_samples(data, n, seed, teacher, "teacher_samples", new_tokens, temperature, top_p)


@HELDOUT.register(context=_LM_CTX)
def student_samples(data: Dataset, n: int, seed: int, teacher=None, student=None, new_tokens: int = 0,
                    temperature: float = 1.0, top_p: float = 1.0):
    """LM: the trained student's own completions of held-out prompts (seeded; on-policy fidelity)."""
    return lm_prompt_samples(data, n, seed, student, "student_samples", new_tokens, temperature, top_p)


@HELDOUT.register(context=_CTX)
def shift(data: Dataset, n: int, seed: int):
    """LM: windows of the documents held out of both splits (data.shift_column/shift_values, e.g. Debian sections)."""
    data.require("lm", "held-out 'shift'", "domain, or the corruptions of each modality")
    if "shift" not in data.extra:
        raise KdxError(f"held-out 'shift': dataset '{data.name}' holds no documents out of its splits; set "
                       "data.shift_column and data.shift_values (e.g. section, [games])")
    x = data.extra["shift"][0]
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:5 * n]], None
