"""kdx explore: thumbnails, the local server, and the page itself driven in Debian's Chromium."""
import http.client
import io
import shutil
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_fast
from kdx.errors import KdxError
from kdx.explore import build, thumbs
from kdx.explore.serve import server

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "build" / "test-artifacts"


def test_sprite_sheets_put_thumbnail_i_where_the_page_looks_for_it():
    from PIL import Image

    rng = np.random.default_rng(0)
    n = thumbs.PER_ROW ** 2 + 70  # two sheets, the second partly filled
    imgs = rng.integers(0, 256, (n, 1, 5, 4), dtype=np.uint8)
    t = thumbs.images(torch.from_numpy(imgs), torch.zeros(1), torch.ones(1))
    assert t.shape == (n, 5, 4, 1)
    uris = thumbs.sheets(t, lossy=False)
    assert len(uris) == 2 and all(u.startswith("data:image/png;base64,") for u in uris)
    import base64

    sheets = [np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1])))) for u in uris]
    for i in (0, 1, 63, 64, 4095, 4096, n - 1):  # the page's formula (page.js thumb())
        s, j = divmod(i, thumbs.PER_ROW ** 2)
        col, row = j % thumbs.PER_ROW, j // thumbs.PER_ROW
        assert (sheets[s][row * 5:(row + 1) * 5, col * 4:(col + 1) * 4] == imgs[i, 0]).all()


def test_signals_become_line_plots_that_follow_the_signal():
    x = torch.stack([torch.linspace(0, 1, 40), torch.linspace(1, 0, 40)])[:, None]  # rising, falling
    t = thumbs.images(x, torch.zeros(1), torch.ones(1))
    w, h = thumbs.LINE_SIZE
    assert t.shape == (2, h, w, 1)
    rows = lambda im, cols: [np.flatnonzero(im[:, c, 0]).mean() for c in cols]  # noqa: E731
    up, down = rows(t[0], [2, w - 3]), rows(t[1], [2, w - 3])
    assert up[0] > up[1] + h / 2 and down[0] < down[1] - h / 2  # image rows grow downwards


@pytest.fixture(scope="module")
def probed(digits_teacher, tmp_path_factory):
    from kdx.probes import ProbeOptions, probe

    run_dir = run_fast(tmp_path_factory.mktemp("explore-runs"), "distill.samples=2000", name="train")
    probe(run_dir, ProbeOptions(on=["test", "uniform_noise"], regions=6, source_n=1000, map_source_n=200,
                                map_epochs=30, resamples=50))
    return run_dir


@pytest.fixture(scope="module")
def page_dir(probed, tmp_path_factory):
    return build(probed, tmp_path_factory.mktemp("explore-page") / "page")


@pytest.fixture(scope="module")
def url(page_dir):
    httpd = server(page_dir, 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _get(url, path, method="GET"):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.putrequest(method, path, skip_accept_encoding=True)  # the path goes out exactly as written
    conn.endheaders()
    r = conn.getresponse()
    return r.status, r.read()


def test_server_binds_localhost_and_serves_only_files_under_the_page_dir(tmp_path):
    page = tmp_path / "page"
    (page / "sub").mkdir(parents=True)
    (page / "index.html").write_text("the page")
    (tmp_path / "secret.txt").write_text("secret")
    (page / "link.txt").symlink_to(tmp_path / "secret.txt")
    httpd = server(page, 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        assert httpd.server_address[0] == "127.0.0.1"
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        assert _get(base, "/") == (200, b"the page") and _get(base, "/index.html") == (200, b"the page")
        for path in ["/../secret.txt", "/%2e%2e/secret.txt", "/sub/../../secret.txt", "/..%2fsecret.txt",
                     "//" + str(tmp_path / "secret.txt"), "/link.txt", "/sub/", "/nothing.html"]:
            status, body = _get(base, path)
            assert status == 404 and b"secret" not in body, path
        assert _get(base, "/index.html", "POST")[0] == 501 and _get(base, "/index.html", "PUT")[0] == 501
        assert _get(base, "/index.html", "DELETE")[0] == 501
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_run_without_probes_gets_told_to_run_kdx_probe(probed, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(probed, bare, ignore=shutil.ignore_patterns("probes"))
    with pytest.raises(KdxError, match=f"no probes/map.parquet: run `kdx probe {bare}` first.*--probe"):
        build(bare, tmp_path / "out")
    with pytest.raises(KdxError, match="neither a finished run"):
        build(tmp_path, tmp_path / "out")


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (make test installs it where it can)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, url):
    """The served page, loaded once; every request it makes is recorded."""
    pg = browser.new_page(viewport={"width": 1500, "height": 1000})
    pg.requests, pg.errors = [], []
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.goto(url + "/")
    pg.wait_for_function("window.kdx && kdx.ready", timeout=60_000)
    yield pg
    assert pg.errors == []
    pg.close()


@pytest.fixture(scope="module")
def points(probed):
    return pd.read_parquet(probed / "probes" / "map.parquet")


def _isolated(points, kind="eval"):
    """The point of `kind` farthest from any other on the map: a hover or click there can only mean it."""
    xy = points[["x", "y"]].to_numpy()
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    ids = points.index[points["kind"] == kind].to_numpy()
    return int(ids[d[ids].min(1).argmax()])


def test_the_map_is_drawn(page):
    from PIL import Image

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "explore.png"), full_page=True)
    px = np.asarray(Image.open(io.BytesIO(page.locator("#plots").screenshot())).convert("L"), float)
    for name, half in (("map", px[:, :600]), ("phi", px[:, 660:1150])):  # the plots are 640 and 520 wide
        inner = half[60:-60, 60:-60]  # inside the axes: points, not just ticks and labels
        assert inner.std() > 10 and (inner < 200).mean() > 0.005, f"the {name} plot looks blank"
    assert page.evaluate("document.getElementById('status').textContent").startswith(
        f"{page.evaluate('kdx.data.n')} points")


