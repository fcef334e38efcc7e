"""Registries in the style of timm: one decorated function per entry, listed by `kdx list`.

Each registry names the package whose modules register its entries and imports it on the first
lookup, so `SOURCES.get("noise")` works after importing nothing but kdx.registry.

An entry's keyword arguments are its config schema: a config section `{name: X, a: 1}` calls
entry X with `a=1`, after the arguments are validated and coerced by OmegaConf against a
dataclass built from the function's signature (the same typed validation as the top-level config).
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any, Callable

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kdx.errors import KdxError


@dataclasses.dataclass
class Entry:
    name: str
    fn: Callable
    description: str
    context: tuple[str, ...]  # arguments injected by kdx (data, device, ...), not set in configs

    def config_params(self) -> dict[str, inspect.Parameter]:
        sig = inspect.signature(self.fn)
        return {k: p for k, p in sig.parameters.items() if k not in self.context}


class Registry:
    def __init__(self, kind: str, package: str, plural: str | None = None):
        self.kind, self.package, self.plural = kind, package, plural or f"{kind}s"
        self._entries: dict[str, Entry] = {}
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # first, so a lookup made while the package imports does not recurse
            importlib.import_module(self.package)

    def register(self, name: str | None = None, context: tuple[str, ...] = ()):
        def deco(fn):
            key = name or fn.__name__
            if key in self._entries:
                raise KdxError(f"{self.kind} '{key}' is registered twice")
            doc = inspect.getdoc(fn) or ""
            self._entries[key] = Entry(key, fn, doc.splitlines()[0] if doc else "", tuple(context))
            return fn

        return deco

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[k] for k in self.names()]

    def get(self, name: str) -> Entry:
        self._load()
        if name not in self._entries:
            raise KdxError(
                f"unknown {self.kind} '{name}'. Registered {self.plural}: {', '.join(self.names())} "
                f"(`kdx list` describes them)"
            )
        return self._entries[name]

    def validate(self, spec: dict[str, Any], where: str) -> dict[str, Any]:
        """Check a `{name: ..., **args}` spec against the entry's signature; return coerced args."""
        spec = dict(spec)
        if "name" not in spec:
            raise KdxError(f"{where}: missing 'name'; one of: {', '.join(self.names())}")
        entry = self.get(spec.pop("name"))
        params = entry.config_params()
        unknown = sorted(set(spec) - set(params))
        if unknown:
            raise KdxError(
                f"{where}: {self.kind} '{entry.name}' has no parameter {', '.join(map(repr, unknown))}; "
                f"valid: {', '.join(params) or '(none)'}"
            )
        fields = []
        for k, p in params.items():
            ann = p.annotation if p.annotation is not inspect.Parameter.empty else Any
            if isinstance(ann, str):  # postponed annotations: resolve in the function's module
                ann = eval(ann, entry.fn.__globals__)  # noqa: S307 - our own source code
            default = p.default if p.default is not inspect.Parameter.empty else dataclasses.MISSING
            if isinstance(default, (list, dict)):
                fields.append((k, ann, dataclasses.field(default_factory=lambda d=default: d)))
            else:
                fields.append((k, ann, dataclasses.field(default=default)))
        schema = dataclasses.make_dataclass(f"{entry.name}_args", fields)
        try:
            merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(spec))
            args = OmegaConf.to_container(merged, throw_on_missing=True)
        except OmegaConfBaseException as e:
            raise KdxError(f"{where}: {self.kind} '{entry.name}': {e.msg if hasattr(e, 'msg') else e}") from None
        return args

    def build(self, spec: dict[str, Any], where: str, **context):
        """The entry `spec` names, called with its validated arguments and the context it declares (of
        `context`: kdx passes what it has, e.g. the cache folder, and each entry takes what it needs)."""
        args = self.validate(spec, where)
        entry = self.get(spec["name"])
        return entry.fn(**{k: v for k, v in context.items() if k in entry.context}, **args)


DATASETS = Registry("dataset", "kdx.data")
MODELS = Registry("model", "kdx.models")
SOURCES = Registry("source", "kdx.sampling")
LOSSES = Registry("loss", "kdx.distill.losses", "losses")
HELDOUT = Registry("held-out distribution", "kdx.eval.heldout")
# Augmentations, one registry per modality: `source.augment` names one of the data's modality
VIEWS = {m: Registry(f"{m} view", "kdx.sampling") for m in ("image", "signal", "text")}
TRACKERS = Registry("tracker", "kdx.trackers")  # the run config's `report`
ALL = {"datasets": DATASETS, "models": MODELS, "sources": SOURCES, "losses": LOSSES, "held-out": HELDOUT,
       "trackers": TRACKERS}
