"""The TinyBERT-style masked-LM replacement view (`train` source, augment: mlm_replace) on the tiny
4-topic corpus of test_text: valid ids and masks, the replacement rate, replacements drawn from an
independent forward of the cached MLM, determinism per (seed, step), the MLM cache, and a tiny run."""
import json

import pytest
import torch

from test_text import corpus_dir, text_args, text_teacher  # noqa: F401 (fixtures)

MLM = {"layers": 1, "hidden": 32, "heads": 2, "intermediate": 64, "epochs": 3, "batch_size": 32, "lr": 0.003}
SPEC = {"name": "train", "augment": "mlm_replace", "p": 0.4, "top_k": 5, "mlm": MLM}


@pytest.fixture(scope="module")
def mlm_source(text_teacher):
    from kdx.registry import SOURCES

    cfg, data, teacher = text_teacher
    src = SOURCES.build(SPEC, "source", data=data, seed=3)
    src.setup(torch.device("cpu"), teacher.logits, teacher=teacher.model)
    return data, src


def test_mlm_views_are_valid_ids_with_unchanged_masks(mlm_source):
    data, src = mlm_source
    for step in range(3):
        b = src.batch(step, 200)
        x = b.x
        assert b.teacher_logits is None  # a fresh view: the loop runs the teacher on it
        assert x.dtype == torch.int64 and x.shape == (200, data.max_length)
        assert int(x.min()) >= 0 and int(x.max()) < data.vocab_size
    # the view keeps every row's specials and padding in place: compare with the rows it came from
    from kdx.sampling.mlm import mlm_replace
    from kdx.sampling.base import step_generator

    x0 = data.x_train[:300]
    out = mlm_replace(x0, step_generator(0, 0, torch.device("cpu"), "augment"), data, 0.4, src.view.mlm, 5)
    assert torch.equal(out != data.pad_id, x0 != data.pad_id)
    special = torch.isin(x0, torch.tensor(data.special_ids))
    assert torch.equal(out[special], x0[special])
    changed = out != x0
    assert not torch.isin(out[changed], torch.tensor([data.pad_id, *data.special_ids])).any()
    # word starts stay word starts, continuations continuations
    assert torch.equal(data.word_start[out[changed]], data.word_start[x0[changed]])


def test_replacement_rate_and_candidates_are_the_mlms_top_k(mlm_source):
    from kdx.sampling.base import step_generator
    from kdx.models.mlm import build_mlm, mask_id, mlm_path, mlm_settings
    from kdx.sampling.mlm import mlm_replace

    data, src = mlm_source
    x = data.x_train[:400]
    out, sel = mlm_replace(x, step_generator(1, 5, torch.device("cpu"), "augment"), data, 0.4, src.view.mlm, 5,
                           return_selection=True)
    content = (x != data.pad_id) & ~torch.isin(x, torch.tensor(data.special_ids))
    rate = sel[content].float().mean().item()
    assert abs(rate - 0.4) < 0.05, rate
    assert not (sel & ~content).any()
    assert ((out != x) & ~sel).sum() == 0, "only selected tokens change"
    assert (out[sel] != x[sel]).float().mean() > 0.3, "most selected tokens are replaced"
    # an independent forward of the cached MLM (loaded from disk, plain BertForMaskedLM call) on the masked input
    mlm = build_mlm(data, mlm_settings(MLM))
    mlm.load_state_dict(torch.load(mlm_path(data, MLM), map_location="cpu")["model"])
    mlm.eval()
    with torch.no_grad():
        logits = mlm(input_ids=x.masked_fill(sel, mask_id(data)), attention_mask=(x != data.pad_id).long()).logits
    logits = logits[sel]
    banned = torch.ones(data.vocab_size, dtype=torch.bool)
    banned[data.candidate_ids()] = False
    role = data.word_start[x[sel]].view(-1, 1) != data.word_start.view(1, -1)
    logits = logits.masked_fill(banned.view(1, -1) | role, float("-inf"))
    best, top = logits.topk(5, dim=1)
    # The source's head ran on the selected rows alone, this call on every position: other matmul shapes,
    # which another CPU may round differently in the last digit. So a replacement must score at least the
    # 5th best logit up to 1e-4: a near-tie at the 5th place may go either way.
    chosen = logits.gather(1, out[sel].view(-1, 1)).squeeze(1)
    assert (chosen >= best[:, -1] - 1e-4).all(), "every replacement is one of the MLM's top-k"
    # and the draw is not always the argmax: uniform over the k candidates
    assert (top[:, 0] != out[sel]).float().mean() > 0.5


