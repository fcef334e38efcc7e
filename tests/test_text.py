"""Text through the one seam: a tiny generated corpus (4 topics), a 1-layer BERT teacher and a bag-of-
embeddings student; sources, held-out sets, tokenizer loading, resume, and refusals of image-only parts."""
import json
import os
import random
import subprocess
import sys

import pytest
import torch

from conftest import kill_once_checkpointed, strip_timing
from kdx.errors import KdxError

TOPICS = {
    "astro": "star galaxy planet orbit telescope comet nebula moon",
    "cook": "recipe oven flour butter sugar bake knife spoon",
    "net": "packet router socket protocol server client proxy tcp",
    "music": "guitar chord melody rhythm piano drum song tempo",
}
COMMON = "the a of and with for is this tool library package simple fast small data".split()


def _corpus(n: int, seed: int):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % len(TOPICS)
        words = TOPICS[list(TOPICS)[label]].split()
        length = rng.randint(5, 30)
        text = " ".join(rng.choice(words) if rng.random() < 0.5 else rng.choice(COMMON) for _ in range(length))
        short = " ".join(rng.choice(words) if rng.random() < 0.5 else rng.choice(COMMON) for _ in range(3))
        rows.append({"text": text, "label": label, "short": short})
    return rows


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    import datasets

    out = tmp_path_factory.mktemp("corpus")
    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(TOPICS)),
                               "short": datasets.Value("string")})
    dsd = datasets.DatasetDict({s: datasets.Dataset.from_list(_corpus(n, seed), features=feats)
                                for s, n, seed in (("train", 800, 0), ("test", 400, 1))})
    dsd.save_to_disk(str(out))
    return out


def text_args(corpus_dir):
    return [
        "data.name=hf_text", f"data.path={corpus_dir}", "data.max_length=24", "data.vocab_size=200",
        "data.domain_column=short",
        "teacher.model.name=bert", "teacher.model.layers=1", "teacher.model.hidden=32", "teacher.model.heads=2",
        "teacher.model.intermediate=64", "teacher.train.epochs=20", "teacher.train.batch_size=32",
        "teacher.train.optimizer=adamw", "teacher.train.lr=0.003", "teacher.train.weight_decay=0.01",
        "teacher.train.schedule=cosine",
        "student.model.name=bag_of_embeddings", "student.model.dim=16", "student.model.hidden=[32]",
        "distill.samples=4000", "distill.batch_size=64", "distill.optimizer=adamw", "distill.lr=0.01",
        "distill.checkpoint_every=5", "distill.log_every=5", "eval.n=200", "eval.bootstrap=100",
        "eval.distributions=[default]",
    ]


@pytest.fixture(scope="session")
def text_teacher(corpus_dir, kdx_cache):
    from kdx import config as kconfig
    from kdx.data import load_dataset
    from kdx.distill.teacher import get_teacher

    cfg = kconfig.load_config(None, text_args(corpus_dir))
    data = load_dataset(cfg.data)
    return cfg, data, get_teacher(cfg, data)


def test_text_teacher_and_student_beat_chance(text_teacher, corpus_dir, tmp_path):
    from kdx.run import run

    cfg, data, teacher = text_teacher
    assert data.modality == "text" and data.x_train.dtype == torch.int64 and data.x_train.shape[1] == 24
    # 4 classes: chance is 0.25. Over 4 seeds: teacher 0.998-1.0, student 0.978-0.993, agreement 0.978-0.990,
    # the teacher on the domain set 0.92-0.94
    assert teacher.test_acc > 0.7, teacher.test_acc
    run_dir = run(None, text_args(corpus_dir) + ["source.name=train", "source.augment=word_dropout"], str(tmp_path), "r")
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["eval"]["test"]["student_acc"] > 0.6, m["eval"]["test"]
    assert m["eval"]["test"]["agreement"] > 0.6
    # every text held-out set was evaluated; random tokens have no labels
    for name in ("typos-3", "word_dropout-2", "truncation-2", "class_subset", "domain", "random_tokens"):
        assert name in m["eval"], name
    assert m["eval"]["random_tokens"]["student_acc"] is None
    assert m["eval"]["domain"]["teacher_acc"] > 0.4


