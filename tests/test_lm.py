"""Language models (kdx's `lm` modality): token-level losses against an independent numpy computation,
the `lm_text` corpus (split by document, BPE cached, named errors), the `gpt` models, every LM source's
batches, the LM eval rows, and tiny runs end to end from YAML, the Python API and the `kdx` command."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import log_softmax as np_log_softmax
from scipy.special import rel_entr

import kdx
from kdx.distill.losses import TOKEN_LOSSES
from kdx.errors import KdxError
from kdx.registry import LOSSES


# ---------------------------------------------------------------------------------------------- losses
def _random_logits(seed: int, n: int = 3, length: int = 7, vocab: int = 11):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, length, vocab, generator=g, dtype=torch.float64) * 2
    t = torch.randn(n, length, vocab, generator=g, dtype=torch.float64) * 2
    mask = torch.rand(n, length, generator=g) < 0.7
    mask[0, 0] = True
    return s, t, mask


def _numpy_reference(name: str, s, t, mask, temperature: float, **args) -> float:
    """Each loss written out directly in numpy on probabilities, mean over masked positions."""
    ps = np.exp(np_log_softmax(s.numpy() / temperature, -1))
    pt = np.exp(np_log_softmax(t.numpy() / temperature, -1))
    kl = lambda p, q: rel_entr(p, q).sum(-1)  # noqa: E731
    if name == "forward_kl":
        per = kl(pt, ps)
    elif name == "reverse_kl":
        per = kl(ps, pt)
    elif name == "jsd":
        b = args["beta"]
        m = b * pt + (1 - b) * ps
        per = b * kl(pt, m) + (1 - b) * kl(ps, m)
    elif name == "skew_kl":
        a = args["skew"]
        per = kl(pt, a * pt + (1 - a) * ps)
    elif name == "skew_reverse_kl":
        a = args["skew"]
        per = kl(ps, a * ps + (1 - a) * pt)
    elif name == "tv":
        return float((0.5 * np.abs(pt - ps).sum(-1))[mask.numpy()].mean())
    return float(per[mask.numpy()].mean() * temperature ** 2)


@pytest.mark.parametrize("name,args", [("forward_kl", {}), ("reverse_kl", {}), ("jsd", {"beta": 0.5}),
                                       ("jsd", {"beta": 0.1}), ("jsd", {"beta": 0.9}), ("skew_kl", {"skew": 0.1}),
                                       ("skew_reverse_kl", {"skew": 0.3}), ("tv", {})])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_token_losses_equal_an_independent_computation(name, args, temperature, monkeypatch):
    import kdx.distill.losses as losses

    monkeypatch.setattr(losses, "TOKEN_CHUNK", 4)  # several chunks, one ragged: chunking changes nothing
    s, t, mask = _random_logits(len(name) * 10 + int(temperature * 3) + int(10 * sum(args.values())))
    got = LOSSES.get(name).fn(s, t, None, temperature, mask, **args)
    assert got.item() == pytest.approx(_numpy_reference(name, s, t, mask, temperature, **args), rel=1e-9, abs=1e-12)
    assert name in TOKEN_LOSSES


def test_jsd_ends_are_the_two_kls_and_mixes_probabilities():
    s, t, mask = _random_logits(3)
    fwd, rev = (LOSSES.get(n).fn(s, t, None, 1.0, mask) for n in ("forward_kl", "reverse_kl"))
    jsd = LOSSES.get("jsd").fn
    assert abs(jsd(s, t, None, 1.0, mask, beta=0.0) - fwd) < 1e-6
    assert abs(jsd(s, t, None, 1.0, mask, beta=1.0) - rev) < 1e-6
    assert fwd > 0.1 and rev > 0.1 and abs(fwd - rev) > 1e-3  # the two ends really differ
    # the known peer bug: a mixture of log-probabilities is not the mixture of probabilities
    ls, lt = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    wrong_m = torch.softmax(0.5 * lt + 0.5 * ls, -1)
    m = 0.5 * lt.exp() + 0.5 * ls.exp()
    assert not torch.allclose(wrong_m, m, atol=1e-3)
    # and the interior goes to 0 at the ends, so the ends must be special-cased (not the limit)
    assert jsd(s, t, None, 1.0, mask, beta=1e-4) < 0.01 * fwd


def test_token_losses_backpropagate_through_chunks(monkeypatch):
    import kdx.distill.losses as losses

    s, t, mask = _random_logits(5)
    grads = []
    for chunk in (4, 10_000):
        monkeypatch.setattr(losses, "TOKEN_CHUNK", chunk)
        x = s.clone().requires_grad_(True)
        LOSSES.get("jsd").fn(x, t, None, 1.0, mask, beta=0.3).backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-12)
    assert grads[0][~mask].abs().max() == 0 and grads[0][mask].abs().max() > 0  # masked positions get no gradient


def test_next_token_cross_entropy_counts_masked_positions_only():
    s, _, mask = _random_logits(6)
    y = torch.randint(0, s.shape[-1], mask.shape, generator=torch.Generator().manual_seed(0))
    got = LOSSES.get("onehot").fn(s, None, y, 1.0, mask)
    ls = np_log_softmax(s.numpy(), -1)
    ref = -np.take_along_axis(ls, y.numpy()[..., None], -1)[..., 0][mask.numpy()].mean()
    assert got.item() == pytest.approx(ref, rel=1e-9)


def test_token_loss_arguments_out_of_range_are_named():
    from kdx.errors import KdxError

    s, t, mask = _random_logits(7)
    with pytest.raises(KdxError, match="beta=1.5"):
        LOSSES.get("jsd").fn(s, t, None, 1.0, mask, beta=1.5)
    with pytest.raises(KdxError, match="skew=1.0"):
        LOSSES.get("skew_kl").fn(s, t, None, 1.0, mask, skew=1.0)


# ---------------------------------------------------------------------------------------------- data
NOUNS = ["cat", "dog", "tool", "library", "server", "file", "package", "daemon"]
VERBS = ["reads", "writes", "parses", "sends", "builds", "checks"]
ADJS = ["small", "fast", "simple", "secure", "old"]


def corpus_docs(n: int = 240, seed: int = 0) -> list[dict]:
    """Documents of a tiny grammar (learnable by a 1-layer LM in a few hundred steps), in groups of three."""
    import random

    rng = random.Random(seed)
    docs = []
    for i in range(n):
        sents = [f"the {rng.choice(ADJS)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(NOUNS)}."
                 for _ in range(rng.randint(1, 4))]
        docs.append({"text": " ".join(sents), "group": f"g{i // 3}", "short": f"{rng.choice(NOUNS)} for {rng.choice(NOUNS)}s",
                     "section": "games" if i % 21 == 0 else "libs"})
    return docs


def write_corpus(folder, fmt: str = "jsonl", docs: list[dict] | None = None):
    import json

    docs = corpus_docs() if docs is None else docs
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path = folder / "corpus.jsonl"
        path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    elif fmt == "json":
        path = folder / "corpus.json"
        path.write_text(json.dumps(docs))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = folder / "corpus.parquet"
        pq.write_table(pa.Table.from_pylist(docs), path)
    elif fmt == "txt":
        path = folder / "txt"
        path.mkdir()
        for i, d in enumerate(docs):
            (path / f"doc{i:04d}.txt").write_text(d["text"])
    elif fmt == "hf":
        import datasets

        path = folder / "hf"
        datasets.Dataset.from_list(docs).save_to_disk(str(path))
    return path


def lm_data(tmp_path, **args):
    from kdx.registry import DATASETS

    path = write_corpus(tmp_path / "corpus")
    spec = {"name": "lm_text", "path": str(path), "group_column": "group", "context": 24, "vocab_size": 300,
            "test_fraction": 0.2, "prompt_tokens": 6, **args}
    return DATASETS.build(spec, "data")


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "txt", "hf"])
def test_lm_text_reads_every_format_and_splits_by_group(tmp_path, fmt):
    from kdx.data.lm_text import lm_targets, read_documents, split_documents
    from kdx.registry import DATASETS

    path = write_corpus(tmp_path, fmt)
    group = "" if fmt == "txt" else "group"
    data = DATASETS.build({"name": "lm_text", "path": str(path), "group_column": group, "context": 16,
                           "vocab_size": 300, "test_fraction": 0.25}, "data")
    assert data.modality == "lm" and data.vocab_size == 300 and data.x_train.shape[1] == 16
    assert 0 <= int(data.x_train.min()) and int(data.x_train.max()) < data.vocab_size
    docs = read_documents(str(path), "text", group)
    distinct = {d.text for d in docs}
    assert len(docs) == 240 and len(data.texts["train"]) + len(data.texts["test"]) == len(distinct) > 200
    assert not set(data.texts["train"]) & set(data.texts["test"])
    train, test = split_documents(docs, 0.25)
    assert ([d.text for d in train], [d.text for d in test]) == (data.texts["train"], data.texts["test"])
    if group:  # no group on both sides
        assert not {d.group for d in train} & {d.group for d in test} and 0.1 < len(test) / 240 < 0.4
    # every token but a document's first is a next-token target exactly once
    tok = data.tokenizer
    _, mask = lm_targets(data.x_train, data.pad_id)
    assert int(mask.sum()) == sum(len(ids) + 1 for ids in tok.ids(data.texts["train"]))
    assert data.decode(data.x_test[:1])[0] in " ".join(data.texts["test"])


def test_lm_text_windows_enormous_documents_and_skips_empty_ones(tmp_path):
    from kdx.data.lm_text import lm_targets

    docs = corpus_docs(60) + [{"text": "", "group": "empty", "short": ""}, {"text": "   \n", "group": "blank", "short": ""},
                               {"text": " ".join(["the fast server sends the file."] * 400), "group": "g0", "short": ""}]
    for d in docs:
        d.setdefault("section", "libs")
    path = write_corpus(tmp_path / "c", docs=docs)
    from kdx.registry import DATASETS

    spec = {"name": "lm_text", "path": str(path), "group_column": "group", "context": 32, "vocab_size": 300}
    data = DATASETS.build(spec, "data")
    assert "" not in data.texts["train"] + data.texts["test"]
    assert len(data.texts["train"]) + len(data.texts["test"]) == len({d["text"] for d in docs if d["text"].strip()})
    big = max(range(len(data.texts["train"])), key=lambda i: len(data.texts["train"][i]))
    n_windows = int((data.y_train == big).sum())
    n_tokens = len(data.tokenizer.ids([data.texts["train"][big]])[0])
    assert n_windows == -(-(n_tokens + 1) // 31)  # windows of 32 overlapping by one cover [eos] ids [eos]
    _, mask = lm_targets(data.x_train[data.y_train == big], data.pad_id)
    assert int(mask.sum()) == n_tokens + 1
    capped = DATASETS.build({**spec, "max_windows": 2}, "data")
    assert int((capped.y_train == big).sum()) == 2


def test_lm_text_tokenizer_is_cached_and_reused(tmp_path):
    from kdx.data.lm_text import load_lm_tokenizer

    a = lm_data(tmp_path)
    folder = tmp_path / "tok"
    a.tokenizer.tok.save_pretrained(str(folder))
    b = lm_data(tmp_path, tokenizer=str(folder))  # a user's tokenizer from a model folder
    assert torch.equal(a.x_train, b.x_train) and b.tokenizer.key == a.tokenizer.key
    c = lm_data(tmp_path)  # trained again: the cached file, the same ids
    assert torch.equal(a.x_train, c.x_train) and c.tokenizer.source == a.tokenizer.source
    assert load_lm_tokenizer(folder).eos_id == a.tokenizer.eos_id


def test_lm_text_bad_input_gets_named_errors(tmp_path):
    from kdx.errors import KdxError

    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(KdxError, match="missing vocab.json"):
        lm_data(tmp_path, tokenizer=str(folder))
    with pytest.raises(KdxError, match="no column 'body'"):
        lm_data(tmp_path, text_column="body")
    with pytest.raises(KdxError, match="vocab_size=100"):
        lm_data(tmp_path, vocab_size=100)
    with pytest.raises(KdxError, match="prompt_tokens=30"):
        lm_data(tmp_path, prompt_tokens=30)
    with pytest.raises(KdxError, match="does not exist"):
        from kdx.registry import DATASETS

        DATASETS.build({"name": "lm_text", "path": str(tmp_path / "nowhere")}, "data")
    empty = write_corpus(tmp_path / "e", docs=[{"text": " ", "group": "a", "short": "", "section": ""},
                                               {"text": "", "group": "b", "short": "", "section": ""}])
    with pytest.raises(KdxError, match="0 train and 0 test documents"):
        from kdx.registry import DATASETS

        DATASETS.build({"name": "lm_text", "path": str(empty)}, "data")


def test_debian_lm_build_from_apt_lists_through_the_kdx_command(tmp_path):
    from test_debian import _lists_dir
    from typer.testing import CliRunner

    from kdx.cli import app
    from kdx.registry import DATASETS

    lists = _lists_dir(tmp_path)
    out = tmp_path / "debian-lm"
    result = CliRunner().invoke(app, ["data", "build", "debian-lm", "--out", str(out), "--lists-dir", str(lists)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    import datasets

    ds = datasets.load_from_disk(str(out))
    # every package with an English description, the short ones too (no classification filter here)
    assert "python3-foo-dbg" in ds["package"] and "perlsec" in ds["package"] and len(set(ds["text"])) == len(ds)
    assert ds[ds["package"].index("python3-foo")]["source"] == "foo"
    data = DATASETS.build({"name": "lm_text", "path": str(out), "group_column": "source", "domain_column": "short",
                           "context": 16, "vocab_size": 270, "test_fraction": 0.5, "prompt_tokens": 2}, "data")
    # the shifted domain: the test packages' one-line synopses, one window each
    synopses = [r["short"] for r in ds if r["text"] in data.texts["test"]]
    assert "domain" in data.default_heldout and len(data.extra["domain"][0]) == len(synopses)
    decoded = data.decode(data.extra["domain"][0])  # cut at the context
    assert all(s.startswith(d) and len(d) > 5 for d, s in zip(decoded, synopses))
    by_source = {}
    for r in ds:
        by_source.setdefault(r["source"], set()).add(r["text"] in data.texts["test"])
    assert all(len(v) == 1 for v in by_source.values())  # a source package's descriptions stay on one side


# ---------------------------------------------------------------------------------------------- runs
# the causal-LM models and their tiny runs here (tests/test_registry_walk.py checks every model has one)
LM_MODELS = {"gpt": "test_lm_run_from_the_kdx_command_distills_and_evaluates_every_row (and arch=llama below)",
             "hf_causal_lm": "test_a_users_causal_lm_folder_trains_as_student_and_serves_as_teacher"}


# the tiny setting: vocabulary 300, windows of 24 tokens, 1 x 32 teacher, 1 x 16 student
def lm_tiny(path) -> list[str]:
    return [f"data.path={path}", "data.group_column=group", "data.context=24", "data.vocab_size=300",
            "data.prompt_tokens=6", "teacher.model.n_layer=1", "teacher.model.n_embd=32", "teacher.train.epochs=4",
            "teacher.train.lr=0.01", "student.model.n_embd=16", "distill.samples=640", "distill.lr=0.01",
            "distill.checkpoint_every=5", "distill.log_every=5", "eval.n=24", "eval.bootstrap=100"]


@pytest.fixture(scope="session")
def lm_setting(tmp_path_factory):
    """The tiny corpus, its config overrides, the dataset and its trained (cached) teacher."""
    from kdx import config as kconfig
    from kdx.data import load_dataset
    from kdx.distill.teacher import get_teacher

    path = write_corpus(tmp_path_factory.mktemp("lm") / "corpus")
    overrides = lm_tiny(path)
    cfg = kconfig.load_config("configs/lm_tiny.yaml", overrides)
    data = load_dataset(cfg.data)
    return overrides, cfg, data, get_teacher(cfg, data)


def unigram_baseline(data) -> float:
    """Next-token accuracy of always predicting the train set's most frequent token."""
    from kdx.data.lm_text import lm_targets

    y, mask = lm_targets(data.x_test, data.pad_id)
    return float((y[mask] == int(data.token_counts.argmax())).float().mean())


