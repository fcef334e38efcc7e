"""Typed run config: short YAML files over these defaults, plus dotted command-line overrides.

OmegaConf validates keys and types against the dataclasses below. Sections that name a registry
entry (`data`, `teacher.model`, `student.model`, `source`) hold `{name: ..., **args}`; the args are
validated against the entry's signature (see kdx.registry). When a later layer (the YAML file, then
the command line) changes an entry's `name`, the earlier layer's args for it are dropped, because
they belong to the other entry.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kdx.errors import KdxError

SPEC_SECTIONS = ("data", "teacher.model", "student.model", "source")


@dataclasses.dataclass
class TrainRecipe:
    """How a teacher is trained: the same loop, one-hot loss, on the train source."""

    epochs: float = 4.0
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    augment: str = "none"  # on a 4-epoch budget, flip_crop underfit: 90.1% vs 92.6% test (Fashion-MNIST)

    def loop_config(self, train_size: int, runtime: "DistillConfig") -> "DistillConfig":
        """The loop's config for this recipe: the fields both share come from here, the rest are the
        loop's defaults, except where and how often it logs and checkpoints (from the run's `distill`)."""
        shared = {f.name for f in dataclasses.fields(DistillConfig)} & {f.name for f in dataclasses.fields(self)}
        return DistillConfig(samples=int(self.epochs * train_size), loss="onehot", device=runtime.device,
                             log_every=runtime.log_every, checkpoint_every=runtime.checkpoint_every,
                             **{k: getattr(self, k) for k in shared})


@dataclasses.dataclass
class TeacherConfig:
    model: dict[str, Any] = field(default_factory=lambda: {"name": "cnn", "channels": [32, 64, 128],
                                                          "convs_per_block": 1, "hidden": 1200})
    train: TrainRecipe = field(default_factory=TrainRecipe)
    checkpoint: Optional[str] = None  # a user's own trained teacher (state dict of the same model)
    seed: int = 0


@dataclasses.dataclass
class StudentConfig:
    model: dict[str, Any] = field(default_factory=lambda: {"name": "cnn", "channels": [16, 32, 64],
                                                          "convs_per_block": 1, "hidden": 64})
    init: Optional[str] = None  # start from these weights (a state dict or .safetensors of the same model)


@dataclasses.dataclass
class DistillConfig:
    samples: int = 600_000  # budget in samples seen, equal across sources by default
    batch_size: int = 256
    loss: str = "kl"
    loss_args: dict[str, Any] = field(default_factory=dict)  # the loss's own arguments (jsd: beta; skew_kl: skew)
    temperature: float = 4.0
    alpha: float = 0.0  # weight of one-hot cross-entropy, where the source has labels
    switch_at: Optional[float] = None  # fraction of training before which the loss is one-hot
    switch_order: str = "onehot_first"  # or distill_first: the reverse switch
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | onecycle
    warmup: float = 0.02  # fraction of steps with linear warm-up (cosine)
    checkpoint_every: int = 500
    log_every: int = 50
    # the learning curve: every this many samples (0: never) the student's test accuracy and agreement
    # with the teacher go to log.jsonl (an eval-mode pass over the test set; no effect on training)
    curve_every: int = 0
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False  # torch.compile the student (slowed training on the 2-core CPU; try it on GPU)
    # torch.compile the teacher's per-batch forward: on the 2-core CPU 1.59x teacher inference alone but
    # 1.05-1.38x a distillation step, after ~17 s of compiling (3.6 s with inductor's cache warm), so it
    # pays only on long runs of sources that need the teacher on each batch; unmeasured on GPU
    compile_teacher: bool = False


@dataclasses.dataclass
class EvalConfig:
    distributions: list[str] = field(default_factory=lambda: ["default"])  # "default": the dataset's list
    n: int = 2000  # inputs per held-out distribution (test: all; train_subset, test_subset: 5x this)
    batch_size: int = 1024
    bootstrap: int = 1000
    seed: int = 1234


@dataclasses.dataclass
class RunConfig:
    data: dict[str, Any] = field(default_factory=lambda: {"name": "fashion_mnist"})
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    source: dict[str, Any] = field(default_factory=lambda: {"name": "train"})
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    cache_dir: Optional[str] = None  # teacher cache; default $KDX_CACHE or ~/.cache/kdx
    report: list[str] = field(default_factory=list)  # experiment trackers (kdx.trackers): tensorboard, mlflow, trackio, wandb
    report_project: Optional[str] = None  # the trackers' project (experiment, group): a study sets its name; default kdx


# Each numeric or enumerated field's domain, checked when the config loads, before any work starts.
def _at_least(lo):
    return (lambda v: v >= lo), f">= {lo}"


def _positive():
    return (lambda v: v > 0), "> 0"


def _unit(closed_top: bool = True):
    return (lambda v: 0 <= v <= 1 if closed_top else 0 <= v < 1), "in [0, 1]" if closed_top else "in [0, 1)"


def _one_of(*names):
    return (lambda v: v in names), f"one of {', '.join(names)}"


TRAIN_DOMAINS = {"epochs": _positive(), "batch_size": _at_least(1), "optimizer": _one_of("sgd", "adamw"),
                 "lr": _positive(), "weight_decay": _at_least(0), "schedule": _one_of("cosine", "onecycle")}
DOMAINS = {
    **{f"teacher.train.{k}": v for k, v in TRAIN_DOMAINS.items()},
    "distill.samples": _at_least(1), "distill.batch_size": _at_least(1), "distill.temperature": _positive(),
    "distill.alpha": _unit(), "distill.switch_at": _unit(), "distill.switch_order": _one_of("onehot_first", "distill_first"),
    **{f"distill.{k}": TRAIN_DOMAINS[k] for k in ("optimizer", "lr", "weight_decay", "schedule")},
    "distill.momentum": _unit(closed_top=False), "distill.warmup": _unit(closed_top=False),
    "distill.checkpoint_every": _at_least(1), "distill.log_every": _at_least(1), "distill.curve_every": _at_least(0),
    "distill.device": ((lambda v: v in ("auto", "cpu", "cuda") or v.startswith("cuda:")), "auto, cpu, cuda or cuda:N"),
    "eval.n": _at_least(1), "eval.batch_size": _at_least(1), "eval.bootstrap": _at_least(1),
}


def check_domains(cfg, where: str) -> None:
    """Refuse a value outside its field's domain, naming the key, the value and the allowed range."""
    for key, (ok, allowed) in DOMAINS.items():
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part, None)
        if obj is not None and not ok(obj):
            raise KdxError(f"{where}: {key}={obj!r} is out of range; it must be {allowed}")
    distill = getattr(cfg, "distill", None)
    if distill is not None and distill.samples < distill.batch_size:
        raise KdxError(f"{where}: distill.samples={distill.samples} is smaller than one batch "
                       f"(distill.batch_size={distill.batch_size}); raise samples or lower batch_size")


