"""Language models (kdx's `lm` modality): token-level losses against an independent numpy computation,
the `lm_text` corpus (split by document, BPE cached, named errors), the `gpt` models, every LM source's
batches, the LM eval rows, and tiny runs end to end from YAML, the Python API and the `kdx` command."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import log_softmax as np_log_softmax
from scipy.special import rel_entr

from kdx.distill.losses import TOKEN_LOSSES
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
        docs.append({"text": " ".join(sents), "group": f"g{i // 3}"})
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
    assert len(docs) == 240 and len(data.texts["train"]) + len(data.texts["test"]) == 240
    if group:  # no group on both sides
        side = {}
        for text, g in docs:
            side.setdefault(g, set()).add(text in set(data.texts["test"]))
        assert all(len(s) == 1 for s in side.values()) and 0.1 < len(data.texts["test"]) / 240 < 0.4
    # every token but a document's first is a next-token target exactly once
    tok = data.tokenizer
    _, mask = lm_targets(data.x_train, data.pad_id)
    assert int(mask.sum()) == sum(len(ids) + 1 for ids in tok.ids(data.texts["train"]))
    assert data.decode(data.x_test[:1])[0] in " ".join(data.texts["test"])
    assert split_documents(docs, 0.25) == (data.texts["train"], data.texts["test"])


def test_lm_text_windows_enormous_documents_and_skips_empty_ones(tmp_path):
    from kdx.data.lm_text import lm_targets

    docs = corpus_docs(60) + [{"text": "", "group": "empty"}, {"text": "   \n", "group": "blank"},
                               {"text": " ".join(["the fast server sends the file."] * 400), "group": "g0"}]
    path = write_corpus(tmp_path / "c", docs=docs)
    from kdx.registry import DATASETS

    spec = {"name": "lm_text", "path": str(path), "group_column": "group", "context": 32, "vocab_size": 300}
    data = DATASETS.build(spec, "data")
    assert "" not in data.texts["train"] + data.texts["test"] and len(data.texts["train"]) + len(data.texts["test"]) == 61
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
    empty = write_corpus(tmp_path / "e", docs=[{"text": " ", "group": "a"}, {"text": "", "group": "b"}])
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
    data = DATASETS.build({"name": "lm_text", "path": str(out), "group_column": "source", "context": 16,
                           "vocab_size": 270, "test_fraction": 0.5, "prompt_tokens": 2}, "data")
    by_source = {}
    for r in ds:
        by_source.setdefault(r["source"], set()).add(r["text"] in data.texts["test"])
    assert all(len(v) == 1 for v in by_source.values())  # a source package's descriptions stay on one side