def test_lm_teacher_trains_with_next_token_cross_entropy_and_is_cached(lm_setting):
    import json
    from pathlib import Path

    from kdx.distill.teacher import get_teacher

    _, cfg, data, teacher = lm_setting
    assert teacher.test_acc > unigram_baseline(data) + 0.1, (teacher.test_acc, unigram_baseline(data))
    folder = Path(teacher.checkpoint).parent
    losses = [json.loads(line)["loss"] for line in (folder / "log.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] - 1.0 and json.loads((folder / "recipe.json").read_text())["model"]["name"] == "gpt"
    stamp = teacher.checkpoint.stat().st_mtime_ns
    again = get_teacher(cfg, data)  # from the cache: not trained again
    assert again.checkpoint == teacher.checkpoint and again.checkpoint.stat().st_mtime_ns == stamp


def test_lm_run_from_the_kdx_command_distills_and_evaluates_every_row(lm_setting, tmp_path):
    import json

    from typer.testing import CliRunner

    from kdx.cli import app
    from kdx.eval.lm import evaluate_lm
    from kdx.models import build_model

    overrides, cfg, data, teacher = lm_setting
    result = CliRunner().invoke(app, ["run", "configs/lm_tiny.yaml", *overrides, "--runs-dir", str(tmp_path),
                                      "--name", "corpus"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    m = json.loads((tmp_path / "corpus" / "metrics.json").read_text())
    assert set(m["eval"]) == {"test", "teacher_samples", "student_samples", "random_tokens", "domain", "shift"}
    # random tokens: far from what the teacher was trained on, and the student is furthest from it there
    assert m["eval"]["random_tokens"]["teacher_nll"] > m["eval"]["test"]["teacher_nll"] + 1
    assert m["teacher"]["checkpoint"] == str(teacher.checkpoint)  # the cached teacher
    assert m["train"]["accounting"]["source"]["trained_tokens"] > 0
    # the distilled student is much closer to the teacher than the same student untrained
    untrained = evaluate_lm(teacher.model, build_model(cfg.student.model, data, "student", cfg.seed), data, cfg.eval)
    for row in ("test", "teacher_samples"):
        assert m["eval"][row]["kl_teacher_student"] < 0.7 * untrained[row]["kl_teacher_student"]
        lo, hi = m["eval"][row]["kl_teacher_student_ci"]
        assert lo <= m["eval"][row]["kl_teacher_student"] <= hi
    assert 0 < m["eval"]["student_samples"]["distinct_2"] <= 1 and m["eval"]["test"]["tokens"] > 100


@pytest.mark.parametrize("spec", [
    {"name": "corpus"}, {"name": "teacher_samples", "refresh_every": 2, "temperature": 0.8, "top_p": 0.9},
    {"name": "student_samples"}, {"name": "replay", "buffer": 16, "refresh": 0.5},
    {"name": "lm_mixture", "components": [{"name": "student_samples", "weight": 0.25}, {"name": "corpus", "weight": 0.75}]},
    {"name": "noise", "kind": "uniform"}, {"name": "noise", "kind": "unigram"}, {"name": "lm_downstream"}],
    ids=lambda s: s["name"])
def test_every_lm_source_gives_valid_ids_labels_and_masks(lm_setting, spec):
    from kdx.models import build_model
    from kdx.registry import SOURCES

    _, cfg, data, teacher = lm_setting
    student = build_model(cfg.student.model, data, "student", 0)
    source = SOURCES.build(spec, "source", data=data, seed=3)
    source.setup(torch.device("cpu"), None, teacher=teacher.model, student=student)
    k = data.extra["prompts_train"][0].shape[1]
    prompts = {tuple(r) for r in data.extra["prompts_train"][0].tolist()}
    counted = 0
    for step in range(4):
        b = source.batch(step, 10)
        counted += int(b.mask.sum())
        assert b.x.shape == b.y.shape == b.mask.shape == (10, data.max_length) and b.mask.dtype == torch.bool
        assert int(b.x.min()) >= 0 and int(b.x.max()) < data.vocab_size
        assert torch.equal(b.y[:, :-1], b.x[:, 1:]) and not b.mask[:, -1].any() and b.mask.any()
        assert not (b.mask & (b.y == data.pad_id)).any()  # no padding is ever a target
        if spec["name"] in ("teacher_samples", "student_samples", "replay"):  # completions of train prompts only
            assert all(tuple(r) in prompts for r in b.x[:, :k].tolist()) and not b.mask[:, :k - 1].any()
    if spec["name"] == "lm_downstream":  # the train documents' synopses
        assert data.decode(b.x[:1])[0] in {t for t in [r["short"] for r in corpus_docs()]}
    costs = source.accounting()  # every source counts what it served: the positions the loss counts
    assert costs["trained_tokens"] == counted > 0 and costs["input_tokens"] == 40 * data.max_length
    if spec["name"] == "lm_mixture":  # lambda as a weight: exactly 10 of the 40 examples were on-policy
        assert source.accounting()["student_generated_tokens"] == 10 * (data.max_length - k)


def test_student_samples_are_the_current_students(lm_setting, tmp_path):
    """Each batch of `student_samples` is what the student's weights at that step sample with the step's generator:
    reproduced from a copy of those weights (not a stale student, not the teacher)."""
    import copy

    from kdx.distill.loop import distill
    from kdx.models import build_model
    from kdx.models.gpt import sample
    from kdx.registry import SOURCES
    from kdx.sampling.base import step_generator

    _, cfg, data, teacher = lm_setting
    student = build_model(cfg.student.model, data, "student", 0)
    source = SOURCES.build({"name": "student_samples", "refresh_every": 1}, "source", data=data, seed=5)
    seen = []
    make = source.batch

    def recording(step, n):
        seen.append((step, copy.deepcopy(student.state_dict()), make(step, n)))
        return seen[-1][2]
    source.batch = recording
    dcfg = copy.deepcopy(cfg.distill)
    dcfg.samples, dcfg.batch_size = 60, 12
    distill(student, source, dcfg, teacher=teacher)
    replica = build_model(cfg.student.model, data, "student", 1)
    prompts = data.extra["prompts_train"][0]
    k, new = prompts.shape[1], data.max_length - prompts.shape[1]
    for step, weights, batch in seen:
        replica.load_state_dict(weights)
        g = step_generator(5, step, torch.device("cpu"), "prompts")
        p = prompts[torch.randint(len(prompts), (12,), generator=g)]
        ids, mask = sample(replica, p, new, step_generator(5, step, torch.device("cpu"), "sample"), 1.0, 1.0,
                           data.tokenizer.eos_id, data.pad_id)
        assert torch.equal(ids, batch.x) and torch.equal(mask, batch.mask)
    assert not torch.equal(seen[0][2].x, seen[-1][2].x)
    replica.load_state_dict(seen[0][1])  # a stale student would have sampled something else at the last step
    step = seen[-1][0]
    g = step_generator(5, step, torch.device("cpu"), "prompts")
    p = prompts[torch.randint(len(prompts), (12,), generator=g)]
    stale, _ = sample(replica, p, new, step_generator(5, step, torch.device("cpu"), "sample"), 1.0, 1.0,
                      data.tokenizer.eos_id, data.pad_id)
    assert not torch.equal(stale, seen[-1][2].x)


@pytest.mark.parametrize("spec", [{"name": "student_samples", "refresh_every": 3}, {"name": "replay", "buffer": 8}],
                         ids=lambda s: s["name"])
def test_a_killed_on_policy_run_resumes_bit_identically(lm_setting, tmp_path, spec):
    import copy

    from kdx.distill.loop import distill
    from kdx.models import build_model
    from kdx.registry import SOURCES

    _, cfg, data, teacher = lm_setting
    dcfg = copy.deepcopy(cfg.distill)
    dcfg.samples, dcfg.batch_size, dcfg.checkpoint_every, dcfg.loss = 80, 8, 4, "reverse_kl"

    def fresh():
        return build_model(cfg.student.model, data, "student", 0), SOURCES.build(spec, "source", data=data, seed=2)

    (tmp_path / "whole").mkdir()
    (tmp_path / "killed").mkdir()
    whole_student, whole_source = fresh()
    whole = distill(whole_student, whole_source, dcfg, teacher=teacher, run_dir=tmp_path / "whole")
    student, source = fresh()
    make = source.batch

    def killed(step, n):
        if step == 6:  # after the checkpoint of step 4, mid refresh period
            raise KeyboardInterrupt
        return make(step, n)
    source.batch = killed
    with pytest.raises(KeyboardInterrupt):
        distill(student, source, dcfg, teacher=teacher, run_dir=tmp_path / "killed")
    student, source = fresh()
    resumed = distill(student, source, dcfg, teacher=teacher, run_dir=tmp_path / "killed", resume=True)
    assert resumed["resumed_from_step"] == 4
    for a, b in zip(whole_student.state_dict().values(), student.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed["accounting"]["source"] == whole["accounting"]["source"]


def test_teacher_and_student_vocabulary_mismatch_is_refused_at_startup(lm_setting, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from kdx import config as kconfig
    from kdx.errors import KdxError
    from kdx.run import execute

    overrides, _, data, _ = lm_setting
    overrides = [o for o in overrides if not o.startswith("teacher.model.")]  # the gpt teacher's sizes
    folder = tmp_path / "own-lm"
    GPT2LMHeadModel(GPT2Config(vocab_size=400, n_positions=32, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
                               eos_token_id=0)).save_pretrained(folder)
    cfg = kconfig.load_config("configs/lm_tiny.yaml", [*overrides, "teacher.model.name=hf_causal_lm",
                                                       f"teacher.model.path={folder}"])
    with pytest.raises(KdxError, match=r"teacher predicts over 400 tokens, the student over 300.*vocab_size=400"):
        execute(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    short = tmp_path / "short-lm"
    GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
                               eos_token_id=0)).save_pretrained(short)
    cfg = kconfig.load_config("configs/lm_tiny.yaml", [*overrides, "teacher.model.name=hf_causal_lm",
                                                       f"teacher.model.path={short}"])
    with pytest.raises(KdxError, match="reads at most 16 positions.*data.context=16"):
        execute(cfg, tmp_path / "run")
    # the suggested fix: a student of the teacher's size (the data's 300 ids embed in 400); the folder is the teacher
    cfg = kconfig.load_config("configs/lm_tiny.yaml", [*overrides, "teacher.model.name=hf_causal_lm",
                                                       f"teacher.model.path={folder}", "student.model.vocab_size=400",
                                                       "distill.samples=64", "eval.distributions=[test]"])
    import json

    m = json.loads((execute(cfg, tmp_path / "run") / "metrics.json").read_text())
    assert m["eval"]["test"]["tokens"] > 0


def test_losses_and_data_of_the_other_kind_are_refused_by_name(lm_setting, tmp_path):
    from kdx import config as kconfig
    from kdx.errors import KdxError
    from kdx.run import execute

    overrides, _, _, _ = lm_setting
    cfg = kconfig.load_config("configs/lm_tiny.yaml", [*overrides, "distill.loss=kl"])
    with pytest.raises(KdxError, match="needs a token-level loss"):
        execute(cfg, tmp_path / "a")
    cfg = kconfig.load_config("configs/lm_tiny.yaml", [*overrides, "distill.loss=jsd", "distill.loss_args.gamma=1"])
    with pytest.raises(KdxError, match="has no parameter 'gamma'"):
        execute(cfg, tmp_path / "b")
    cfg = kconfig.load_config(None, ["data.name=digits", "distill.loss=forward_kl"])
    with pytest.raises(KdxError, match="token-level loss for causal LMs"):
        execute(cfg, tmp_path / "c")
    cfg = kconfig.load_config(None, ["data.name=digits", "source.name=student_samples"])
    with pytest.raises(KdxError, match="source 'student_samples' needs language-model corpora"):
        execute(cfg, tmp_path / "d")


def test_on_policy_jsd_run_from_the_python_api_evaluates_reproducibly(lm_setting, tmp_path):
    import json

    from kdx import config as kconfig
    from kdx.eval.lm import evaluate_lm
    from kdx.rundir import load_run

    overrides, _, data, teacher = lm_setting
    cfg = kconfig.load_config("configs/lm_tiny.yaml", [
        *overrides, "source.name=lm_mixture", "distill.loss=jsd", "distill.loss_args.beta=0.5",
        'source.components=[{name: student_samples, weight: 0.5}, {name: corpus, weight: 0.5}]', "distill.samples=320",
        "distill.curve_every=160"])
    from kdx.run import execute

    run_dir = execute(cfg, tmp_path / "gkd")
    m = json.loads((run_dir / "metrics.json").read_text())
    costs = m["train"]["accounting"]["source"]
    assert costs["student_generated_tokens"] == 160 * 18 and m["source"]["name"] == "lm_mixture"
    curve = [json.loads(line)["curve"] for line in (run_dir / "log.jsonl").read_text().splitlines() if "curve" in line]
    assert len(curve) == 2 and all(0 <= c["test_agreement"] <= 1 and c["test_kl_teacher_student"] > 0 for c in curve)
    run = load_run(run_dir)  # evaluating a finished run again gives its numbers (every sampling seeded)
    again = evaluate_lm(run.teacher.model, run.student, run.data, cfg.eval)
    for row, metrics in m["eval"].items():
        for key, value in metrics.items():
            assert again[row][key] == (value if value is None else pytest.approx(value, rel=1e-9, abs=1e-12)), (row, key)


def test_a_users_causal_lm_folder_trains_as_student_and_serves_as_teacher(lm_setting, tmp_path):
    import json

    from transformers import LlamaConfig, LlamaForCausalLM

    from kdx import config as kconfig
    from kdx.run import execute

    overrides, _, data, teacher = lm_setting
    folder = tmp_path / "own-llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=data.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                                 bos_token_id=0, eos_token_id=0)).save_pretrained(folder)
    small = [*overrides, "distill.samples=64", "eval.distributions=[test,student_samples]"]
    as_student = execute(kconfig.load_config("configs/lm_tiny.yaml", [
        *[o for o in small if not o.startswith("student.model.")], "student.model.name=hf_causal_lm",
        f"student.model.path={folder}"]), tmp_path / "s")
    m = json.loads((as_student / "metrics.json").read_text())
    assert m["student"]["arch"] == "hf_causal_lm" and m["eval"]["student_samples"]["tokens"] > 0
    as_teacher = execute(kconfig.load_config("configs/lm_tiny.yaml", [
        *[o for o in small if not o.startswith("teacher.model.")], "teacher.model.name=hf_causal_lm",
        f"teacher.model.path={folder}", "student.model.arch=llama"]), tmp_path / "t")
    m = json.loads((as_teacher / "metrics.json").read_text())
    assert m["teacher"]["arch"] == "hf_causal_lm" and m["eval"]["test"]["tokens"] > 0


def test_a_tokenizer_without_padding_pads_with_eos_and_still_counts_each_documents_end(tmp_path):
    from transformers import PreTrainedTokenizerFast

    from kdx.data.lm_text import EOS, lm_targets
    from kdx.sampling.lm_corpus import lm_batch

    trained = lm_data(tmp_path)
    folder = tmp_path / "gpt2-like"
    PreTrainedTokenizerFast(tokenizer_object=trained.tokenizer.tok.backend_tokenizer, eos_token=EOS).save_pretrained(folder)
    data = lm_data(tmp_path, tokenizer=str(folder))
    assert data.pad_id == data.tokenizer.eos_id
    _, mask = lm_targets(data.x_train, data.pad_id, data.tokenizer.eos_id)
    assert int(mask.sum()) == sum(len(ids) + 1 for ids in data.tokenizer.ids(data.texts["train"]))
    batch = lm_batch(data.x_train[:8], data)
    assert torch.equal(batch.mask, mask[:8])


def test_corpus_with_a_top_k_teacher_cache_skips_the_teacher_and_states_its_error(lm_setting, tmp_path, capsys):
    import json
    from pathlib import Path

    from kdx import config as kconfig
    from kdx.data.lm_text import lm_targets
    from kdx.models.gpt import dense_from_top_k
    from kdx.registry import SOURCES
    from kdx.run import execute

    overrides, _, data, teacher = lm_setting
    errors = {}
    for k in (4, 32, data.vocab_size):
        source = SOURCES.build({"name": "corpus", "top_k": k}, "source", data=data, seed=0)
        source.setup(torch.device("cpu"), teacher.logits, teacher=teacher.model)
        errors[k] = source.accounting()["top_k_kl_error"]
        # the stated error, computed independently in numpy from the full logits and the cache
        x = data.x_train[:32]
        full = np_log_softmax(teacher.model(x).double().detach().numpy(), -1)
        values, ids = source.cached
        dense = dense_from_top_k(values[:32], ids[:32], data.vocab_size).double().numpy()
        _, mask = lm_targets(x, data.pad_id)
        ref = (np.exp(full) * (full - dense)).sum(-1)[mask.numpy()].mean()
        assert errors[k] == pytest.approx(ref, rel=1e-6, abs=1e-9)
        assert np.allclose(np.exp(dense).sum(-1), 1.0, atol=1e-4)  # the bucket keeps each row a distribution
    assert errors[data.vocab_size] < 1e-6 < errors[32] < errors[4]
    assert "teacher top-4 cache, KL(full || cached)" in capsys.readouterr().err
    assert list(Path(teacher.checkpoint).parent.glob("top32-*.pt"))  # cached on disk beside the teacher
    m = json.loads((execute(kconfig.load_config("configs/lm_tiny.yaml", [*overrides, "source.top_k=32",
                                                                         "eval.distributions=[test]"]),
                            tmp_path / "topk") / "metrics.json").read_text())
    costs = m["train"]["accounting"]
    assert costs["teacher_forwards"] == 0 and costs["teacher_cache_lookups"] == costs["samples_trained"]
    assert costs["source"]["top_k_kl_error"] == pytest.approx(errors[32])


def test_lm_downstream_serves_another_corpus_in_the_runs_tokens(lm_setting, tmp_path):
    from kdx.errors import KdxError
    from kdx.registry import SOURCES

    _, _, data, _ = lm_setting
    other = write_corpus(tmp_path / "other", docs=[{"text": f"a daemon {i} logs.", "group": str(i)}
                                                  for i in range(20)])
    source = SOURCES.build({"name": "lm_downstream", "path": str(other)}, "source", data=data, seed=0)
    source.setup(torch.device("cpu"), None)
    b = source.batch(0, 5)
    assert b.x.shape == (5, data.max_length) and all(t.startswith("a daemon ") for t in data.decode(b.x))
    assert source.epoch_size == 20 and b.mask.any()
    with pytest.raises(KdxError, match="no split 'nope'"):
        SOURCES.build({"name": "lm_downstream", "split": "nope"}, "source", data=data, seed=0)


def test_teacher_samples_made_once_into_a_pool_are_served_round_and_round(lm_setting):
    from kdx.registry import SOURCES

    _, _, data, teacher = lm_setting
    source = SOURCES.build({"name": "teacher_samples", "pool": 25}, "source", data=data, seed=1)
    source.setup(torch.device("cpu"), None, teacher=teacher.model)
    batches = [source.batch(step, 10) for step in range(6)]  # 60 rows: the pool of 25 twice and then some
    rows = torch.cat([b.x for b in batches])
    assert torch.equal(rows[:25], rows[25:50]) and torch.equal(rows[:10], rows[50:60])
    assert len({tuple(r) for r in rows[:25].tolist()}) > 20  # the pool itself is varied
    prompt = data.extra["prompts_train"][0].shape[1]
    assert source.accounting()["teacher_generated_tokens"] == 25 * (data.max_length - prompt)
    state = source.state_dict()
    again = SOURCES.build({"name": "teacher_samples", "pool": 25}, "source", data=data, seed=1)
    again.load_state_dict(state)
    again.setup(torch.device("cpu"), None, teacher=teacher.model)
    assert torch.equal(again.batch(6, 10).x, source.batch(6, 10).x)


def test_a_killed_kdx_run_on_policy_resumes_to_the_uninterrupted_result(lm_setting, tmp_path):
    """`kdx run` with student_samples, SIGKILLed once checkpointed, `--resume`d: the same metrics as one run."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import kill_once_checkpointed, strip_timing

    overrides, _, _, _ = lm_setting
    args = ["configs/lm_tiny.yaml", *overrides, "source.name=student_samples", "source.refresh_every=3",
            "distill.samples=3200", "distill.checkpoint_every=4", "eval.distributions=[test,student_samples]"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "kdx", "run", *args, "--runs-dir", str(tmp_path)]
    subprocess.run(cmd + ["--name", "whole"], env=env, check=True, capture_output=True)
    ckpt = kill_once_checkpointed(cmd + ["--name", "killed"], tmp_path / "killed", env)
    assert torch.load(ckpt, weights_only=False)["step"] < 100
    out = subprocess.run(cmd + ["--name", "killed", "--resume"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    whole, resumed = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("whole", "killed"))
    assert resumed["train"]["resumed_from_step"] > 0
    assert strip_timing(resumed) == strip_timing(whole)


def test_lm_text_holds_documents_of_chosen_sections_out_of_both_splits(tmp_path):
    from kdx.errors import KdxError
    from kdx.registry import HELDOUT

    docs = corpus_docs()
    data = lm_data(tmp_path, shift_column="section", shift_values=["games"])
    games = [d for d in docs if d["section"] == "games"]
    held_groups = {d["group"] for d in games}
    kept = data.texts["train"] + data.texts["test"]
    assert not {d["text"] for d in docs if d["group"] in held_groups} & set(kept)  # their whole groups are out
    assert "shift" in data.default_heldout
    decoded = data.decode(data.extra["shift"][0])
    assert all(any(t in d["text"] for d in games) for t in decoded) and len(decoded) >= len(games)
    x, y = HELDOUT.build({"name": "shift"}, "eval", data=data, n=100, seed=0)
    assert y is None and len(x) == len(data.extra["shift"][0])
    with pytest.raises(KdxError, match="no document has section in"):
        lm_data(tmp_path, shift_column="section", shift_values=["nonexistent"])
    with pytest.raises(KdxError, match="shift_column and shift_values go together"):
        lm_data(tmp_path, shift_column="section")


def test_an_image_view_on_lm_data_is_named_through_the_config(lm_setting):
    """`source.augment=mixup` with a language-model corpus (which has no views): a KdxError naming the augment
    and what is valid, as `kdx run` builds it (it raised KeyError 'lm' from the view registry)."""
    from kdx import config as kconfig
    from kdx.run import build_source

    overrides, _, data, _ = lm_setting
    cfg = kconfig.load_config("configs/lm_tiny.yaml", overrides + ["source.name=train", "source.augment=mixup"])
    with pytest.raises(KdxError, match=r"augment 'mixup' does not apply to lm data; valid for dataset '.*': none "
                                       r"\('mixup' is for image and signal data\)"):
        build_source(cfg, data)


def test_an_lm_study_from_the_kdx_command_tables_every_row_and_the_costs_in_tokens(lm_setting, tmp_path):
    import csv
    import json

    from typer.testing import CliRunner

    from kdx.cli import app

    overrides, cfg, data, _ = lm_setting
    study = tmp_path / "lm_study.yaml"
    study.write_text(
        "name: lm_study\nbase: " + str((Path("configs/lm_tiny.yaml")).resolve()) + "\n"
        f"overrides: {json.dumps([*overrides, 'distill.samples=128', 'eval.distributions=[test_subset,student_samples,random_tokens]'])}\n"
        "seeds: [0]\nloss: [forward_kl, reverse_kl]\nprobe: true\nprobe_on: [test_subset]\n"
        "sources:\n  - {name: corpus}\n  - {name: student_samples, refresh_every: 2, label: on-policy}\n"
        "report_distributions: [test_subset, student_samples, random_tokens]\n")
    result = CliRunner().invoke(app, ["study", str(study), "--runs-dir", str(tmp_path / "runs"), "--workers", "1"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    out = tmp_path / "runs" / "studies" / "lm_study"
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 4 * 3  # (2 sources x 2 losses) x 3 distributions
    for row in rows:  # the table carries each run's own numbers, and its costs in tokens
        m = json.loads((out / "runs" / row["run"] / "metrics.json").read_text())
        e = m["eval"][row["distribution"]]
        assert float(row["kl_student_teacher"]) == e["kl_student_teacher"] and int(row["n"]) == e["n"]
        assert int(row["trained_tokens"]) == m["train"]["accounting"]["source"]["trained_tokens"] > 0
        assert m["train"]["accounting"]["source"].get("student_generated_tokens", 0) == int(row["student_generated_tokens"])
        assert m["source"]["name"] == ("corpus" if row["source"] == "corpus" else "student_samples")
        if row["distribution"] == "test_subset":  # each run probed: its token slope in the table
            dev = json.loads((out / "runs" / row["run"] / "probes" / "deviation.json").read_text())
            assert float(row["deviation_slope"]) == dev["distributions"]["test_subset"]["teacher_top1"]["slope"]
    subset = next(r for r in rows if r["distribution"] == "test_subset")
    assert int(subset["n"]) == min(5 * cfg.eval.n, len(data.x_test))  # 5n held-out windows of the test split
    assert {r["loss"] for r in rows} == {"forward_kl", "reverse_kl"}
    md = (out / "summary.md").read_text()
    assert "## cost" in md and "KL(s‖t)" in md and "student gen Mtok" in md
    on_policy = [line for line in md.splitlines() if line.startswith("| on-policy | forward_kl |")]
    assert len(on_policy) == 4  # one line per distribution table, and one in the cost table


def test_test_subset_holds_five_n_fixed_rows_of_the_test_split(lm_setting):
    from kdx.registry import HELDOUT

    _, _, data, _ = lm_setting
    x, _ = HELDOUT.build({"name": "test_subset"}, "eval", data=data, n=7, seed=3)
    again, _ = HELDOUT.build({"name": "test_subset"}, "eval", data=data, n=7, seed=3)
    assert len(x) == min(35, len(data.x_test)) and torch.equal(x, again)
    rows = {tuple(r) for r in data.x_test.tolist()}
    assert all(tuple(r) in rows for r in x.tolist())
    other, _ = HELDOUT.build({"name": "test_subset"}, "eval", data=data, n=7, seed=4)
    assert not torch.equal(x, other)


def test_kdx_probe_on_an_lm_run_fits_token_slopes_that_an_independent_computation_reproduces(lm_setting, tmp_path):
    import json

    from scipy.special import logsumexp
    from typer.testing import CliRunner

    from kdx.cli import app
    from kdx.eval.lm import heldout_tokens
    from kdx.rundir import load_run

    overrides, cfg, data, teacher = lm_setting
    runner = CliRunner()
    result = runner.invoke(app, ["run", "configs/lm_tiny.yaml", *overrides, "--runs-dir", str(tmp_path), "--name", "r"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    result = runner.invoke(app, ["probe", str(tmp_path / "r"), "--resamples", "300"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "student_samples" in result.output and "slope" in result.output
    dev = json.loads((tmp_path / "r" / "probes" / "deviation.json").read_text())
    assert set(dev["distributions"]) == {"test_subset", "teacher_samples", "student_samples"}
    assert (tmp_path / "r" / "probes" / "deviation_test_subset.png").stat().st_size > 1000
    regions = pd.read_csv(tmp_path / "r" / "probes" / "regions.csv")  # context regions, ranked by mean KL(t||s)
    positions = sum(dev["distributions"][d]["teacher_top1"]["n"] for d in dev["distributions"])
    assert regions["size"].sum() == positions and list(regions["rank"]) == list(range(1, len(regions) + 1))
    assert regions["mean_kl_teacher_student"].is_monotonic_decreasing and regions["examples"].str.contains("→").all()
    assert "regions with the largest mean KL" in result.output

    run = load_run(tmp_path / "r")  # the independent computation: numpy on both models' logits of the whole set
    x, mask = heldout_tokens("test_subset", run.data, run.cfg.eval, run.teacher.model, run.student)
    with torch.no_grad():
        zt, zs = (m.eval()(x).double().numpy() for m in (run.teacher.model, run.student))
    rows, cols = np.nonzero(mask.numpy())
    zt, zs = zt[rows, cols], zs[rows, cols]
    nxt = np.concatenate([x[:, 1:], x[:, :1]], 1)[rows, cols]

    def phi(z, c):
        others = z.copy()
        others[np.arange(len(z)), c] = -np.inf
        bound = np.log((1 - 1e-9) / 1e-9)  # the probe clips p to [1e-9, 1 - 1e-9]
        return np.clip(z[np.arange(len(z)), c] - logsumexp(others, 1), -bound, bound)

    for choice, cls in (("teacher_top1", zt.argmax(1)), ("ground_truth", nxt)):
        f = dev["distributions"]["test_subset"][choice]
        px, py = phi(zt, cls), phi(zs, cls)
        assert f["n"] == len(px) and f["sequences"] == len(np.unique(rows))
        assert f["slope"] == pytest.approx(np.polyfit(px, py, 1)[0], rel=1e-4, abs=1e-5)
        assert f["slope_ci"][0] <= f["slope"] <= f["slope_ci"][1]
        _, vecs = np.linalg.eigh(np.cov(px, py))  # the orthogonal fit: the principal axis of (x, y)
        assert f["robust"]["orthogonal"]["slope"] == pytest.approx(vecs[1, 1] / vecs[0, 1], rel=1e-4)
        first = np.argsort(px, kind="stable")[: int(np.ceil(len(px) / 10))]  # the least confident tenth
        assert f["deciles"][0]["mean_deviation"] == pytest.approx((py - px)[first].mean(), rel=1e-3, abs=1e-4)
        by_pos = {k: v["n"] for k, v in f["by_position"].items()}
        assert sum(by_pos.values()) == len(px) and sum(v["n"] for v in f["by_frequency"].values()) == len(px)
        assert f["mean_kl_teacher_student"] > 0


def test_token_slope_intervals_resample_whole_sequences():
    from kdx.probes.tokens import sequence_deciles, sequence_fit

    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    one = sequence_fit(x, 1.3 * x + rng.normal(scale=0.5, size=400), np.zeros(400, int), resamples=200)
    assert one["sequences"] == 1 and one["slope_ci"][0] == one["slope_ci"][1] == pytest.approx(one["slope"])
    # 20 sequences of 20 positions, each sequence with its own slope: positions within one are not
    # independent, so the sequence interval is far wider than one resampling positions would be
    seq = np.repeat(np.arange(20), 20)
    y = (1 + rng.normal(scale=0.5, size=20))[seq] * x + rng.normal(scale=0.1, size=400)
    f = sequence_fit(x, y, seq, resamples=500, seed=1)
    per_position = sequence_fit(x, y, np.arange(400), resamples=500, seed=1)
    assert f["slope"] == pytest.approx(np.polyfit(x, y, 1)[0]) == pytest.approx(per_position["slope"])
    width = lambda r: r["slope_ci"][1] - r["slope_ci"][0]  # noqa: E731
    assert width(f) > 2 * width(per_position), (f["slope_ci"], per_position["slope_ci"])
    d = sequence_deciles(x, y - x, seq, resamples=200)
    order = np.argsort(x, kind="stable")
    assert [r["n"] for r in d] == [40] * 10
    assert d[3]["mean_deviation"] == pytest.approx((y - x)[order[120:160]].mean())


def test_findings_token_section_reads_each_runs_slopes_and_pairs_them_with_the_one_hot_baseline(lm_setting, tmp_path):
    """`kdx findings --only tokens --run`: a tiny LM study (forward KL and the one-hot corpus baseline, 2 seeds,
    every run token-probed) rendered into section 7 of an existing page, in place."""
    import json

    from typer.testing import CliRunner

    from kdx.cli import app

    overrides, _, _, _ = lm_setting
    configs = tmp_path / "configs"
    (configs / "studies").mkdir(parents=True)
    (configs / "studies" / "tokens_lm.yaml").write_text(
        "name: tokens_lm\nbase: " + str(Path("configs/lm_tiny.yaml").resolve()) + "\n"
        f"overrides: {json.dumps([*overrides, 'distill.samples=128', 'eval.distributions=[test_subset]'])}\n"
        "seeds: [0, 1]\nprobe: true\nprobe_on: [test_subset]\nreport_distributions: [test_subset]\n"
        "sources:\n  - {name: corpus, label: corpus}\n  - {name: corpus, label: corpus, loss: onehot}\n")
    (configs / "findings.yaml").write_text(  # the other roles are listed, never read with --only
        "studies:\n  - {name: s, role: self, dataset: A}\n  - {name: p, role: puzzle, dataset: A}\n"
        "  - {name: tokens_lm, role: tokens, dataset: tiny LM}\n")
    page = tmp_path / "findings.md"
    before = "# Findings\n\n<!-- kdx findings: tokens verdicts -->\n<!-- /kdx findings: tokens verdicts -->\n\nkept\n"
    page.write_text(before + "<!-- kdx findings: tokens body -->\n<!-- /kdx findings: tokens body -->\n")
    res = CliRunner().invoke(app, ["findings", "--only", "tokens", "--run", "--runs-dir", str(tmp_path / "runs"),
                                   "--configs", str(configs), "--out", str(page)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    text = page.read_text()
    assert text.startswith("# Findings") and "\nkept\n" in text and "## 7. Deviation slope on next tokens" in text
    runs = tmp_path / "runs" / "studies" / "tokens_lm" / "runs"

    def fit(run):
        return json.loads((runs / run / "probes" / "deviation.json").read_text())["distributions"]["test_subset"]["teacher_top1"]

    kd = [fit(f"corpus-forward_kl-s{s}") for s in (0, 1)]
    oh = [fit(f"corpus-onehot-s{s}") for s in (0, 1)]
    row = next(line for line in text.splitlines() if line.startswith("| corpus | forward_kl | test_subset | teacher_top1 |"))
    cols = [c.strip() for c in row.split("|")]
    assert cols[5].startswith(f"{np.mean([f['slope'] for f in kd]):.2f} [")
    assert cols[6].startswith(f"{np.mean([f['robust']['binned_medians']['slope'] for f in kd]):.2f} [")
    assert cols[7].startswith(f"{np.mean([f['robust']['orthogonal']['slope'] for f in kd]):.2f} [")
    assert cols[8].startswith(f"{np.mean([a['slope'] - b['slope'] for a, b in zip(kd, oh)]):.2f} [")  # paired by seed
    verdict = next(line for line in text.splitlines() if line.startswith("| tiny LM, corpus, forward_kl |"))
    assert "slope" in verdict and "excess over one-hot" in verdict


def test_label_noise_on_an_lm_corpus_is_refused_with_the_fix(lm_setting):
    from kdx.data import load_dataset

    _, cfg, _, _ = lm_setting
    with pytest.raises(KdxError, match="language-model corpus: it has no class labels.*drop data.train_size and data.label_noise"):
        load_dataset({**cfg.data, "label_noise": 0.2})
