"""A finished run's student, ready to use elsewhere: `kdx export student RUN --format FORMAT`.

    safetensors  student.safetensors (the state dict) and student.json (the model spec, the data it takes,
                 the classes): kdx.export.load_safetensors(folder) rebuilds it
    hf           a transformers save_pretrained folder, for the students that are transformers models (bert
                 with the run's tokenizer, vit with an image processor holding the data's normalisation, gpt)
    onnx         student.onnx (torch.onnx.export, the batch dimension dynamic; kdx[onnx] checks it with onnxruntime)
    torchscript  student.pt (torch.jit.trace; torch.jit.load runs it without kdx)

Each export is written whole or not at all (one folder, RUN/export/FORMAT by default) after the exported
model's logits on the run's test inputs were checked against the torch student's: to CHECK_TOL (ONNX
Runtime's kernels: ONNX_TOL); check.json beside it says on how many inputs and the largest difference.
"""
from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import torch

import kdx
from kdx import config as kconfig
from kdx.data import Dataset, load_dataset, model_input
from kdx.errors import KdxError, first_line
from kdx.io import atomic_dir
from kdx.models import build_model
from kdx.models.gpt import CausalLM
from kdx.models.text import TokenClassifier, _BertBody
from kdx.models.vit import _ViTBody
from kdx.rundir import METRICS, load_student, read_run_config

FORMATS = ("safetensors", "hf", "onnx", "torchscript")
CHECK_TOL, ONNX_TOL = 1e-5, 1e-4
CHECK_N = 256  # test inputs the export is checked on
CHECK = "check.json"


def check_inputs(data: Dataset) -> torch.Tensor:
    """The run's first CHECK_N test inputs as the model takes them."""
    return model_input(data.x_test[:CHECK_N])


@torch.no_grad()
def logits_of(model, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)]).float()


def compare(name: str, expected: torch.Tensor, got, tol: float) -> dict:
    """The largest absolute difference of two logits tables; a KdxError past `tol` (nothing is written)."""
    got = torch.as_tensor(np.asarray(got)).float()
    if got.shape != expected.shape:
        raise KdxError(f"export {name}: the exported model gives logits of shape {tuple(got.shape)}, the student "
                       f"{tuple(expected.shape)}; nothing was written")
    diff = float((got - expected).abs().max())
    if not diff <= tol:
        raise KdxError(f"export {name}: the exported model's logits differ from the student's by up to {diff:.3g} "
                       f"(more than {tol:g}) on the run's test inputs; nothing was written")
    return {"format": name, "inputs": len(expected), "max_abs_diff": diff, "tolerance": tol}


def spec_json(cfg: kconfig.RunConfig, data: Dataset) -> dict:
    return {"model": cfg.student.model, "data": cfg.data, "modality": data.modality,
            "input_shape": list(data.input_shape), "classes": list(data.classes), "seed": cfg.seed,
            "kdx_version": kdx.__version__}


def load_safetensors(folder: str | Path) -> torch.nn.Module:
    """The student a `--format safetensors` export holds, rebuilt from its spec (the data is loaded for its
    shapes, vocabulary and normalisation) and its weights."""
    from safetensors.torch import load_file

    folder = Path(folder)
    spec = json.loads((folder / "student.json").read_text())
    data = load_dataset(spec["data"])
    model = build_model(spec["model"], data, "student.model", spec["seed"])
    model.load_state_dict(load_file(str(folder / "student.safetensors")))
    return model.eval()


def _safetensors(student, cfg, data, folder: Path, expected: torch.Tensor) -> dict:
    from safetensors.torch import save_file

    # clones: tied weights (one tensor under two names) are stored twice, as safetensors requires
    save_file({k: v.detach().contiguous().clone() for k, v in student.state_dict().items()},
              str(folder / "student.safetensors"))
    (folder / "student.json").write_text(json.dumps(spec_json(cfg, data), indent=2) + "\n")
    return compare("safetensors", expected, logits_of(load_safetensors(folder), check_inputs(data)), CHECK_TOL)


