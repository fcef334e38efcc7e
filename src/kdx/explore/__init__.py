"""`kdx explore RUN_OR_STUDY`: a static, self-contained explorer page of a probed run (or one page
per run of a study), served on 127.0.0.1.

views.py  what a page shows of a run: map.parquet, input thumbnails, regions (an LM run: tokens.npz, regions)
thumbs.py thumbnails of images and 1-D signals, packed in sprite sheets
page.py   the Bokeh plots and the page, inlined: the shell page.html, page.css and common.js, with the
          classifier body (classes.html, page.js) or the language-model body (lm.html, lm.js)
serve.py  the local server: GET/HEAD of files under the page directory only
"""
from __future__ import annotations

from pathlib import Path

from kdx.explore.page import write_page
from kdx.explore.views import load_view, run_dirs
from kdx.io import write_text


def build(target, out=None, probe: bool = False, log=print) -> Path:
    """Write the page(s) of a run or a study into `out` (default TARGET/explore); return the folder.
    A run's page is index.html; a study's runs get NAME.html each, and index.html opens the first."""
    runs = run_dirs(Path(target))
    out = Path(out) if out else Path(target) / "explore"
    if len(runs) == 1:
        write_page(load_view(runs[0], probe, log), out / "index.html")
        return out
    names = [r.name for r in runs]
    for r in runs:
        log(f"page of {r.name}")
        write_page(load_view(r, probe, log), out / f"{r.name}.html", names)
    write_text(out / "index.html", f'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" '
                                   f'content="0; url={names[0]}.html"><a href="{names[0]}.html">{names[0]}</a>')
    return out