SOURCES_TO_CHECK = [
    {"name": "train"}, {"name": "train", "augment": "word_dropout", "p": 0.3},
    {"name": "train", "augment": "word_swap", "p": 0.3},
    {"name": "downstream", "dataset": "self", "split": "short_train"},
    {"name": "noise", "kind": "uniform"}, {"name": "noise", "kind": "unigram"},
    {"name": "hotflip", "flips": 3, "batch": 64, "pool_size": 128},
    {"name": "hotflip", "objective": "discrepancy", "start": "train", "flips": 2, "batch": 64, "pool_size": 128},
    {"name": "mixture", "components": [{"name": "train", "augment": "word_swap"}, {"name": "noise", "kind": "unigram"},
                                       {"name": "hotflip", "batch": 64, "pool_size": 128}]},
]


@pytest.mark.parametrize("spec", SOURCES_TO_CHECK, ids=lambda s: "-".join(str(v) for v in s.values() if not isinstance(v, list)))
def test_every_text_source_yields_valid_ids_and_masks(text_teacher, spec):
    from kdx.models import build_model
    from kdx.registry import SOURCES

    cfg, data, teacher = text_teacher
    student = build_model(cfg.student.model, data, "student", 0)
    src = SOURCES.build(spec, "source", data=data, seed=3)
    src.setup(torch.device("cpu"), teacher.logits, teacher=teacher.model, student=student)
    first = int(data.x_train[0, 0])
    for step in range(2):
        x = src.batch(step, 200).x
        assert x.dtype == torch.int64 and x.shape == (200, data.max_length)
        assert int(x.min()) >= 0 and int(x.max()) < data.vocab_size
        mask = x != data.pad_id
        assert not (mask[:, 1:] & ~mask[:, :-1]).any(), "padding must only trail"
        assert mask.sum(1).min() >= 2
        assert (x[:, 0] == first).all(), "the [CLS] template token stays first"
    if spec["name"] == "noise":  # lengths follow the train set's
        lengths = (src.batch(7, 4000).x != data.pad_id).sum(1).float()
        train = data.lengths.float()
        for q in (0.1, 0.5, 0.9):
            assert abs(lengths.quantile(q) - train.quantile(q)) <= 1.5, q
        if spec["kind"] == "unigram":  # frequent train tokens are frequent here
            counts = torch.bincount(src.batch(8, 4000).x.flatten(), minlength=data.vocab_size)
            top = data.token_counts.clone()
            top[[data.pad_id, *data.special_ids]] = 0
            assert counts[top.argmax()] > counts[data.candidate_ids()].float().mean() * 3
    if spec.get("augment") == "word_dropout":  # a view, shorter than the stored input
        assert (x != data.pad_id).sum() < (data.x_train != data.pad_id).sum(1).float().mean() * 200 * 0.9


def test_tokenizer_dir_missing_a_file_is_a_clear_error(text_teacher, tmp_path, corpus_dir):
    from kdx.data import load_dataset
    from kdx.data.text import load_tokenizer

    _, data, _ = text_teacher
    full = tmp_path / "tok"
    data.tokenizer.tok.save_pretrained(str(full))
    tok = load_tokenizer(full)  # a complete folder loads, and encodes as the data did
    assert torch.equal(tok.encode(data.texts["test"][:5], data.max_length), data.x_test[:5])
    ds = load_dataset({"name": "hf_text", "path": str(corpus_dir), "max_length": 24, "tokenizer": str(full)})
    assert torch.equal(ds.x_test[:5], data.x_test[:5])
    for f in ("tokenizer.json", "vocab.txt"):
        (full / f).unlink(missing_ok=True)
    with pytest.raises(KdxError, match="is missing its vocabulary.*tokenizer.json or vocab.txt"):
        load_tokenizer(full)
    (full / "vocab.json").write_text("{}")
    with pytest.raises(KdxError, match="missing merges.txt"):
        load_tokenizer(full)
    with pytest.raises(KdxError, match="not a directory"):
        load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(KdxError, match="kdx data build debian-descriptions --out DIR"):
        load_dataset({"name": "debian_descriptions", "path": str(tmp_path / "nope")})