def test_mlm_views_are_a_function_of_seed_and_step(text_teacher, mlm_source):
    from kdx.registry import SOURCES

    cfg, data, teacher = text_teacher
    _, src = mlm_source
    other = SOURCES.build(SPEC, "source", data=data, seed=3)
    other.setup(torch.device("cpu"), None)
    src.cursor = other.cursor = 0
    a = [src.batch(s, 64).x for s in range(3)]
    b = [other.batch(s, 64).x for s in range(3)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    resumed = SOURCES.build(SPEC, "source", data=data, seed=3)
    resumed.setup(torch.device("cpu"), None)
    resumed.load_state_dict({"cursor": 64})  # resume at step 1: the same views
    assert torch.equal(resumed.batch(1, 64).x, a[1])
    third = SOURCES.build(SPEC, "source", data=data, seed=4)
    third.setup(torch.device("cpu"), None)
    third.cursor = 0
    assert not torch.equal(third.batch(0, 64).x, a[0])


def test_the_mlm_is_cached_and_reused(mlm_source, monkeypatch):
    import kdx.models.mlm as m

    data, src = mlm_source
    path = m.mlm_path(data, MLM)
    assert path.exists() and (path.parent / "recipe.json").exists()
    mtime = path.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("the cached MLM was retrained")

    monkeypatch.setattr(m, "train_mlm", boom)
    again = m.get_mlm(data, MLM)
    assert path.stat().st_mtime_ns == mtime
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), src.view.mlm.state_dict().values()))
    # other settings are another MLM
    assert m.mlm_path(data, {**MLM, "epochs": 4}) != path


def test_mlm_replace_refusals(text_teacher):
    from kdx.errors import KdxError
    from kdx.registry import SOURCES

    cfg, data, teacher = text_teacher
    with pytest.raises(KdxError, match="unknown"):
        SOURCES.build({**SPEC, "mlm": {"layerz": 1}}, "source", data=data, seed=0)
    with pytest.raises(KdxError, match="top_k"):
        SOURCES.build({**SPEC, "top_k": 0}, "source", data=data, seed=0)


def test_downstream_forwards_the_mlm_settings(text_teacher, mlm_source):
    """A downstream pool with mlm_replace uses its own mlm and top_k settings (it once fell back to the
    default MLM): on the train split of its own data it draws exactly the train source's views."""
    from kdx.errors import KdxError
    from kdx.registry import SOURCES

    cfg, data, teacher = text_teacher
    _, src = mlm_source
    down = SOURCES.build({**SPEC, "name": "downstream", "dataset": "self"}, "source", data=data, seed=3)
    assert (down.view.settings, down.view.top_k, down.view.p) == (MLM, 5, 0.4)
    down.setup(torch.device("cpu"), None)
    src.cursor = 0
    for step in range(2):
        assert torch.equal(down.batch(step, 64).x, src.batch(step, 64).x)
    with pytest.raises(KdxError, match="top_k=0"):
        SOURCES.build({**SPEC, "name": "downstream", "dataset": "self", "top_k": 0}, "source", data=data, seed=0)


def test_the_mlm_is_cached_under_the_configured_cache_dir(text_teacher, corpus_dir, kdx_cache, tmp_path):  # noqa: F811
    """`cache_dir` in the config holds the MLM as it holds the teacher, through every source that builds a pool."""
    from kdx import config as kconfig
    from kdx.run import build_source
    from kdx.models.mlm import mlm_path

    cfg0, data, teacher = text_teacher
    mlm = {**MLM, "epochs": 1, "seed": 7}  # settings no other test trains
    spec = f"{{name: train, augment: mlm_replace, p: 0.4, top_k: 5, mlm: {json.dumps(mlm)}}}"
    cache = tmp_path / "cache"
    cfg = kconfig.load_config(None, text_args(corpus_dir) + [f"cache_dir={cache}", f"source={spec}"])
    src = build_source(cfg, data)
    src.setup(torch.device("cpu"), None)
    assert mlm_path(data, mlm, cache_dir=cache).exists() and mlm_path(data, mlm, cache_dir=cache).is_relative_to(cache)
    assert not mlm_path(data, mlm).exists() and mlm_path(data, mlm).is_relative_to(kdx_cache)  # not $KDX_CACHE
    for wrapped, inner in ((f"{{name: adaptive, candidates: {spec}}}", lambda s: s.cand),
                           (f"{{name: mixture, components: [{spec}]}}", lambda s: s.parts[0]),
                           (f"{{name: adaptive_mixture, components: [{spec}]}}", lambda s: s.parts[0])):
        cfg = kconfig.load_config(None, text_args(corpus_dir) + [f"cache_dir={cache}", f"source={wrapped}"])
        assert inner(build_source(cfg, data)).view.cache_dir == cache


def test_a_tiny_run_with_mlm_replace(text_teacher, corpus_dir, tmp_path):  # noqa: F811
    from kdx.run import run

    args = text_args(corpus_dir) + ["source.name=train", "source.augment=mlm_replace", "source.p=0.4",
                                    "source.top_k=5", "distill.samples=1600", "eval.distributions=[test]",
                                    "source.mlm={layers: 1, hidden: 32, heads: 2, intermediate: 64, epochs: 3, "
                                    "batch_size: 32, lr: 0.003}"]
    run_dir = run(None, args, str(tmp_path), "r")
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["eval"]["test"]["student_acc"] > 0.4, m["eval"]["test"]  # 4 classes; 0.63-0.84 over 4 seeds


