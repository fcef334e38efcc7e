"""A study's schema and its planner: the grid of runs (sources x seeds x optional budget (samples), loss,
temperature, switch_at, student) expanded into resolved, validated run configs before any run starts."""
from __future__ import annotations

import dataclasses
import itertools
import math
import json
import re
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from kdx import config as kconfig
from kdx.data import load_dataset
from kdx.errors import KdxError
from kdx.run import build_source, validate


@dataclasses.dataclass
class StudyConfig:
    name: str = MISSING
    base: str = MISSING  # a run config, relative to the study file
    overrides: list[str] = dataclasses.field(default_factory=list)  # applied to every run
    sources: list[dict[str, Any]] = dataclasses.field(default_factory=lambda: [{"name": "train"}])
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    samples: list[int] = dataclasses.field(default_factory=list)  # distill.samples budgets; empty: the base's
    loss: list[str] = dataclasses.field(default_factory=list)  # empty: the base config's
    temperature: list[float] = dataclasses.field(default_factory=list)
    switch_at: list[Optional[float]] = dataclasses.field(default_factory=list)
    student: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # student.model specs, with a label
    data: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # `data` specs, with a label; empty: the base's
    report: list[str] = dataclasses.field(default_factory=list)  # trackers for every run (empty: the base's `report`)
    probe: bool = True
    probe_on: list[str] = dataclasses.field(default_factory=lambda: ["train_subset", "test"])
    # distillation inputs whose teacher features measure coverage (`kdx probe --source-n`): a whole
    # Fashion-MNIST epoch (60k) costs a study run about as much as its 120k-sample distillation
    probe_source_n: int = 10_000
    report_distributions: list[str] = dataclasses.field(
        default_factory=lambda: ["test", "train_subset", "gaussian_noise-2", "rotation-2", "uniform_noise"])


# keys of a source spec that belong to the study, not to the source: `label` names the run;
# `samples_scale` multiplies distill.samples for that source's runs (e.g. equal teacher forwards
# for a source that scores 2 candidates per input trained on: samples_scale 0.5); `loss` sets
# distill.loss for that source's runs (a subset of the source x loss grid, e.g. reverse KL for some sources);
# `switch_at` (a list) keeps only those values of the study's switch_at axis for that entry's runs (e.g. late
# distillation only in the cells where a gain is expected); `overrides` are dotted key=value strings for its runs
STUDY_KEYS = ("label", "samples_scale", "loss", "overrides", "switch_at")


@dataclasses.dataclass
class PlannedRun:
    name: str
    axes: dict[str, Any]  # axis -> label, for grouping (seed included)
    cfg: kconfig.RunConfig


def _label(spec: dict) -> str:
    """A short, filesystem-safe name for a source or student spec: its label, or name+args."""
    if "label" in spec:
        return str(spec["label"])
    args = "-".join(f"{k}{v}" for k, v in spec.items()
                    if k not in ("name", *STUDY_KEYS) and not isinstance(v, (list, dict)))
    return re.sub(r"[^A-Za-z0-9_.+-]", "", spec["name"] + ("-" + args if args else ""))


def _check_axes(study: StudyConfig, study_path: Path) -> None:
    """Each axis a non-empty list of values of its type (OmegaConf leaves list items of dict-typed and some
    typed lists unchecked); the message names the study file and the axis."""
    def fail(axis: str, why: str):
        raise KdxError(f"{study_path}: {axis}: {why}; fix the study file")

    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    for axis in ("sources", "seeds"):
        if not getattr(study, axis):
            fail(axis, "is empty; give at least one")
    for axis in ("sources", "student", "data"):
        for spec in getattr(study, axis):
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                kind = {"sources": "source", "student": "model", "data": "dataset"}[axis]
                fail(axis, f"every entry needs a `name` (a registered {kind}), got {spec!r}")
            if "samples_scale" in spec and not (number(spec["samples_scale"]) and spec["samples_scale"] > 0):
                fail(axis, f"samples_scale must be a positive number, got {spec['samples_scale']!r}")
            if "overrides" in spec and not (isinstance(spec["overrides"], list)
                                            and all(isinstance(o, str) and "=" in o for o in spec["overrides"])):
                fail(axis, f"`overrides` in an entry must be a list of dotted key=value strings, got {spec['overrides']!r}")
            if "switch_at" in spec:
                values = spec["switch_at"]
                if not (isinstance(values, list) and values and all(v in study.switch_at for v in values)):
                    fail(axis, f"`switch_at` in an entry must be a non-empty list of values of the study's switch_at "
                               f"axis {list(study.switch_at)}, got {values!r}")
            if "loss" in spec and not (axis == "sources" and isinstance(spec["loss"], str)):
                fail(axis, f"`loss` in an entry must be a loss name, and only sources take one, got {spec['loss']!r}")
    if study.loss and any("loss" in spec for spec in study.sources):
        fail("loss", "is given both as the study's axis and in a source entry; use one of the two")
    checks = {"samples": (lambda v: isinstance(v, int) and not isinstance(v, bool), "whole numbers of samples"),
              "loss": (lambda v: isinstance(v, str), "loss names"),
              "temperature": (number, "numbers"), "switch_at": (lambda v: v is None or number(v), "fractions or null"),
              "seeds": (lambda v: isinstance(v, int) and not isinstance(v, bool), "integers")}
    for axis, (ok, what) in checks.items():
        bad = [v for v in getattr(study, axis) if not ok(v)]
        if bad:
            fail(axis, f"must be a list of {what}, got {bad[0]!r}")


