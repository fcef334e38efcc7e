"""Running a study: each distinct teacher once, then the planned runs (here in processes, or as Ray
tasks over a cluster), each probed; then the reports. A study run again resumes where it stopped."""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from kdx import config as kconfig
from kdx.data import load_dataset
from kdx.distill.teacher import get_teacher
from kdx.errors import KdxError
from kdx.io import write_json
from kdx.probes import ProbeOptions, probe
from kdx.run import execute
from kdx.rundir import DEVIATION, METRICS, PROBES, locked
from kdx.study.folders import TIMING
from kdx.study.plan import PlannedRun, plan
from kdx.study.report import write_reports


def _run_one(cfg: kconfig.RunConfig, run_dir: Path, threads: int, probe_options: ProbeOptions | None) -> str:
    import torch

    torch.set_num_threads(threads)
    with locked(run_dir):  # held across the run and its probe
        execute(cfg, run_dir, resume=True)
        if probe_options:
            probe(run_dir, probe_options)
    return str(run_dir)


def _run_on_ray(todo: list[PlannedRun], out: Path, cpus: int, probe_options: ProbeOptions | None) -> None:
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
            .remote(r.cfg, out / "runs" / r.name, cpus, probe_options): r for r in todo}
    pending = list(refs)
    for i in range(len(todo)):
        [ref], pending = ray.wait(pending)
        ray.get(ref)  # a run's error is raised here (as its own type too, so a KdxError stays one)
        print(f"[{i + 1}/{len(todo)}] {refs[ref].name} done", flush=True)


def run_study(study_path: str | Path, runs_dir: str | Path = "runs", workers: int = 1,
              overrides: list[str] = (), executor: str = "local", cpus_per_run: int = 1) -> Path:
    if executor not in ("local", "ray"):
        raise KdxError(f"--executor must be local or ray, got '{executor}'")
    t0 = time.time()
    study, runs = plan(study_path, overrides)
    out = Path(runs_dir) / "studies" / study.name
    with locked(out):  # one process a study folder (each run's folder is locked too)
        _run_locked(study, runs, out, t0, workers, executor, cpus_per_run)
    return out


def _run_locked(study, runs: list[PlannedRun], out: Path, t0: float, workers: int, executor: str,
                cpus_per_run: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # Train (or find) each distinct teacher once, before workers could race to train it.
    seen = set()
    for r in runs:
        key = repr((r.cfg.data, r.cfg.teacher))
        if key not in seen:
            seen.add(key)
            get_teacher(r.cfg, load_dataset(r.cfg.data))
    todo = [r for r in runs if not (out / "runs" / r.name / METRICS).exists()
            or (study.probe and not (out / "runs" / r.name / PROBES / DEVIATION).exists())]
    print(f"study {study.name}: {len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to do")
    probe_options = ProbeOptions(on=study.probe_on, source_n=study.probe_source_n, map=False) if study.probe else None
    if executor == "ray":
        _run_on_ray(todo, out, cpus_per_run, probe_options)
    elif workers <= 1:
        for i, r in enumerate(todo):
            print(f"[{i + 1}/{len(todo)}] {r.name}", flush=True)
            _run_one(r.cfg, out / "runs" / r.name, max(1, os.cpu_count() or 1), probe_options)
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers) as pool:
            futures = {pool.submit(_run_one, r.cfg, out / "runs" / r.name, threads, probe_options): r for r in todo}
            for i, f in enumerate(as_completed(futures)):
                f.result()
                print(f"[{i + 1}/{len(todo)}] {futures[f].name} done", flush=True)
    write_reports(study, runs, out)
    # wall time of each invocation (a resumed study adds one), teachers included: the findings cite it
    timing = json.loads((out / TIMING).read_text()) if (out / TIMING).exists() else []
    write_json(out / TIMING, timing + [{"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0)),
                                        "seconds": round(time.time() - t0, 1), "runs_done": len(todo),
                                        "workers": workers, "executor": executor, "cpus": os.cpu_count()}])