def _get(d: dict, dotted: str):
    for k in dotted.split("."):
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _drop_stale_spec_args(lower: dict, upper: dict) -> None:
    """Where `upper` renames a registry entry, forget `lower`'s args for the old entry."""
    for sec in SPEC_SECTIONS:
        new = _get(upper, sec)
        if isinstance(new, dict) and "name" in new and new["name"] != (_get(lower, sec) or {}).get("name"):
            parent = lower
            *path, last = sec.split(".")
            for k in path:
                parent = parent.setdefault(k, {})
            parent[last] = {"name": new["name"]}


@functools.lru_cache(maxsize=None)
def _typed_without_spec_args(schema):
    """The typed schema with its registry sections emptied: OmegaConf merges dicts key by key, so the
    default entry's args (e.g. cnn's `channels`) would otherwise come back under a renamed entry.
    Built once a schema (OmegaConf.structured is most of a load_config's time); OmegaConf.merge copies
    its first argument, so the cached node is never changed."""
    typed = OmegaConf.structured(schema)
    for sec in SPEC_SECTIONS:
        node = typed
        for part in sec.split("."):  # only where the schema has this dict section (a study's `student` is a list)
            node = node.get(part) if isinstance(node, DictConfig) else None
        if isinstance(node, DictConfig):
            OmegaConf.update(typed, sec, {}, merge=False)
    return typed


@functools.lru_cache(maxsize=None)
def _defaults(schema) -> dict:
    """The schema's defaults as a plain dict, built once (callers get a copy: the merge below edits it)."""
    return _layer_dict(OmegaConf.structured(schema))


def _layer_dict(cfg) -> dict:
    return OmegaConf.to_container(cfg) if isinstance(cfg, DictConfig) else dict(cfg)


