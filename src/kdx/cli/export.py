"""`kdx export student RUN --format ...` (a finished run's student in a format other tools load) and
`kdx export fiftyone RUN` (a probed run as a FiftyOne dataset)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

export_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@export_app.command("student")
def student_cmd(run: Path = typer.Argument(..., help="a finished run directory"),
                fmt: str = typer.Option(..., "--format", help="safetensors | hf | onnx | torchscript"),
                out: Optional[Path] = typer.Option(None, "--out", help="the folder to write (default RUN/export/FORMAT)")):
    """The run's student as safetensors + spec, a transformers folder, ONNX or TorchScript, checked against its logits."""
    from kdx.export import CHECK, export_student

    folder = export_student(run, fmt, out)
    check = json.loads((folder / CHECK).read_text())
    print(f"wrote {folder}: logits within {check['max_abs_diff']:.2g} of the student's on {check['inputs']} test inputs")


@export_app.command("fiftyone")
def fiftyone_cmd(run: Path = typer.Argument(..., help="a probed run directory (kdx probe RUN)"),
                 name: Optional[str] = typer.Option(None, "--name", help="the dataset's name (default kdx-RUN; replaced)"),
                 media: Optional[Path] = typer.Option(None, "--media", help="where the PNGs go (default RUN/fiftyone)")):
    """A FiftyOne dataset of the run's evaluation inputs: labels, both models' logits, KL, regions, the map."""
    from kdx.export.fiftyone import export_fiftyone

    dataset = export_fiftyone(run, name, media)
    print(f"wrote FiftyOne dataset {dataset.name!r}: {len(dataset)} samples (fiftyone app launch, or "
          f"fo.load_dataset({dataset.name!r}) in Python)")