def plan(study_path: str | Path, overrides: list[str] = (), *, build_sources: bool = True
         ) -> tuple[StudyConfig, list[PlannedRun]]:
    """Expand the study into resolved run configs; every error surfaces here, before any run starts (and
    before any teacher is trained). With build_sources=False the sources' values are checked against their
    signatures only, without loading the data (see check_sources)."""
    study_path = Path(study_path)
    study = kconfig.load_config(study_path, overrides, schema=StudyConfig)
    _check_axes(study, study_path)
    base = (study_path.parent / study.base) if not Path(study.base).is_absolute() else Path(study.base)
    base_cfgs = {}  # per combination of the entries' own `overrides`, after the study's

    def base_config(*entries) -> kconfig.RunConfig:
        extra = tuple(o for e in entries if e for o in e.get("overrides", ()))
        if extra not in base_cfgs:
            try:
                base_cfgs[extra] = kconfig.load_config(base, [*study.overrides, *extra])
            except KdxError as e:  # name the study: its `base` or `overrides` are what to fix
                raise KdxError(f"{study_path}: base {study.base} with overrides {[*study.overrides, *extra]}: {e}") from None
        return base_cfgs[extra]
    base_config()
    axes = {"data": study.data or [None], "source": study.sources, "samples": study.samples or [None], "loss": study.loss or [None],
            "temperature": study.temperature or [None], "switch_at": study.switch_at or ["base"], "student": study.student or [None], "seed": study.seeds}
    runs = []
    strip = lambda spec: {k: v for k, v in spec.items() if k not in STUDY_KEYS}  # noqa: E731
    loss_labelled = bool(study.loss) or any("loss" in spec for spec in study.sources)  # the run names carry the loss
    for data, source, samples, loss, temp, switch, student, seed in itertools.product(*axes.values()):
        if any(e and "switch_at" in e and switch not in e["switch_at"] for e in (data, source, student)):
            continue  # the entry keeps a subset of the switch_at axis
        base_cfg = base_config(data, source, student)
        distill = dataclasses.replace(base_cfg.distill, **{k: v for k, v in {"samples": samples, "loss": loss,
                                                                            "temperature": temp}.items() if v is not None})
        if "loss" in source:
            distill = dataclasses.replace(distill, loss=source["loss"])
        scale = math.prod(float(e.get("samples_scale", 1)) for e in (data, source, student) if e)
        if scale != 1:
            distill = dataclasses.replace(distill, samples=max(1, round(distill.samples * scale)))
        if switch != "base":
            distill = dataclasses.replace(distill, switch_at=switch)
        cfg = dataclasses.replace(base_cfg, source=strip(source), seed=seed, distill=distill)
        if study.report or base_cfg.report:  # the trackers group the study's runs under its name
            cfg = dataclasses.replace(cfg, report=study.report or base_cfg.report, report_project=study.name)
        if student is not None:
            cfg = dataclasses.replace(cfg, student=kconfig.StudentConfig(model=strip(student)))
        if data is not None:
            cfg = dataclasses.replace(cfg, data=strip(data))
        labels = {"data": _label(data)} if study.data else {}
        labels["source"] = _label(source)
        if study.samples:
            labels["samples"] = samples
        if loss_labelled:
            labels["loss"] = distill.loss
        if study.temperature:
            labels["temperature"] = temp
        if study.switch_at:
            labels["switch_at"] = switch
        if study.student:
            labels["student"] = _label(student)
        labels["seed"] = seed
        prefix = {"samples": "n", "temperature": "T", "switch_at": "sw", "seed": "s"}
        name = "-".join(f"{prefix.get(k, '')}{v}" for k, v in labels.items())
        where = f"{study_path}: run {name}"
        try:
            validate(cfg)
        except KdxError as e:
            raise KdxError(f"{where}: {e}") from None
        runs.append(PlannedRun(name, labels, cfg))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise KdxError(f"{study_path}: two runs would share a directory name; give sources or students a `label`")
    if build_sources:
        check_sources(study_path, runs)
    if study.probe:
        check_probes(study_path, runs, load_data=build_sources)
    return study, runs


def check_probes(study_path: str | Path, runs: list[PlannedRun], *, load_data: bool) -> None:
    """`probe: true` needs images, signals or text, and a teacher that is not an ensemble: refused now, not after
    the first run (a black box is probed for its deviation slopes alone: kdx.probes.probe)."""
    modality = {}  # per distinct data config: each is loaded once
    for r in runs:
        teacher = r.cfg.teacher.model
        key = json.dumps(r.cfg.data, sort_keys=True, default=str)
        if load_data and key not in modality:
            modality[key] = load_dataset(r.cfg.data).modality
        what = ("tables have no probes yet" if modality.get(key) == "tabular"
                else f"teacher '{teacher['name']}' has no penultimate features" if teacher["name"] == "ensemble" else "")
        if what:
            raise KdxError(f"{study_path}: run {r.name}: probe is on, but {what}; set probe: false in the study file")


def check_sources(study_path: str | Path, runs: list[PlannedRun]) -> None:
    """Build each distinct source of the grid once against its data: a source's constructor checks every
    value that depends on the data or on another value (an augment for this modality, a noise kind, an
    adaptive score or pick, every component and candidate spec) and needs no teacher, so a mistyped value
    is refused here in seconds rather than after minutes of teacher training."""
    checked = set()
    for r in runs:  # the same build and checks as `kdx run`'s, once per distinct data, source and loss settings
        key = json.dumps([r.cfg.data, r.cfg.source, r.cfg.distill.loss, r.cfg.distill.alpha, r.cfg.distill.switch_at],
                         sort_keys=True, default=str)
        try:
            if key not in checked:
                build_source(r.cfg, load_dataset(r.cfg.data))
                checked.add(key)
        except KdxError as e:
            raise KdxError(f"{study_path}: run {r.name}: {e}") from None