def load_config(path: str | Path | None, overrides: list[str] = (), schema=RunConfig,
                layers: list[tuple[str, dict]] | None = None):
    """Defaults <- YAML file <- given (name, dict) layers <- `a.b=value` overrides, validated."""
    where = str(path) if path else "defaults"
    base = copy.deepcopy(_defaults(schema))
    given, layers = list(layers or []), []
    try:
        if path is not None:
            p = Path(path)
            if not p.exists():
                raise KdxError(f"config file {p} does not exist; check the path")
            try:
                file_cfg = OmegaConf.load(p)
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                problem = " ".join(str(getattr(e, "problem", None) or e).split())  # one line
                raise KdxError(f"{p}: not valid YAML{at}: {problem}; fix the file "
                               "(indentation, a missing ':' or an unclosed bracket are the usual causes)") from None
            except UnicodeDecodeError as e:
                raise KdxError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8") from None
            except OSError as e:  # OmegaConf's answer to a file that is one scalar (`42`)
                raise KdxError(f"{p}: a config file must be a mapping of keys (data:, source:, distill: ...): {e}; "
                               "fix the file") from None
            if file_cfg is not None and not isinstance(file_cfg, DictConfig):
                raise KdxError(f"{p}: a config file must be a mapping of keys (data:, source:, distill: ...), "
                               f"not a {type(file_cfg).__name__}; fix the file")
            layers.append((str(p), _layer_dict(file_cfg) if file_cfg is not None else {}))
        layers += given
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise KdxError(f"override {bad[0]!r} is not of the form key=value (e.g. source.name=noise)")
            layers.append(("command line", _layer_dict(OmegaConf.from_dotlist(list(overrides)))))
    except OmegaConfBaseException as e:
        raise KdxError(f"{where}: cannot parse: {e}") from None
    merged = None
    acc = base
    for name, layer in layers:
        _drop_stale_spec_args(acc, layer)
        try:
            merged = OmegaConf.merge(_typed_without_spec_args(schema), acc, layer)
        except OmegaConfBaseException as e:
            raise KdxError(_explain(e, name, schema)) from None
        except (TypeError, ValueError) as e:  # e.g. a list where the schema has a section (`data: [[...]]`)
            raise KdxError(f"{name}: a value does not fit the config's shape ({e}); fix the file: sections "
                           "(data, source, distill, ...) are mappings") from None
        acc = _layer_dict(merged)
    try:
        cfg = OmegaConf.to_object(merged) if layers else OmegaConf.to_object(OmegaConf.structured(schema))
    except OmegaConfBaseException as e:  # a mandatory key (a study's name, base) left out or `???`
        raise KdxError(f"{where}: '{getattr(e, 'full_key', '') or e}' has no value; set it in the file") from None
    check_domains(cfg, f"{where}{' with the command-line overrides' if overrides else ''}" if path else
                  ("the command line" if overrides else "defaults"))
    return cfg


def _explain(e: OmegaConfBaseException, where: str, schema) -> str:
    key = getattr(e, "full_key", None) or ""
    msg = str(getattr(e, "msg", e)).splitlines()[0]
    valid = ""
    parent_key = key.rsplit(".", 1)[0] if "." in key else ""
    node = schema
    for part in parent_key.split(".") if parent_key else []:
        f = {f.name: f for f in dataclasses.fields(node)}.get(part)
        node = f.type if f is not None else None
        if isinstance(node, str):
            node = globals().get(node)
        if node is None or not dataclasses.is_dataclass(node):
            node = None
            break
    if node is not None and dataclasses.is_dataclass(node):
        valid = f"; valid keys{' in ' + parent_key if parent_key else ''}: {', '.join(f.name for f in dataclasses.fields(node))}"
    return f"{where}: bad config key '{key}': {msg}{valid}; fix or remove it"


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))


def flatten(obj: dict, sep: str = ".", prefix: str = "", numeric: bool = False) -> dict:
    """Nested mappings (a config, metrics.json) as one level of `a{sep}b` keys: numbers only (`numeric`),
    else every leaf (lists kept); for the trackers' hyper-parameters and the study's runs table."""
    out = {}
    for key, value in obj.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, sep, name, numeric))
        elif not numeric:
            out[name] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


def overrides_between(base, cfg) -> list[str]:
    """Dotted overrides that turn config `base` into `cfg`, i.e. load_config(base's file, these) == cfg:
    the one `kdx run` command behind a study's run. A registry section whose entry changes is given
    whole (`source.name=mixture` first, then its args); values are written as JSON, which is YAML."""
    import json

    out = []

    def walk(old: dict, new: dict, prefix: str) -> None:
        for key, value in new.items():
            dotted, before = prefix + key, old.get(key)
            if isinstance(value, dict) and isinstance(before, dict):
                if dotted in SPEC_SECTIONS and value.get("name") != before.get("name"):
                    out.append(f"{dotted}.name={value['name']}")
                    before = {"name": value["name"]}  # the old entry's args are dropped with its name
                walk(before, value, dotted + ".")
            elif value != before:
                out.append(f"{dotted}={json.dumps(value) if isinstance(value, (list, dict)) else value}")

    walk(OmegaConf.to_container(OmegaConf.structured(base)), OmegaConf.to_container(OmegaConf.structured(cfg)), "")
    return out
