"""`kdx export student RUN --format ...`: a finished run's student in a format other tools load."""
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
