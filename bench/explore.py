"""The explorer at scale: a page of 70,000 points, its size, time to first render and hover latency
in headless Chromium (Debian's, as in the tests).

  python bench/explore.py                 # a 70k map made from Fashion-MNIST (see below)
  python bench/explore.py --run RUN       # the page of a probed run (kdx probe RUN) instead

Without --run the map is built from Fashion-MNIST's 70,000 images (60k train, 10k test), 5,000 of the
train images standing as distillation inputs. Each point takes the UMAP position and model outputs
of a row of a real Fashion-MNIST probe map (--map, resampled with jitter; a probe of a run costs
minutes that this benchmark need not spend), and random neighbour ids, which compress no better
than real ones. The thumbnails are the real images.

Hover latency: from the mousemove event's timestamp to the first animation frame after the hover
card was updated (performance clock of the page), median over --hovers moves onto points.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


def fashion_view(map_path: Path, n_distill: int = 5000, k: int = 10, seed: int = 0):
    from kdx import config as kconfig
    from kdx.data import load_dataset
    from kdx.explore import thumbs
    from kdx.explore.views import View
    data = load_dataset(kconfig.load_config(None, ["data.name=fashion_mnist"]).data)
    x = np.concatenate([data.x_train.numpy(), data.x_test.numpy()])
    y = np.concatenate([data.y_train.numpy(), data.y_test.numpy()])
    n, rng = len(x), np.random.default_rng(seed)
    n_eval = n - n_distill
    real = pd.read_parquet(map_path)
    rows = real.iloc[rng.integers(0, len(real), n)].reset_index(drop=True)
    span = float(real["x"].max() - real["x"].min())
    kind = np.where(np.arange(n) < n_eval, "eval", "distill")
    source = np.where(np.arange(n) < n_eval - 10_000, "train_subset", "test")
    source = np.where(kind == "distill", "distill-train", source)
    order = np.r_[np.arange(n_distill, 60_000), np.arange(60_000, n), np.arange(n_distill)]  # distill last
    p = np.clip(rows["teacher_prob"].to_numpy(), 1e-9, 1 - 1e-9)
    pts = pd.DataFrame({
        "id": np.arange(n), "item": [f"{s}:{i}" for s, i in zip(source, range(n))],
        "x": rows["x"] + rng.normal(0, span / 400, n), "y": rows["y"] + rng.normal(0, span / 400, n),
        "kind": kind, "source": source, "class": y[order], **{c: rows[c] for c in
            ("teacher_class", "teacher_prob", "student_class", "student_prob", "disagreement", "deviation", "region")},
        "teacher_phi": np.log(p / (1 - p)),
        "eval_neighbors": list(rng.integers(0, n_eval, (n, k))),
        "distill_neighbors": list(rng.integers(n_eval, n, (n, k))),
    })
    import torch

    t = thumbs.images(torch.from_numpy(x[order]), data.lo, data.hi)
    regions = pd.read_csv(map_path.with_name("regions.csv"))
    return View("fashion_mnist-70k", pts, t, True, regions, list(data.classes))


def measure(url: str, hovers: int, shot: Path) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1100})
        outside = []
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("http://127.0.0.1", "data:", "blob:"))
                else None)
        t0 = time.perf_counter()
        page.goto(url)
        page.wait_for_function("window.kdx && kdx.ready", timeout=300_000, polling=50)
        wall = time.perf_counter() - t0
        ready_ms = page.evaluate("kdx.readyAt")  # performance.now() counts from navigation start
        page.evaluate("""() => {
            window.addEventListener('mousemove', e => { window.__moved = e.timeStamp; }, true);
            const hover = kdx.hover;
            kdx.hover = (ev, plot) => { hover(ev, plot);
                requestAnimationFrame(() => { window.__painted = performance.now(); }); };
        }""")
        rng = np.random.default_rng(1)
        n_eval = page.evaluate("kdx.data.n_eval")
        lat = []
        for i in rng.integers(0, n_eval, hovers):
            page.mouse.move(3, 3)
            page.evaluate("window.__painted = 0")
            page.mouse.move(*page.evaluate(f"kdx.screen({int(i)})"))
            page.wait_for_function("window.__painted > window.__moved", timeout=30_000, polling=10)
            lat.append(page.evaluate("window.__painted - window.__moved"))
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    return {"first_render_s": ready_ms / 1000, "goto_to_ready_wall_s": wall, "hover_ms": lat, "outside": outside}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, help="a probed run directory (default: the 70k Fashion-MNIST map)")
    ap.add_argument("--map", type=Path, default=Path("/tmp/probe_runs/small-train/probes/map.parquet"),
                    help="a Fashion-MNIST probe map whose rows the 70k points resample")
    ap.add_argument("--hovers", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "bench-explore")
    a = ap.parse_args()
    from kdx.explore.page import write_page
    from kdx.explore.serve import server
    from kdx.explore.views import load_view

    t = time.perf_counter()
    view = load_view(a.run) if a.run else fashion_view(a.map)
    t_view = time.perf_counter() - t
    t = time.perf_counter()
    path = write_page(view, a.out / "index.html")
    t_page = time.perf_counter() - t
    size = path.stat().st_size
    print(f"{len(view.points):,} points; view {t_view:.1f} s, page written in {t_page:.1f} s: "
          f"{size / 1e6:.1f} MB ({size / len(view.points):.0f} B a point)")
    httpd = server(a.out, 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    r = measure(f"http://127.0.0.1:{httpd.server_address[1]}/", a.hovers, a.out / "explore.png")
    httpd.shutdown()
    lat = r["hover_ms"]
    print(f"first render (navigation start to the plots drawn and interactive): {r['first_render_s']:.2f} s "
          f"(goto to ready, wall: {r['goto_to_ready_wall_s']:.2f} s)")
    print(f"hover latency over {len(lat)} moves: median {statistics.median(lat):.1f} ms, "
          f"min {min(lat):.1f}, max {max(lat):.1f} ms")
    print(f"requests beyond 127.0.0.1: {r['outside'] or 'none'}")
    print(f"screenshot: {a.out / 'explore.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