def test_the_tfidf_anchor_is_computed_once_and_printed_beside_the_teacher(text_teacher, corpus_dir, tmp_path,  # noqa: F811
                                                                          monkeypatch):
    import types

    import kdx.data.text as text
    from kdx.eval.report import eval_table
    from kdx.run import run
    from kdx.study.report import summary_blocks

    cfg, data, teacher = text_teacher
    acc = text.anchor_accuracy(data)
    assert 0.7 < acc <= 1.0, acc  # 4 separable topics
    monkeypatch.setattr(text, "tfidf_logreg", lambda *a, **k: (_ for _ in ()).throw(AssertionError("refit")))
    assert text.anchor_accuracy(data) == acc  # cached by the data's identity
    run_dir = run(None, text_args(corpus_dir) + ["distill.samples=640", "eval.distributions=[test]"], str(tmp_path), "r")
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["teacher"]["anchor_test_acc"] == acc
    table = eval_table(m)
    assert f"TF-IDF+LR anchor test acc {100 * acc:.1f}%" in table and f"teacher test acc {100 * teacher.test_acc:.1f}%" in table
    row = {"run": "r", "source": "train", "seed": 0, "distribution": "test", "teacher_acc": 0.8, "student_acc": 0.7,
           "agreement": 0.8, "kl_teacher_student": 0.1, "acc_diff": -0.1, "acc_diff_lo": -0.2, "acc_diff_hi": 0.0,
           "mcnemar_p": 0.01, "deviation_slope": None, "anchor_test_acc": acc}
    study = types.SimpleNamespace(name="s", seeds=[0], report_distributions=["test"])
    text_blocks = " ".join(str(b[1]) for b in summary_blocks(study, [row], ["source", "seed"]) if b[0] == "p")
    assert f"anchor (text), same split: test {100 * acc:.1f}%" in text_blocks
    # image data has no anchor
    assert text.anchor_accuracy(types.SimpleNamespace(is_text=False)) is None


def test_trimming_pad_columns_changes_no_bert_output(text_teacher):
    """_BertBody drops the columns that are pad in every row: each text's features alone (trimmed to its own
    length) and inside a batch (trimmed to the batch's longest) match the untrimmed max_length forward."""
    from kdx.models.mlm import trim_padding, used_length

    cfg, data, teacher = text_teacher
    model = teacher.model.eval()
    x = data.x_test[:64]
    lengths = (x != data.pad_id).sum(1)
    assert int(lengths.min()) < data.max_length  # some rows are padded, so trimming does something
    short = x[lengths < data.max_length][:16]
    assert used_length(short != data.pad_id) == int((short != data.pad_id).sum(1).max()) < data.max_length
    assert trim_padding(short, data.pad_id).shape[1] == used_length(short != data.pad_id)
    with torch.no_grad():
        bert = model.body.bert
        full = bert(input_ids=short, attention_mask=(short != data.pad_id).long()).pooler_output
        batched = model.features(short)
        alone = torch.cat([model.features(row[None]) for row in short])
    assert torch.allclose(batched, full, atol=1e-5, rtol=1e-4)
    assert torch.allclose(alone, full, atol=1e-5, rtol=1e-4)


def test_length_grouped_batches_cover_the_corpus_each_epoch_with_similar_lengths(text_teacher):
    from kdx.models.mlm import length_grouped_batches

    cfg, data, teacher = text_teacher
    mask = data.x_train != data.pad_id
    n, bs = len(mask), 32
    per_epoch = -(-n // bs)
    batches = length_grouped_batches(mask, bs, 2 * per_epoch, torch.Generator().manual_seed(0))
    assert len(batches) == 2 * per_epoch and all(1 <= len(b) <= bs for b in batches)
    counts = torch.bincount(torch.cat(batches), minlength=n)
    assert torch.equal(counts, torch.full((n,), 2))  # every text exactly once per epoch
    lengths = mask.sum(1).float()
    spread = torch.stack([lengths[b].max() - lengths[b].min() for b in batches]).mean()
    g = torch.Generator().manual_seed(0)
    random_spread = torch.stack([lengths[i].max() - lengths[i].min()
                                 for i in torch.randperm(n, generator=g).split(bs)]).mean()
    assert spread < 0.25 * random_spread, (spread, random_spread)
    # a seed is a fixed order; another seed is another
    again = length_grouped_batches(mask, bs, per_epoch, torch.Generator().manual_seed(0))
    other = length_grouped_batches(mask, bs, per_epoch, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(again, batches))
    assert not all(torch.equal(a, b) for a, b in zip(other, batches))