def test_text_run_killed_resumes_bit_identical(text_teacher, corpus_dir, tmp_path):
    args = text_args(corpus_dir) + [
        "source.name=mixture", "distill.samples=3200", "distill.checkpoint_every=10",
        "source.components=[{name: train, augment: word_swap}, {name: noise, kind: unigram}, "
        "{name: hotflip, batch: 64, pool_size: 256, refresh_every: 4}]",
        "eval.distributions=[test,typos-2,random_tokens]"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref_cmd = [sys.executable, "-m", "kdx", "run", *args, "--runs-dir", str(tmp_path), "--name", "ref"]
    out = subprocess.run(ref_cmd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    cmd = [sys.executable, "-m", "kdx", "run", *args, "--runs-dir", str(tmp_path), "--name", "killed"]
    kill_once_checkpointed(cmd, tmp_path / "killed", env, poll=0.02)
    out = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    m_ref = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    m_res = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert m_res["train"]["resumed_from_step"] > 0
    assert strip_timing(m_res) == strip_timing(m_ref)
    a = torch.load(tmp_path / "ref" / "student.pt")["model"]
    b = torch.load(tmp_path / "killed" / "student.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_image_only_parts_refuse_text_and_text_parts_refuse_images(text_teacher):
    from kdx.data import load_dataset
    from kdx.eval import heldout
    from kdx.models import build_model
    from kdx.registry import SOURCES

    _, data, _ = text_teacher
    for name in ("blur-2", "gaussian_noise-1", "rotation-2", "uniform_noise"):
        with pytest.raises(KdxError, match=f"held-out '{name.split('-')[0]}' needs images.*holds text: use test, "
                                           "train_subset, typos-N"):
            heldout.load(name, data, 50, 0)
    with pytest.raises(KdxError, match="kind must be uniform or unigram for text"):
        SOURCES.build({"name": "noise", "kind": "gaussian"}, "source", data=data, seed=0)
    with pytest.raises(KdxError, match="augment 'mixup' does not apply to text data; valid .*word_dropout, word_swap"):
        SOURCES.build({"name": "train", "augment": "mixup"}, "source", data=data, seed=0)
    with pytest.raises(KdxError, match="source 'inversion' needs images or signals.*holds text: use hotflip"):
        SOURCES.build({"name": "inversion"}, "source", data=data, seed=0)
    with pytest.raises(KdxError, match="model 'cnn' needs images or signals.*use a text model: bert"):
        build_model({"name": "cnn"}, data, "student.model", 0)
    with pytest.raises(KdxError, match="an input box"):
        data.box()
    digits = load_dataset({"name": "digits"})
    with pytest.raises(KdxError, match="held-out 'typos' needs text; dataset 'digits' holds images"):
        heldout.load("typos-2", digits, 50, 0)
    with pytest.raises(KdxError, match="source 'hotflip' needs text"):
        SOURCES.build({"name": "hotflip"}, "source", data=digits, seed=0)
    with pytest.raises(KdxError, match="model 'bert' needs text"):
        build_model({"name": "bert"}, digits, "student.model", 0)
    assert len(heldout.load("class_subset", digits, 50, 0).x) > 0  # modality-blind


def test_a_text_run_with_an_image_held_out_set_fails_before_training(text_teacher, corpus_dir, tmp_path):
    from kdx.run import run

    with pytest.raises(KdxError, match="held-out 'blur' needs images"):
        run(None, text_args(corpus_dir) + ["eval.distributions=[test,blur-2]"], str(tmp_path), "r")
    assert not (tmp_path / "r" / "log.jsonl").exists()


def test_probe_and_explorer_work_on_text_and_show_decoded_inputs(text_teacher, corpus_dir, tmp_path):
    import numpy as np

    from kdx.explore import build
    from kdx.probes import ProbeOptions, probe
    from kdx.run import run

    _, data, _ = text_teacher
    run_dir = run(None, text_args(corpus_dir) + ["source.name=noise", "source.kind=unigram", "distill.samples=640",
                                                 "eval.distributions=[test,train_subset]"], str(tmp_path), "p")
    summary = probe(run_dir, ProbeOptions(source_n=300, map_source_n=100, map_epochs=20, regions=4, resamples=50))
    assert summary["map"] == "computed"
    dev = json.loads((run_dir / "probes" / "deviation.json").read_text())
    assert "slope" in dev["distributions"]["test"]["teacher_top1"]
    kept = np.load(run_dir / "probes" / "map_arrays.npz")["distill_x"]
    assert kept.dtype == np.int32 and kept.max() < data.vocab_size  # token ids kept exactly
    page = (build(run_dir, tmp_path / "page", False) / "index.html").read_text()
    assert '"texts":[' in page
    for text in data.decode(data.x_test[:3]):  # the test points' decoded inputs are on the page
        assert json.dumps(text)[1:-1] in page


def test_bert_from_a_save_pretrained_folder(text_teacher, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from kdx.models import build_model, predict

    _, data, _ = text_teacher
    cfg = BertConfig(vocab_size=data.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=data.max_length, num_labels=data.num_classes)
    BertForSequenceClassification(cfg).save_pretrained(str(tmp_path / "bert"))
    model = build_model({"name": "bert", "path": str(tmp_path / "bert")}, data, "teacher.model", 0)
    assert model.weight_files == [str(tmp_path / "bert")]  # arrives trained: used as it is
    logits, feats = predict(model, data.x_test[:8], features=True)
    assert logits.shape == (8, data.num_classes) and feats.shape == (8, 16)
    small = BertConfig(vocab_size=10, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertForSequenceClassification(small).save_pretrained(str(tmp_path / "small"))
    with pytest.raises(KdxError, match="takes 10 tokens.*tokenise with its tokenizer"):
        build_model({"name": "bert", "path": str(tmp_path / "small")}, data, "teacher.model", 0)
    with pytest.raises(KdxError, match="no config.json"):
        build_model({"name": "bert", "path": str(tmp_path)}, data, "teacher.model", 0)


# each text model's smallest sensible size (tests/test_registry_walk.py checks every model has a tiny run)
TEXT_MODELS = {"bert": ["layers=1", "hidden=16", "heads=2", "intermediate=32"],
               "bag_of_embeddings": ["dim=16", "hidden=[16]"], "text_cnn": ["dim=16", "channels=16", "kernels=[3]"]}


@pytest.mark.parametrize("model", sorted(TEXT_MODELS))
def test_text_model_as_teacher_and_as_student(model, corpus_dir, tmp_path):
    from kdx.run import run

    base = text_args(corpus_dir) + ["teacher.train.epochs=1", "distill.samples=256", "eval.distributions=[test]"]
    args = TEXT_MODELS[model]
    for role, other in (("teacher", "student"), ("student", "teacher")):
        spec = [f"{role}.model.name={model}", *(f"{role}.model.{a}" for a in args),
                f"{other}.model.name=bag_of_embeddings", f"{other}.model.dim=16", f"{other}.model.hidden=[16]"]
        base_no_models = [a for a in base if not a.startswith(("teacher.model.", "student.model."))]
        m = json.loads((run(None, base_no_models + spec, str(tmp_path), role) / "metrics.json").read_text())
        assert m[role]["arch"] == model and m["eval"]["test"]["n"] == 400
