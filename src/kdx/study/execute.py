"""Running a study: each distinct teacher once, then the planned runs (here in processes, or as Ray
tasks over a cluster), each probed; then the reports and runs.parquet. A study run again resumes where it
stopped, trying its failed runs again. A run that fails is kept in runs.parquet with its error (RUN/error.json)
and the study goes on; with fail_fast the first failure stops the study (runs.parquet is still written)."""
from __future__ import annotations

import json
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from kdx import config as kconfig
from kdx.data import load_dataset
from kdx.distill.teacher import get_teacher
from kdx.errors import DiskFullError, KdxError, first_line
from kdx.io import write_json
from kdx.probes import ProbeOptions, probe
from kdx.run import execute
from kdx.rundir import DEVIATION, ERROR, METRICS, PROBES, locked
from kdx.study.folders import TIMING
from kdx.study.plan import PlannedRun, plan
from kdx.study.report import write_reports
from kdx.study.table import write_runs_table


def _run_one(cfg: kconfig.RunConfig, run_dir: Path, threads: int, probe_options: ProbeOptions | None,
             fail_fast: bool = False) -> str | None:
    """Run and probe one planned run; None, or the error of one that failed (kept in RUN/error.json;
    with fail_fast raised as well)."""
    import torch

    torch.set_num_threads(threads)
    with locked(run_dir):  # held across the run and its probe
        try:
            execute(cfg, run_dir, resume=True)
            if probe_options:
                probe(run_dir, probe_options)
        except DiskFullError:  # the next run, error.json and the table would fail the same way: stop, naming the file
            raise
        except Exception as e:  # noqa: BLE001 - any failure of one run is kept in the table, the study goes on
            error = str(e) if isinstance(e, KdxError) else f"{type(e).__name__}: {first_line(e, 300, 'no message')}"
            write_json(run_dir / ERROR, {"error": error, "traceback": traceback.format_exc()})
            if fail_fast:
                raise
            return error
        (run_dir / ERROR).unlink(missing_ok=True)
    return None


def _done(i: int, n: int, name: str, error: str | None) -> None:
    print(f"[{i + 1}/{n}] {name} " + (f"failed: {error}" if error else "done"), flush=True)


def _run_on_ray(todo: list[PlannedRun], out: Path, cpus: int, probe_options: ProbeOptions | None,
                fail_fast: bool) -> None:
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
            .remote(r.cfg, out / "runs" / r.name, cpus, probe_options, fail_fast): r for r in todo}
    pending = list(refs)
    for i in range(len(todo)):
        [ref], pending = ray.wait(pending)
        error = ray.get(ref)  # with fail_fast a run's error is raised here (as its own type: a KdxError stays one)
        _done(i, len(todo), refs[ref].name, error)


def _threads_each(procs: int) -> int:
    """Torch threads for each of `procs` processes sharing this machine's CPUs."""
    return max(1, (os.cpu_count() or 1) // procs)


def _train_teacher(cfg: kconfig.RunConfig, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    get_teacher(cfg, load_dataset(cfg.data))


def _train_teachers(runs: list[PlannedRun], workers: int) -> None:
    """Train (or find) each distinct teacher once, before the runs' workers could race to train it: side by
    side in `workers` processes where there are several (each has its own cache folder; not ensembles, whose
    members two teachers may share), else here on every CPU (the serial pre-pass left all but one idle)."""
    distinct = list({repr((r.cfg.data, r.cfg.teacher)): r.cfg for r in runs}.values())
    procs = min(workers, len(distinct))
    if procs <= 1 or any(cfg.teacher.model["name"] == "ensemble" for cfg in distinct):
        for cfg in distinct:
            _train_teacher(cfg, _threads_each(1))
        return
    with ProcessPoolExecutor(procs) as pool:
        for f in as_completed([pool.submit(_train_teacher, cfg, _threads_each(procs))
                               for cfg in distinct]):
            f.result()


def _run_todo(todo: list[PlannedRun], out: Path, workers: int, executor: str, cpus_per_run: int,
              probe_options: ProbeOptions | None, fail_fast: bool) -> None:
    if executor == "ray":
        _run_on_ray(todo, out, cpus_per_run, probe_options, fail_fast)
    elif workers <= 1:
        for i, r in enumerate(todo):
            print(f"[{i + 1}/{len(todo)}] {r.name}", flush=True)
            error = _run_one(r.cfg, out / "runs" / r.name, _threads_each(1), probe_options, fail_fast)
            if error:
                _done(i, len(todo), r.name, error)
    else:
        threads = _threads_each(workers)
        with ProcessPoolExecutor(workers) as pool:
            futures = {pool.submit(_run_one, r.cfg, out / "runs" / r.name, threads, probe_options, fail_fast): r
                       for r in todo}
            for i, f in enumerate(as_completed(futures)):
                try:
                    error = f.result()
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)  # fail_fast: the runs not started never start
                    raise
                _done(i, len(todo), futures[f].name, error)


def run_study(study_path: str | Path, runs_dir: str | Path = "runs", workers: int = 1,
              overrides: list[str] = (), executor: str = "local", cpus_per_run: int = 1, *,
              fail_fast: bool = False) -> Path:
    if executor not in ("local", "ray"):
        raise KdxError(f"--executor must be local or ray, got '{executor}'")
    t0 = time.time()
    study, runs = plan(study_path, overrides)
    out = Path(runs_dir) / "studies" / study.name
    with locked(out):  # one process a study folder (each run's folder is locked too)
        _run_locked(study, runs, out, t0, workers, executor, cpus_per_run, fail_fast)
    return out


def _run_locked(study, runs: list[PlannedRun], out: Path, t0: float, workers: int, executor: str,
                cpus_per_run: int, fail_fast: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _train_teachers(runs, workers if executor == "local" else 1)
    todo = [r for r in runs if not (out / "runs" / r.name / METRICS).exists()
            or (study.probe and not (out / "runs" / r.name / PROBES / DEVIATION).exists())]
    print(f"study {study.name}: {len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to do")
    probe_options = ProbeOptions(on=study.probe_on, source_n=study.probe_source_n, map=False) if study.probe else None
    try:
        _run_todo(todo, out, workers, executor, cpus_per_run, probe_options, fail_fast)
    except DiskFullError:  # not the table too: the error names the first file the disk refused
        raise
    except BaseException:
        write_runs_table(runs, out)  # the table of every run as it stands, also when fail_fast (or Ctrl-C) stops it
        raise
    write_runs_table(runs, out)
    finished = [r for r in runs if (out / "runs" / r.name / METRICS).exists()]
    if finished:
        write_reports(study, finished, out)
    # wall time of each invocation (a resumed study adds one), teachers included: the findings cite it
    timing = json.loads((out / TIMING).read_text()) if (out / TIMING).exists() else []
    write_json(out / TIMING, timing + [{"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0)),
                                        "seconds": round(time.time() - t0, 1), "runs_done": len(todo),
                                        "workers": workers, "executor": executor, "cpus": os.cpu_count()}])