def _hf_parts(student, data):
    """(the transformers model the student is, a processor or tokenizer to save with it, how to call it), or
    None for a student that is no transformers model."""
    if isinstance(student, CausalLM):
        tok = getattr(data.tokenizer, "tok", None)
        return student.lm, tok, lambda m, x: m(input_ids=x).logits
    body = getattr(student, "body", None)
    if isinstance(student, TokenClassifier) and isinstance(body, _BertBody):
        from transformers import BertForSequenceClassification

        model = BertForSequenceClassification(body.bert.config)
        model.bert.load_state_dict(body.bert.state_dict())
        model.classifier.load_state_dict(student.head[-1].state_dict())
        model.config.num_labels = data.num_classes
        model.config.id2label = dict(enumerate(map(str, data.classes)))
        model.config.label2id = {str(c): i for i, c in enumerate(data.classes)}
        pad = student.pad_id
        return model, getattr(data.tokenizer, "tok", None), \
            lambda m, x: m(input_ids=x, attention_mask=(x != pad).long()).logits
    if isinstance(body, _ViTBody):
        from transformers import ViTForImageClassification, ViTImageProcessor

        model = ViTForImageClassification(body.vit.config)
        model.vit.load_state_dict(body.vit.state_dict())
        model.classifier.load_state_dict(student.head.state_dict())
        model.config.id2label = dict(enumerate(map(str, data.classes)))
        model.config.label2id = {str(c): i for i, c in enumerate(data.classes)}
        mean, std = student.mean.flatten(), student.std.flatten()
        proc = ViTImageProcessor(do_resize=False, do_rescale=False, do_normalize=True,  # takes [0, 1] images
                                 image_mean=mean.tolist(), image_std=std.tolist())
        view = lambda v, x: v.view(1, -1, *([1] * (x.ndim - 2)))  # noqa: E731
        return model, proc, lambda m, x: m(pixel_values=(x - view(mean, x)) / view(std, x)).logits
    return None


def _hf(student, cfg, data, folder: Path, expected: torch.Tensor) -> dict:
    parts = _hf_parts(student, data)
    if parts is None:
        raise KdxError(f"export hf: the student ('{cfg.student.model['name']}') is not a transformers model; --format hf "
                       "takes bert, vit and gpt students: use --format safetensors, onnx or torchscript for this one")
    model, extra, call = parts
    model.eval().save_pretrained(str(folder))
    if extra is not None:
        extra.save_pretrained(str(folder))
    reloaded = type(model).from_pretrained(str(folder), local_files_only=True).eval()
    return compare("hf", expected, logits_of(lambda x: call(reloaded, x), check_inputs(data)), CHECK_TOL)


class _LogitsOnly(torch.nn.Module):
    """The student with one tensor out (its forward's return_features flag is not exported)."""

    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, x):
        return self.student(x)


def _onnx(student, cfg, data, folder: Path, expected: torch.Tensor) -> dict:
    for package in ("onnx", "onnxscript", "onnxruntime"):
        if importlib.util.find_spec(package) is None:
            raise KdxError(f"export onnx needs the {package} package: pip install 'kdx[onnx]'")
    import onnxruntime

    x = check_inputs(data)
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(_LogitsOnly(student).eval(), (x[:4],), dynamo=True, input_names=["input"],
                                    output_names=["logits"], dynamic_shapes=({0: batch},), external_data=False)
    except Exception as e:  # noqa: BLE001 - torch.export and the ONNX translation raise many types
        raise KdxError(f"export onnx: torch.onnx.export cannot export this student ({type(e).__name__}: "
                       f"{first_line(e, 300, 'no message')}); try --format torchscript or safetensors") from None
    program.save(str(folder / "student.onnx"), external_data=False)
    session = onnxruntime.InferenceSession(str(folder / "student.onnx"), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(["logits"], {"input": x[i:i + 64].numpy()})[0] for i in range(0, len(x), 64)])
    return compare("onnx", expected, got, ONNX_TOL)


def _torchscript(student, cfg, data, folder: Path, expected: torch.Tensor) -> dict:
    x = check_inputs(data)
    with torch.no_grad():
        traced = torch.jit.trace(_LogitsOnly(student).eval(), (x[:4],), check_trace=False)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    (folder / "student.pt").write_bytes(buf.getvalue())
    return compare("torchscript", expected, logits_of(torch.jit.load(str(folder / "student.pt")), x), CHECK_TOL)


EXPORTERS = {"safetensors": _safetensors, "hf": _hf, "onnx": _onnx, "torchscript": _torchscript}


def export_student(run_dir: str | Path, fmt: str, out: str | Path | None = None) -> Path:
    """Write the run's student in `fmt` to `out` (default RUN/export/FMT), checked; returns the folder."""
    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise KdxError(f"--format {fmt!r}: the formats are {', '.join(FORMATS)}")
    if not (run_dir / METRICS).exists():
        raise KdxError(f"{run_dir} is not a finished kdx run (no metrics.json); pass a run directory written by "
                       "`kdx run`")
    cfg = read_run_config(run_dir)
    data = load_dataset(cfg.data)
    student = load_student(run_dir, cfg, data).eval()
    expected = logits_of(student, check_inputs(data))
    folder = Path(out) if out is not None else run_dir / "export" / fmt
    with atomic_dir(folder) as tmp:
        tmp.mkdir(parents=True)
        check = EXPORTERS[fmt](student, cfg, data, tmp, expected)
        (tmp / CHECK).write_text(json.dumps({**check, "run": str(run_dir)}, indent=2) + "\n")
    return folder
