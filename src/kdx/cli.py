"""The `kdx` command line."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from kdx.errors import KdxError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="kdx: distil a teacher on a chosen distribution of inputs and measure the student.")


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
            overwrite: bool = typer.Option(False, "--overwrite", help="delete an existing run directory first")):
    """Distil one student and evaluate it on the held-out distributions."""
    from kdx.report import eval_table
    from kdx.run import run

    if resume and overwrite:
        raise KdxError("--resume and --overwrite exclude each other")
    if config is not None and "=" in str(config):  # only overrides were given
        overrides, config = [str(config), *(overrides or [])], None
    _register_all()
    run_dir = run(str(config) if config else None, overrides or [], str(runs_dir), name, resume, overwrite)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(eval_table(metrics))
    print(f"wrote {run_dir}")


@app.command("teacher")
def teacher_cmd(config: Optional[Path] = typer.Argument(None), overrides: Optional[List[str]] = typer.Argument(None)):
    """Train (or find in the cache) the teacher; print its checkpoint and test accuracy."""
    from kdx import config as kconfig
    from kdx.data import load as load_data
    from kdx.distill.teacher import get_teacher
    from kdx.run import validate

    if config is not None and "=" in str(config):
        overrides, config = [str(config), *(overrides or [])], None
    _register_all()
    cfg = kconfig.load_config(str(config) if config else None, overrides or [])
    validate(cfg)
    t = get_teacher(cfg, load_data(cfg.data))
    print(f"checkpoint: {t.checkpoint}\ntest_acc: {t.test_acc:.4f}")


@app.command("list")
def list_cmd():
    """List registered datasets, models, sources, losses and held-out distributions."""
    from kdx.registry import ALL

    _register_all()
    for kind, reg in ALL.items():
        print(f"{kind}:")
        for e in reg.entries():
            print(f"  {e.name:22s} {e.description}")


def main():
    try:
        app()
    except KdxError as e:
        print(f"kdx: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
