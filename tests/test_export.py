"""`kdx export student RUN --format F`: each exported model, loaded back by its own library (safetensors,
transformers, onnxruntime, torch.jit) without the student's code, gives the torch student's logits on the
run's whole test set (1e-5; ONNX 1e-4); the rest is refused with a named error."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import FAST, run_fast
from kdx.cli import app
from kdx.data import load_dataset, model_input
from kdx.export import export_student, load_safetensors
from kdx.models import build_model
from kdx.errors import KdxError
from kdx.rundir import load_student, read_run_config
from test_text import corpus_dir, text_args  # noqa: F401 - the tiny text corpus fixture

TOL, ONNX_TOL = 1e-5, 1e-4


def kdx(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res


def student_and_inputs(run_dir):
    """The torch student, the run's whole test set as model inputs, and the student's logits on it."""
    cfg = read_run_config(run_dir)
    data = load_dataset(cfg.data)
    student = load_student(run_dir, cfg, data).eval()
    x = model_input(data.x_test)
    with torch.no_grad():
        return student, data, x, student(x).float()


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    return run_fast(tmp_path_factory.mktemp("export"), "distill.samples=1000", "eval.distributions=[test]")


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    from kdx.run import run

    fast = [o for o in FAST if not o.startswith("student.model.")]  # FAST's cnn student args
    return run(None, fast + ["distill.samples=512", "eval.distributions=[test]", "student.model.name=vit",
                             "student.model.patch_size=4", "student.model.hidden_size=32", "student.model.layers=1",
                             "student.model.heads=2", "student.model.mlp_size=64"], str(tmp_path_factory.mktemp("vit")), "vit")


def test_safetensors_with_its_spec_rebuilds_the_student(cnn_run):
    kdx("export", "student", cnn_run, "--format", "safetensors")
    folder = cnn_run / "export" / "safetensors"
    from safetensors.torch import load_file

    spec = json.loads((folder / "student.json").read_text())
    assert spec["model"]["name"] == "cnn" and spec["data"]["name"] == "digits" and len(spec["classes"]) == 10
    _, data, x, expected = student_and_inputs(cnn_run)
    model = build_model(spec["model"], data, "student.model", 123)  # another init: the weights come from the file
    model.load_state_dict(load_file(str(folder / "student.safetensors")))
    with torch.no_grad():
        assert (model.eval()(x) - expected).abs().max() <= TOL
        assert (load_safetensors(folder)(x) - expected).abs().max() <= TOL
    check = json.loads((folder / "check.json").read_text())
    assert check["inputs"] == 256 and check["max_abs_diff"] <= TOL


def test_torchscript_runs_without_kdx_code(cnn_run):
    kdx("export", "student", cnn_run, "--format", "torchscript")
    _, _, x, expected = student_and_inputs(cnn_run)
    scripted = torch.jit.load(str(cnn_run / "export" / "torchscript" / "student.pt"))
    with torch.no_grad():
        assert (scripted(x) - expected).abs().max() <= TOL  # the whole test set: a batch size it was not traced at


def test_onnx_matches_in_onnxruntime(cnn_run):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    kdx("export", "student", cnn_run, "--format", "onnx")
    _, _, x, expected = student_and_inputs(cnn_run)
    session = ort.InferenceSession(str(cnn_run / "export" / "onnx" / "student.onnx"), providers=["CPUExecutionProvider"])
    [got] = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert (torch.from_numpy(got) - expected).abs().max() <= ONNX_TOL


def test_hf_vit_student_is_a_save_pretrained_folder_with_its_normalisation(vit_run):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    kdx("export", "student", vit_run, "--format", "hf")
    folder = vit_run / "export" / "hf"
    model = AutoModelForImageClassification.from_pretrained(str(folder), local_files_only=True).eval()
    proc = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    _, data, x, expected = student_and_inputs(vit_run)
    pixels = proc(list(x.numpy()), return_tensors="pt", input_data_format="channels_first")["pixel_values"]
    with torch.no_grad():
        assert (model(pixel_values=pixels).logits - expected).abs().max() <= TOL
    assert [model.config.id2label[i] for i in range(10)] == [str(c) for c in data.classes]


def test_hf_bert_student_comes_with_the_runs_tokenizer(corpus_dir, tmp_path):  # noqa: F811
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kdx.run import run

    args = [a for a in text_args(corpus_dir) if not a.startswith(("teacher.model.", "student.model."))]
    args += ["teacher.model.name=bag_of_embeddings", "teacher.model.dim=16",
                                    "teacher.model.hidden=[16]", "teacher.train.epochs=1", "distill.samples=256",
                                    "eval.distributions=[test]", "student.model.name=bert", "student.model.layers=1",
                                    "student.model.hidden=16", "student.model.heads=2", "student.model.intermediate=32"]
    run_dir = run(None, args, str(tmp_path), "bert")
    kdx("export", "student", run_dir, "--format", "hf")
    folder = run_dir / "export" / "hf"
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    _, data, x, expected = student_and_inputs(run_dir)
    assert tok.get_vocab() == data.tokenizer.tok.get_vocab() and tok.pad_token_id == data.pad_id
    with torch.no_grad():
        assert (model(input_ids=x, attention_mask=(x != data.pad_id).long()).logits - expected).abs().max() <= TOL
    # a text student in the other formats too (token ids in, the mask made inside)
    kdx("export", "student", run_dir, "--format", "torchscript")
    with torch.no_grad():
        scripted = torch.jit.load(str(run_dir / "export" / "torchscript" / "student.pt"))
        assert (scripted(x) - expected).abs().max() <= TOL
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnxscript"):
        import onnxruntime as ort

        kdx("export", "student", run_dir, "--format", "onnx")
        session = ort.InferenceSession(str(run_dir / "export" / "onnx" / "student.onnx"))
        [got] = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert (torch.from_numpy(got) - expected).abs().max() <= ONNX_TOL
    # the saved tokenizer encodes text as the run did
    texts = ["the small server reads a file", "a secure daemon builds the old package"]
    ids = tok(texts, padding="max_length", truncation=True, max_length=data.max_length, return_tensors="pt")
    assert torch.equal(ids["input_ids"], data.encode(texts))


def test_a_student_that_is_no_transformers_model_or_a_bad_format_is_refused(cnn_run, tmp_path):
    with pytest.raises(KdxError, match=r"export hf: the student \('cnn'\) is not a transformers model.*safetensors"):
        export_student(cnn_run, "hf")
    assert not (cnn_run / "export" / "hf").exists()  # nothing half-written
    with pytest.raises(KdxError, match="--format 'tflite': the formats are safetensors, hf, onnx, torchscript"):
        export_student(cnn_run, "tflite")
    with pytest.raises(KdxError, match="not a finished kdx run"):
        export_student(tmp_path, "safetensors")


def test_hf_gpt_student_is_a_causal_lm_folder_with_its_tokenizer(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdx.run import run
    from test_lm import lm_tiny, write_corpus

    run_dir = run("configs/lm_tiny.yaml", lm_tiny(write_corpus(tmp_path / "corpus")), str(tmp_path), "gpt")
    kdx("export", "student", run_dir, "--format", "hf")
    folder = run_dir / "export" / "hf"
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
    _, data, x, expected = student_and_inputs(run_dir)
    with torch.no_grad():
        assert (model(input_ids=x).logits - expected).abs().max() <= TOL
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert len(tok) == data.vocab_size
