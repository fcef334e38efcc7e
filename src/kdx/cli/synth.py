"""`kdx synth`: write a pool of N synthesised inputs with the teacher's outputs (kdx.pool)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import torch
import typer

import kdx
from kdx.cli.common import DATA_ROOT, split_args
from kdx.errors import KdxError


def synth_cmd(config: Optional[Path] = typer.Argument(None, help="YAML config; its `source` is the method"),
              overrides: Optional[List[str]] = typer.Argument(None, help="overrides, e.g. source.name=inversion"),
              n: int = typer.Option(10_000, "--n", help="how many inputs to make"),
              out: Path = typer.Option(..., "--out", help="folder to write (a Hugging Face save_to_disk folder)"),
              overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out folder"),
              data_root: Optional[Path] = DATA_ROOT):
    """Synthesise N inputs with a synthesis source; save them with the teacher's logits as a Hugging Face dataset."""
    from kdx import config as kconfig
    from kdx.data import load_dataset
    from kdx.distill.teacher import get_teacher
    from kdx.run import validate
    from kdx.pool import TEST_ROWS, save_pool, synthesis_source, synthesize_pool

    if n < 1:
        raise KdxError(f"--n must be at least 1, got {n}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise KdxError(f"{out} exists; pass --overwrite to replace it")
    config, overrides = split_args(config, overrides, data_root)
    cfg = kconfig.load_config(config, overrides)
    spec = validate(cfg)
    data = load_dataset(cfg.data)
    source = synthesis_source(cfg, data)  # a bad source value is refused before a teacher is found or trained
    teacher = get_teacher(cfg, data)
    made = synthesize_pool(cfg, data, teacher, n, source=source)
    params = {"source": spec, "n": len(made["x"]), "seed": cfg.seed, "data": cfg.data,
              "teacher": {"model": cfg.teacher.model, "checkpoint": str(teacher.checkpoint),
                          "test_acc": teacher.test_acc},
              "seconds": made["seconds"], **made["stats"], "kdx_version": kdx.__version__,
              "test_split": f"a copy of the first {TEST_ROWS} rows of train, not held-out data"}
    logits = save_pool(out, data, made["x"], teacher.model, params)
    probs = logits.softmax(1)
    balance = torch.bincount(probs.argmax(1), minlength=data.num_classes).float() / len(probs)
    print(f"made {len(logits)} inputs in {made['seconds']:.1f}s: mean teacher confidence "
          f"{probs.max(1).values.mean():.3f}, class shares {min(balance):.3f}..{max(balance):.3f}, "
          f"clipped {made['stats']['clipped_fraction']:.2%} of values")
    print(f"wrote {out}; distil from it with: source.name=downstream source.dataset=hf source.args.path={out}")
