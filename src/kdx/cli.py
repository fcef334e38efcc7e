"""The `kdx` command line."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from kdx.errors import KdxError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="kdx: distil a teacher on a chosen distribution of inputs and measure the student.")


DATA_ROOT = typer.Option(None, "--data-root", help="folder holding the dataset's files (same as data.root=DIR)")


def _split(config: Path | None, overrides: list[str] | None, data_root: Path | None) -> tuple[str | None, list[str]]:
    """CONFIG is optional: a first argument with '=' is an override. --data-root is data.root."""
    overrides = list(overrides or [])
    if config is not None and "=" in str(config):
        overrides, config = [str(config), *overrides], None
    if data_root is not None:
        overrides.append(f"data.root={data_root}")
    return (str(config) if config else None), overrides


def _register_all():
    import kdx.data  # noqa: F401
    import kdx.distill.losses  # noqa: F401
    import kdx.eval.heldout  # noqa: F401
    import kdx.models  # noqa: F401
    import kdx.sampling  # noqa: F401


@app.command("run")
def run_cmd(config: Optional[Path] = typer.Argument(None, help="YAML config (omit for the defaults)"),
            overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides, e.g. source.name=noise"),
            runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="where run directories go"),
            name: Optional[str] = typer.Option(None, "--name", help="run directory name"),
            resume: bool = typer.Option(False, "--resume", help="continue a killed run (skip a finished one)"),
            overwrite: bool = typer.Option(False, "--overwrite", help="delete an existing run directory first"),
            data_root: Optional[Path] = DATA_ROOT):
    """Distil one student and evaluate it on the held-out distributions."""
    from kdx.report import eval_table
    from kdx.run import run

    if resume and overwrite:
        raise KdxError("--resume and --overwrite exclude each other")
    config, overrides = _split(config, overrides, data_root)
    _register_all()
    run_dir = run(config, overrides, str(runs_dir), name, resume, overwrite)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun rank 0 alone reports
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(eval_table(metrics))
    print(f"wrote {run_dir}")


@app.command("teacher")
def teacher_cmd(config: Optional[Path] = typer.Argument(None), overrides: Optional[List[str]] = typer.Argument(None),
                data_root: Optional[Path] = DATA_ROOT):
    """Train (or find in the cache) the teacher; print its checkpoint and test accuracy."""
    from kdx import config as kconfig
    from kdx.data import load as load_data
    from kdx.distill.teacher import get_teacher
    from kdx.run import validate

    config, overrides = _split(config, overrides, data_root)
    _register_all()
    cfg = kconfig.load_config(config, overrides)
    validate(cfg)
    t = get_teacher(cfg, load_data(cfg.data))
    print(f"checkpoint: {t.checkpoint}\ntest_acc: {t.test_acc:.4f}")


@app.command("data")
def data_cmd(config: Optional[Path] = typer.Argument(None), overrides: Optional[List[str]] = typer.Argument(None),
             data_root: Optional[Path] = DATA_ROOT):
    """Load (and, with data.download=true where supported, fetch) the config's dataset; print its shape."""
    from kdx import config as kconfig
    from kdx.data import load as load_data

    config, overrides = _split(config, overrides, data_root)
    _register_all()
    d = load_data(kconfig.load_config(config, overrides).data)
    print(f"{d.name}: train {tuple(d.x_train.shape)} test {tuple(d.x_test.shape)} {d.num_classes} classes, "
          f"{d.x_train.dtype}")


@app.command("compare")
def compare_cmd(runs: List[Path] = typer.Argument(..., help="run directories"),
                distributions: str = typer.Option("test,train_subset,gaussian_noise-2,rotation-2,uniform_noise",
                                                  help="comma-separated held-out distributions")):
    """One table over several finished runs: student accuracy, agreement and KL per distribution."""
    from kdx.report import compare_table

    print(compare_table(runs, distributions.split(",")))


@app.command("study")
def study_cmd(config: Path = typer.Argument(..., help="study YAML (configs/studies/)"),
              overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides of the study config"),
              runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
              workers: int = typer.Option(1, "--workers", help="independent runs in parallel processes"),
              executor: str = typer.Option("local", "--executor",
                                           help="local (processes here) or ray (Ray tasks over a cluster: kdx[ray])"),
              cpus_per_run: int = typer.Option(1, "--cpus-per-run", help="with --executor ray: CPUs (threads) a run asks for")):
    """Run (or resume) a grid of runs, probe them, write summary.csv, summary.md and report.html."""
    from kdx.study import run_study

    _register_all()
    out = run_study(config, runs_dir, workers, overrides or [], executor, cpus_per_run)
    print((out / "summary.md").read_text())
    print(f"wrote {out}/summary.csv, summary.md, report.html")


@app.command("explore")
def explore_cmd(target: Path = typer.Argument(..., help="a probed run directory, or a study's (DIR/studies/NAME)"),
                port: int = typer.Option(8050, "--port", help="port on 127.0.0.1 (0: any free one)"),
                out: Optional[Path] = typer.Option(None, "--out", help="write the page(s) here and exit, without serving"),
                probe: bool = typer.Option(False, "--probe", help="run `kdx probe` first on runs without a map")):
    """A self-contained explorer page of a probed run or study (Bokeh), served on 127.0.0.1."""
    from kdx.explore import build
    from kdx.explore.serve import server

    _register_all()
    folder = build(target, out, probe)
    if out is not None:
        print(f"wrote {folder / 'index.html'}")
        return
    try:
        httpd = server(folder, port)
    except OSError as e:
        raise KdxError(f"cannot listen on 127.0.0.1:{port} ({e.strerror}): pass another --port, or --out DIR "
                       "to write the page without serving it") from None
    print(f"serving {folder} at http://127.0.0.1:{httpd.server_address[1]}/ (Ctrl-C stops)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


@app.command("list")
def list_cmd():
    """List registered datasets, models, sources, losses and held-out distributions."""
    from kdx.registry import ALL

    _register_all()
    for kind, reg in ALL.items():
        print(f"{kind}:")
        for e in reg.entries():
            print(f"  {e.name:22s} {e.description}")


from kdx.probes.cli import probe_app  # noqa: E402
from kdx.synth import synth_cmd  # noqa: E402

app.command("synth", help="Write a pool of N synthesised inputs with the teacher's outputs (a HF dataset on disk).")(synth_cmd)

app.add_typer(probe_app, name="probe", help="Where the student deviates: `kdx probe RUN` and `kdx probe eigen`.")


def main():
    try:
        app()
    except KdxError as e:
        print(f"kdx: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