def test_hovering_a_point_shows_its_thumbnail_and_both_models_classes(page, points):
    i = _isolated(points)
    row = points.iloc[i]
    page.mouse.move(*page.evaluate(f"kdx.screen({i})"))
    tip = page.locator("#tip")
    tip.wait_for(state="visible", timeout=5000)
    assert tip.get_attribute("data-id") == str(i)
    assert tip.locator(".th").get_attribute("data-id") == str(i)
    assert tip.locator(".th").bounding_box()["width"] >= 40  # an 8x8 digit, scaled up
    assert tip.locator(".teacher").inner_text() == f"teacher: {row['teacher_class']} {row['teacher_prob']:.3f}"
    assert tip.locator(".student").inner_text() == f"student: {row['student_class']} {row['student_prob']:.3f}"
    assert row["item"] in tip.inner_text()
    page.mouse.move(2, 2)
    page.wait_for_timeout(100)
    assert not tip.is_visible()


def test_a_selection_fills_the_grid_and_table_with_its_points(page, points):
    rng = np.random.default_rng(0)
    ids = sorted({*rng.choice(len(points) - 1, 25, replace=False).tolist(), len(points) - 1})  # a distillation input too
    page.evaluate(f"kdx.select({ids})")
    page.wait_for_function(f"document.querySelectorAll('#grid .th').length == {len(ids)}", timeout=5000)
    assert page.evaluate("Array.from(document.querySelectorAll('#grid .th'), e => +e.dataset.id)") == ids
    cells = page.evaluate("Array.from(document.querySelectorAll('#sel-table tr'), r => r.cells[1].textContent)")
    assert cells[1:] == points["item"].iloc[ids].tolist()
    # hiding the distillation inputs drops them from the selection
    page.locator("#show-distill").uncheck()
    n_eval = int((points["kind"] == "eval").sum())
    page.wait_for_function(f"document.querySelectorAll('#grid .th').length == {sum(i < n_eval for i in ids)}",
                           timeout=5000)
    page.locator("#show-distill").check()


def test_clicking_a_point_lists_the_neighbours_faiss_finds(page, points, probed):
    import faiss

    i = _isolated(points)
    page.mouse.click(*page.evaluate(f"kdx.screen({i})"))
    page.wait_for_function(f"document.getElementById('neighbours').dataset.id == '{i}'", timeout=5000)
    feats = np.load(probed / "probes" / "map_arrays.npz")["features"].astype(np.float32)
    k = len(points["neighbors"].iloc[0])
    for kind in ("eval", "distill"):
        ids = np.flatnonzero(points["kind"] == kind)
        index = faiss.IndexFlatL2(feats.shape[1])
        index.add(feats[ids])
        found = ids[index.search(feats[i:i + 1], k + 1)[1][0]]
        expected = [int(j) for j in found if j != i][:k]
        shown = page.evaluate(f"Array.from(document.querySelectorAll('#neighbours .list[data-kind={kind}] .th'), "
                              "e => +e.dataset.id)")
        assert shown == expected, kind


def test_clicking_a_region_selects_its_evaluation_points(page, probed, points):
    regions = pd.read_csv(probed / "probes" / "regions.csv")
    top = regions.iloc[0]
    page.locator("#regions tr[data-region]").first.click()
    page.wait_for_function(f"document.getElementById('sel-count').textContent.startsWith('{top['size']} selected')",
                           timeout=5000)
    selected = page.evaluate("kdx.selected()")
    assert set(selected) == set(points.index[(points["region"] == top["region"]) & (points["kind"] == "eval")])


def test_the_colour_selector_recolours_the_map(page):
    from PIL import Image

    page.evaluate("kdx.select([])")  # all points at full colour
    page.wait_for_timeout(200)
    plot = page.locator("#plots")
    before = np.asarray(Image.open(io.BytesIO(plot.screenshot())).convert("RGB"), float)
    page.locator("#color").select_option("source")
    page.wait_for_timeout(300)
    after = np.asarray(Image.open(io.BytesIO(plot.screenshot())).convert("RGB"), float)
    assert (np.abs(after - before).sum(-1) > 30).mean() > 0.005  # over 0.5% of the pixels changed colour
    assert page.locator("#legend span").all_inner_texts() == ["test", "uniform_noise", "distill-train"]


def test_the_page_fetches_nothing_beyond_127_0_0_1(page):
    assert page.requests, "no requests recorded"
    for u in page.requests:
        parts = urllib.parse.urlsplit(u)
        assert parts.scheme in ("data", "blob") or parts.hostname == "127.0.0.1", u


def test_a_study_gets_a_page_per_run_and_a_run_selector(probed, browser, tmp_path):
    study = tmp_path / "studies" / "demo"
    for name in ("noise-s0", "train-s0"):  # two runs of a study: copies of one probed run will do
        shutil.copytree(probed, study / "runs" / name)
    out = build(study, tmp_path / "page")
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "noise-s0.html", "train-s0.html"]
    pg = browser.new_page()
    pg.goto((out / "index.html").as_uri())
    pg.wait_for_function("window.kdx && kdx.ready", timeout=60_000)
    assert pg.evaluate("kdx.data.name") == "noise-s0"
    assert pg.locator("#run option").all_inner_texts() == ["noise-s0", "train-s0"]
    pg.locator("#run").select_option("train-s0")
    pg.wait_for_function("window.kdx && kdx.ready && kdx.data.name == 'train-s0'", timeout=60_000)
    pg.close()
