"""What every command shares: the --data-root option and the CONFIG-or-override argument rule."""
from __future__ import annotations

from pathlib import Path

import typer

DATA_ROOT = typer.Option(None, "--data-root", help="folder holding the dataset's files (same as data.root=DIR)")


def split_args(config: Path | None, overrides: list[str] | None, data_root: Path | None) -> tuple[str | None, list[str]]:
    """CONFIG is optional: a first argument with '=' is an override. --data-root is data.root."""
    overrides = list(overrides or [])
    if config is not None and "=" in str(config):
        overrides, config = [str(config), *overrides], None
    if data_root is not None:
        overrides.append(f"data.root={data_root}")
    return (str(config) if config else None), overrides
