"""kdx explore on a language-model run: the token probe's tokens.npz, and the page driven in Debian's
Chromium (hover a token: both models' top next tokens; click the map: the position's sequence opens)."""
import json
import shutil
import threading

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from kdx.cli import app
from kdx.errors import KdxError
from kdx.explore import build
from kdx.explore.serve import server
from kdx.probes.tokens import PAGE_SEQUENCES, TOP_K
from test_explore import ARTIFACTS, browser  # noqa: F401 - the browser fixture, shared
from test_lm import lm_setting  # noqa: F401 - the tiny corpus and its cached teacher, shared


@pytest.fixture(scope="module")
def lm_run(lm_setting, tmp_path_factory):  # noqa: F811
    """A tiny LM run made and explored the way a user does: `kdx run`, then `kdx explore --probe --out`."""
    overrides = lm_setting[0]
    runs = tmp_path_factory.mktemp("explore-lm")
    runner = CliRunner()
    result = runner.invoke(app, ["run", "configs/lm_tiny.yaml", *overrides, "--runs-dir", str(runs), "--name", "r"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    page = runs / "page"
    result = runner.invoke(app, ["explore", str(runs / "r"), "--probe", "--out", str(page)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "running `kdx probe" in result.output and (page / "index.html").exists()
    return runs / "r", page


@pytest.fixture(scope="module")
def arrays(lm_run):
    with np.load(lm_run[0] / "probes" / "tokens.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def finished(lm_run):
    from kdx.rundir import load_run

    return load_run(lm_run[0])


def _heldout(finished, name):
    from kdx.eval.lm import heldout_tokens

    return heldout_tokens(name, finished.data, finished.cfg.eval, finished.teacher.model, finished.student)


def _probs(model, row: torch.Tensor) -> np.ndarray:
    """An independent softmax (numpy, float64) of a model's logits over one sequence: (L, vocab)."""
    with torch.no_grad():
        z = model.eval()(row[None])[0].double().numpy()
    z = z - z.max(-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def test_tokens_npz_holds_the_probed_sequences_and_positions(arrays, finished):
    sets = arrays["sets"].tolist()
    assert sets == ["test_subset", "teacher_samples", "student_samples"]
    assert (np.bincount(arrays["set"]) <= PAGE_SEQUENCES).all() and arrays["teacher_top"].shape[1] == TOP_K
    x, mask = _heldout(finished, "test_subset")
    for s in np.flatnonzero(arrays["set"] == 0)[:3]:  # the tokens are the held-out rows', decoded one by one
        row, n = arrays["row"][s], arrays["length"][s]
        ids = arrays["vocab_id"][arrays["ids"][s, :n]]
        assert (ids == x[row, :n].numpy()).all() and arrays["start"][s] == mask[row].nonzero()[0, 0]
        pt, ps = _probs(finished.teacher.model, x[row]), _probs(finished.student, x[row])
        at = np.flatnonzero(arrays["sequence"] == s)
        assert (arrays["position"][at] == mask[row].nonzero()[:, 0].numpy()).all()  # every counted position
        p = arrays["position"][at]
        kl = (pt[p] * (np.log(pt[p]) - np.log(ps[p]))).sum(-1)
        assert np.allclose(arrays["kl"][at], kl, rtol=1e-3, atol=1e-5)
    assert len(arrays["x"]) == len(arrays["kl"]) and np.isfinite(arrays["x"]).all() and np.isfinite(arrays["y"]).all()
    # the generations: one prompt per row, the teacher's and the student's completions of it
    t = np.flatnonzero(arrays["set"] == 1)
    s = np.flatnonzero(arrays["set"] == 2)
    assert (arrays["row"][t] == arrays["row"][s]).all()
    for i, j in zip(t[:5], s[:5]):
        k = arrays["start"][i] + 1
        assert arrays["start"][i] == arrays["start"][j] and (arrays["ids"][i, :k] == arrays["ids"][j, :k]).all()


def test_an_lm_run_without_the_token_probe_is_told_to_run_it(lm_run, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(lm_run[0], bare, ignore=shutil.ignore_patterns("probes"))
    with pytest.raises(KdxError, match=f"no probes/tokens.npz: run `kdx probe {bare}` first.*--probe"):
        build(bare, tmp_path / "out")


@pytest.fixture(scope="module")
def url(lm_run):
    httpd = server(lm_run[1], 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def page(browser, url):  # noqa: F811
    pg = browser.new_page(viewport={"width": 1500, "height": 1000})
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("console", lambda m: m.type == "error" and pg.errors.append(m.text))
    pg.goto(url + "/")
    pg.wait_for_function("window.kdx && kdx.ready", timeout=60_000)
    yield pg
    assert pg.errors == []
    pg.close()


def test_the_lm_page_loads_without_errors_and_draws_every_part(page, arrays, lm_run):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "explore_lm.png"), full_page=True)
    assert page.errors == []
    assert page.evaluate("document.getElementById('status').textContent").startswith(f"{len(arrays['kl'])} positions")
    counted = page.locator("#sequences details").first.locator(".tok[data-id]").count()
    assert counted == int((arrays["set"][arrays["sequence"]] == 0).sum())  # every test_subset position, coloured
    assert page.locator("#generations tr[data-teacher]").count() == int((arrays["set"] == 1).sum())
    assert page.locator("#regions tr[data-region]").count() == len(pd.read_csv(lm_run[0] / "probes" / "regions.csv"))


def test_hovering_a_token_shows_both_models_top_next_tokens(page, arrays, finished):
    tok = finished.data.tokenizer
    x, _ = _heldout(finished, "test_subset")
    el = page.locator("#sequences details").first.locator(".tok[data-id]").nth(7)
    el.hover()
    tip = page.locator("#tip")
    tip.wait_for(state="visible", timeout=5000)
    i = int(el.get_attribute("data-id"))
    assert tip.get_attribute("data-id") == str(i)
    s, p = arrays["sequence"][i], arrays["position"][i]
    row = x[arrays["row"][s]]
    assert el.inner_text() == tok.decode([[int(row[p + 1])]])[0].replace("\n", "↵")  # the token whose slot it is
    for who, model in (("teacher", finished.teacher.model), ("student", finished.student)):
        probs = _probs(model, row)[p]
        shown = page.evaluate(f"Array.from(document.querySelectorAll('#tip .top.{who} tr[data-token]'), "
                              "r => [r.cells[0].textContent, +r.cells[1].textContent, +r.dataset.token])")
        assert len(shown) == TOP_K
        order = np.sort(probs)[::-1]
        for text, prob, index in shown:
            token = int(arrays["vocab_id"][index])
            assert text == json.dumps(tok.decode([[token]])[0], ensure_ascii=False)
            assert abs(prob - probs[token]) <= 0.0015, (who, text, prob, probs[token])
            assert probs[token] >= order[TOP_K - 1] - 1e-4  # among the model's top-k (ties aside)
        assert [v for _, v, _ in shown] == sorted((v for _, v, _ in shown), reverse=True)
    page.mouse.move(2, 2)
    page.wait_for_timeout(100)
    assert not tip.is_visible()


def _isolated(arrays):
    """The position farthest from any other on the map: a click there can only mean it."""
    xy = np.stack([arrays["x"], arrays["y"]], 1)
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return int(d.min(1).argmax())


def test_clicking_a_map_point_opens_its_sequence_with_the_position_marked(page, arrays, finished):
    i = _isolated(arrays)
    s, p = int(arrays["sequence"][i]), int(arrays["position"][i])
    page.mouse.click(*page.evaluate(f"kdx.screen({i})"))
    page.wait_for_function(f"document.getElementById('sequence').dataset.seq == '{s}'", timeout=5000)
    marked = page.locator("#sequence .tok.marked")
    assert marked.count() == 1 and marked.get_attribute("data-id") == str(i)
    assert marked.get_attribute("data-j") == str(p + 1)  # the token predicted at the point's position
    name = arrays["sets"][arrays["set"][s]]
    assert page.locator("#sequence .item b").inner_text() == f"{name}:{arrays['row'][s]}"
    text = page.locator("#sequence .seq").inner_text()
    ids = arrays["vocab_id"][arrays["ids"][s, :arrays["length"][s]]]
    tok = finished.data.tokenizer  # each token decoded alone (a sample may split a character), the eos marked
    expected = "".join("⟨eos⟩" if t == tok.eos_id else tok.decode([[int(t)]])[0] for t in ids)
    assert text == expected.replace("\n", "↵")  # newlines shown, one line per sequence
    # its sequence's positions are selected on the map
    assert page.evaluate("kdx.selected()") == np.flatnonzero(arrays["sequence"] == s).tolist()


def test_clicking_a_region_selects_its_positions_and_the_colour_selector_recolours(page, arrays, lm_run):
    top = pd.read_csv(lm_run[0] / "probes" / "regions.csv").iloc[0]
    page.locator("#regions tr[data-region]").first.click()
    assert page.evaluate("kdx.selected()") == np.flatnonzero(arrays["region"] == top["region"]).tolist()
    el = page.locator("#sequences details").first.locator(".tok[data-id]").first
    before = el.evaluate("e => e.style.background")
    page.locator("#color").select_option("deviation")
    page.wait_for_timeout(100)
    assert el.evaluate("e => e.style.background") != before
    assert "student less sure" in page.locator("#legend").inner_text()
    page.locator("#color").select_option("kl")


def test_an_lm_study_gets_a_page_per_run_and_a_run_selector(lm_run, browser, tmp_path):  # noqa: F811
    study = tmp_path / "studies" / "demo"
    for name in ("a-s0", "b-s0"):
        shutil.copytree(lm_run[0], study / "runs" / name)
    out = build(study, tmp_path / "page")
    assert sorted(p.name for p in out.iterdir()) == ["a-s0.html", "b-s0.html", "index.html"]
    pg = browser.new_page()
    pg.goto((out / "index.html").as_uri())
    pg.wait_for_function("window.kdx && kdx.ready", timeout=60_000)
    assert pg.locator("#run option").all_inner_texts() == ["a-s0", "b-s0"]
    pg.locator("#run").select_option("b-s0")
    pg.wait_for_function("window.kdx && kdx.ready && kdx.data.name == 'b-s0'", timeout=60_000)
    pg.close()


def test_explore_probe_keeps_the_sets_of_a_run_probed_without_the_explorer(lm_run, tmp_path):
    import kdx

    run = tmp_path / "study-run"  # as a study probes its runs: no map, so no tokens.npz
    shutil.copytree(lm_run[0], run, ignore=shutil.ignore_patterns("probes"))
    kdx.probe(run, on=["test_subset", "student_samples"], map=False, resamples=50)
    assert (run / "probes" / "deviation.json").exists() and not (run / "probes" / "tokens.npz").exists()
    build(run, tmp_path / "out", probe=True, log=lambda _: None)
    with np.load(run / "probes" / "tokens.npz") as f:
        assert f["sets"].tolist() == ["test_subset", "student_samples"]
    assert (tmp_path / "out" / "index.html").exists()


def test_tokens_npz_keeps_at_most_page_sequences_of_each_set(lm_run, tmp_path, monkeypatch):
    import kdx
    import kdx.probes.tokens as tokens

    monkeypatch.setattr(tokens, "PAGE_SEQUENCES", 5)  # the tiny run's sets hold 24 sequences
    run = tmp_path / "capped"
    shutil.copytree(lm_run[0], run, ignore=shutil.ignore_patterns("probes"))
    kdx.probe(run, on=["test_subset", "teacher_samples"], resamples=50)
    with np.load(run / "probes" / "tokens.npz") as f:
        assert np.bincount(f["set"]).tolist() == [5, 5] and f["row"].tolist() == [0, 1, 2, 3, 4] * 2
        assert set(f["sequence"].tolist()) == set(range(10))
