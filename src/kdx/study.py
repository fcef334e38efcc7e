"""Studies: a grid of runs (sources x seeds x optional loss, temperature, switch_at, student),
run or resumed, probed, and summarised with intervals over seeds and paired tests per seed."""
from __future__ import annotations

import dataclasses
import itertools
import os
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from kdx import config as kconfig
from kdx.errors import KdxError


@dataclasses.dataclass
class StudyConfig:
    name: str = MISSING
    base: str = MISSING  # a run config, relative to the study file
    overrides: list[str] = dataclasses.field(default_factory=list)  # applied to every run
    sources: list[dict[str, Any]] = dataclasses.field(default_factory=lambda: [{"name": "train"}])
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    loss: list[str] = dataclasses.field(default_factory=list)  # empty: the base config's
    temperature: list[float] = dataclasses.field(default_factory=list)
    switch_at: list[Optional[float]] = dataclasses.field(default_factory=list)
    student: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # student.model specs, with a label
    probe: bool = True
    probe_on: list[str] = dataclasses.field(default_factory=lambda: ["train_subset", "test"])
    # distillation inputs whose teacher features measure coverage (`kdx probe --source-n`): a whole
    # Fashion-MNIST epoch (60k) costs a study run about as much as its 120k-sample distillation
    probe_source_n: int = 10_000
    report_distributions: list[str] = dataclasses.field(
        default_factory=lambda: ["test", "train_subset", "gaussian_noise-2", "rotation-2", "uniform_noise"])


# keys of a source spec that belong to the study, not to the source: `label` names the run;
# `samples_scale` multiplies distill.samples for that source's runs (e.g. equal teacher forwards
# for a source that scores 2 candidates per input trained on: samples_scale 0.5)
STUDY_KEYS = ("label", "samples_scale")


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


def plan(study_path: str | Path, overrides: list[str] = ()) -> tuple[StudyConfig, list[PlannedRun]]:
    """Expand the study into resolved run configs; every error surfaces here, before any run starts."""
    from kdx.run import validate

    study_path = Path(study_path)
    study = kconfig.load_config(study_path, overrides, schema=StudyConfig)
    base = (study_path.parent / study.base) if not Path(study.base).is_absolute() else Path(study.base)
    base_cfg = kconfig.load_config(base, study.overrides)
    axes = {"source": study.sources, "loss": study.loss or [None], "temperature": study.temperature or [None],
            "switch_at": study.switch_at or ["base"], "student": study.student or [None], "seed": study.seeds}
    runs = []
    strip = lambda spec: {k: v for k, v in spec.items() if k not in STUDY_KEYS}  # noqa: E731
    for source, loss, temp, switch, student, seed in itertools.product(*axes.values()):
        distill = dataclasses.replace(base_cfg.distill, **{k: v for k, v in
                                                           {"loss": loss, "temperature": temp}.items() if v is not None})
        if "samples_scale" in source:
            distill = dataclasses.replace(distill, samples=max(1, round(distill.samples * float(source["samples_scale"]))))
        if switch != "base":
            distill = dataclasses.replace(distill, switch_at=switch)
        cfg = dataclasses.replace(base_cfg, source=strip(source), seed=seed, distill=distill)
        if student is not None:
            cfg = dataclasses.replace(cfg, student=kconfig.StudentConfig(model=strip(student)))
        labels = {"source": _label(source)}
        if study.loss:
            labels["loss"] = loss
        if study.temperature:
            labels["temperature"] = temp
        if study.switch_at:
            labels["switch_at"] = switch
        if study.student:
            labels["student"] = _label(student)
        labels["seed"] = seed
        prefix = {"temperature": "T", "switch_at": "sw", "seed": "s"}
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
    return study, runs


def _run_one(cfg: kconfig.RunConfig, run_dir: Path, threads: int, probe: dict | None) -> str:
    import torch

    import kdx.cli
    from kdx.run import execute

    torch.set_num_threads(threads)
    kdx.cli._register_all()
    execute(cfg, run_dir, resume=True)
    if probe:
        from kdx.probes import probe_run

        probe_run(run_dir, make_map=False, **probe)
    return str(run_dir)


def _run_on_ray(todo: list[PlannedRun], out: Path, cpus: int, probe) -> None:
    """Each run a Ray task asking for `cpus` CPUs and, where it trains on CUDA, one GPU; Ray places
    the tasks over its cluster (ray.init() joins RAY_ADDRESS's, else starts a local one). Every node
    must see the study folder and the teacher cache (KDX_CACHE) on shared storage."""
    try:
        import ray
    except ImportError:
        raise KdxError("--executor ray needs Ray: pip install 'kdx[ray]'") from None
    if not ray.is_initialized():
        ray.init()
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    has_gpu = any(n.get("GPU", 0) >= 1 for n in nodes)
    if cpus > max(n.get("CPU", 0) for n in nodes):  # Ray would wait for such a node for ever
        raise KdxError(f"--cpus-per-run {cpus}: no node of the Ray cluster has that many CPUs")
    for r in todo:
        if r.cfg.distill.device == "cuda" and not has_gpu:
            raise KdxError(f"run {r.name} trains on CUDA (distill.device=cuda) but no node of the Ray cluster has a GPU")
    task = ray.remote(_run_one)
    refs = {task.options(num_cpus=cpus, num_gpus=int(r.cfg.distill.device != "cpu" and has_gpu))
            .remote(r.cfg, out / "runs" / r.name, cpus, probe): r for r in todo}
    pending = list(refs)
    for i in range(len(todo)):
        [ref], pending = ray.wait(pending)
        ray.get(ref)  # a run's error is raised here (as its own type too, so a KdxError stays one)
        print(f"[{i + 1}/{len(todo)}] {refs[ref].name} done", flush=True)


def run_study(study_path: str | Path, runs_dir: str | Path = "runs", workers: int = 1,
              overrides: list[str] = (), executor: str = "local", cpus_per_run: int = 1) -> Path:
    from kdx.data import load
    from kdx.distill.teacher import get_teacher
    from kdx.study_report import write_reports

    if executor not in ("local", "ray"):
        raise KdxError(f"--executor must be local or ray, got '{executor}'")
    study, runs = plan(study_path, overrides)
    out = Path(runs_dir) / "studies" / study.name
    out.mkdir(parents=True, exist_ok=True)
    # Train (or find) each distinct teacher once, before workers could race to train it.
    seen = set()
    for r in runs:
        key = repr((r.cfg.data, r.cfg.teacher))
        if key not in seen:
            seen.add(key)
            get_teacher(r.cfg, load(r.cfg.data))
    todo = [r for r in runs if not (out / "runs" / r.name / "metrics.json").exists()
            or (study.probe and not (out / "runs" / r.name / "probes" / "deviation.json").exists())]
    print(f"study {study.name}: {len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to do")
    probe = {"on": study.probe_on, "source_n": study.probe_source_n} if study.probe else None
    if executor == "ray":
        _run_on_ray(todo, out, cpus_per_run, probe)
    elif workers <= 1:
        for i, r in enumerate(todo):
            print(f"[{i + 1}/{len(todo)}] {r.name}", flush=True)
            _run_one(r.cfg, out / "runs" / r.name, max(1, os.cpu_count() or 1), probe)
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers) as pool:
            futures = {pool.submit(_run_one, r.cfg, out / "runs" / r.name, threads, probe): r for r in todo}
            for i, f in enumerate(as_completed(futures)):
                f.result()
                print(f"[{i + 1}/{len(todo)}] {futures[f].name} done", flush=True)
    write_reports(study, runs, out)
    return out
