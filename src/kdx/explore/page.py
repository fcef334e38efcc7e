"""One run's explorer page: two Bokeh scatter plots (the UMAP map, teacher-vs-student phi) sharing
their data sources, so a selection in one is a selection in the other, and page.js for what Bokeh
does not do (hover with thumbnails, the selection grid, neighbour lists, regions). Everything is
inlined: BokehJS, the data (typed arrays, gzipped, base64) and the thumbnail sheets."""
from __future__ import annotations

import base64
import gzip
import html
import json
import re
from pathlib import Path

import numpy as np

from kdx.explore import thumbs as th
from kdx.explore.views import View
from kdx.io import write_text

HERE = Path(__file__).parent
COLOR_BY = {"disagreement": "disagreement (total variation)", "deviation": "deviation phi(student) - phi(teacher)",
            "source": "source", "teacher_class": "class (teacher's top)", "class": "class (label)",
            "teacher_prob": "teacher confidence"}
DRAWN = {"drawn": "adaptive source: times drawn", "drawn_when": "adaptive source: when drawn (0 start, 1 end)"}


def _array(a: np.ndarray) -> dict:
    """A typed array for page.js: dtype and gzipped little-endian bytes, base64."""
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.name, "b64": base64.b64encode(gzip.compress(a.tobytes(), 6, mtime=0)).decode()}


def page_data(view: View, runs: list[str]) -> dict:
    p = view.points
    kinds = p["kind"].to_numpy()
    if not (kinds[:(kinds == "eval").sum()] == "eval").all():
        raise ValueError("map.parquet lists its evaluation points before its distillation inputs")
    sources = list(dict.fromkeys(p["source"]))
    k = len(p["eval_neighbors"].iloc[0])
    cols = {
        "x": p["x"].astype(np.float32), "y": p["y"].astype(np.float32),
        "teacher_phi": p["teacher_phi"].astype(np.float32),
        "student_phi": (p["teacher_phi"] + p["deviation"]).astype(np.float32),
        "deviation": p["deviation"].astype(np.float32), "disagreement": p["disagreement"].astype(np.float32),
        "teacher_prob": p["teacher_prob"].astype(np.float32), "student_prob": p["student_prob"].astype(np.float32),
        "teacher_class": p["teacher_class"].astype(np.int16), "student_class": p["student_class"].astype(np.int16),
        "class": p["class"].astype(np.int16), "region": p["region"].astype(np.int16),
        "source": p["source"].map({s: i for i, s in enumerate(sources)}).astype(np.uint8),
        "row": p["item"].str.rsplit(":", n=1).str[1].astype(np.int32),  # the input's row within its source
        "eval_neighbors": np.stack(p["eval_neighbors"].to_numpy()).astype(np.int32).ravel(),
        "distill_neighbors": np.stack(p["distill_neighbors"].to_numpy()).astype(np.int32).ravel(),
    }
    color_by = dict(COLOR_BY)
    if "drawn" in p and p["drawn"].notna().any():  # an adaptive source's picks over the train set
        cols["drawn"] = p["drawn"].fillna(-1).astype(np.float32)  # -1: not a train input (grey)
        cols["drawn_when"] = p["drawn_when"].fillna(-1).astype(np.float32)
        color_by.update(DRAWN)
    n, h, w, _ = view.thumbs.shape
    regions = view.regions[["rank", "region", "size", "dominant_classes", "distributions", "agreement",
                            "mean_deviation", "mean_disagreement", "coverage_median"]]
    return {"name": view.name, "runs": runs, "n": n, "n_eval": int((kinds == "eval").sum()), "k": k,
            "classes": view.classes, "sources": sources, "cols": {c: _array(np.asarray(v)) for c, v in cols.items()},
            "thumb": ({"w": 40, "h": 40, "per_row": th.PER_ROW, "sheets": []} if view.texts is not None else
                      {"w": w, "h": h, "per_row": th.PER_ROW, "sheets": th.sheets(view.thumbs, view.lossy)}),
            "texts": view.texts,  # text data: the decoded inputs, shown where images show thumbnails
            "regions": json.loads(regions.to_json(orient="records")), "color_by": color_by,
            "palettes": _palettes()}


def _palettes() -> dict:
    from bokeh.palettes import Category10_10, Category20_20, RdBu11, Viridis256

    return {"continuous": list(Viridis256), "diverging": list(RdBu11), "category10": list(Category10_10),
            "category20": list(Category20_20)}


def _span(a: np.ndarray, pad: float = 0.04) -> tuple[float, float]:
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    d = max(hi - lo, 1e-6) * pad
    return lo - d, hi + d


def plots(view: View):
    """The Bokeh layout. Its sources start empty: page.js fills them from the page's own data."""
    from bokeh.layouts import row
    from bokeh.models import ColumnDataSource, CustomJS, LinearColorMapper, Range1d, Slope
    from bokeh.plotting import figure

    p = view.points
    mapper = LinearColorMapper(name="mapper", palette=_palettes()["continuous"], low=0, high=1)
    srcs = {kind: ColumnDataSource({c: [] for c in ("x", "y", "tphi", "sphi", "c")}, name=f"src_{kind}")
            for kind in ("eval", "distill")}
    tools = "pan,wheel_zoom,box_select,lasso_select,reset"
    phi = np.concatenate([p["teacher_phi"], p["teacher_phi"] + p["deviation"]])
    figs = {
        "map": figure(name="map", title="UMAP map of teacher features", width=640, height=600,
                      x_range=Range1d(*_span(p["x"])), y_range=Range1d(*_span(p["y"]))),
        "phi": figure(name="phi", title="phi = log(p / (1 - p)) of the teacher's top class", width=520, height=600,
                      x_range=Range1d(*_span(phi)), y_range=Range1d(*_span(phi))),
    }
    for name, f in figs.items():
        f.tools = []
        f.add_tools(*tools.split(","))
        f.toolbar.active_drag = next(t for t in f.tools if type(t).__name__ == "LassoSelectTool")
        f.toolbar.active_scroll = next(t for t in f.tools if type(t).__name__ == "WheelZoomTool")
        f.output_backend = "webgl"
        xy = ("x", "y") if name == "map" else ("tphi", "sphi")
        for kind, src in srcs.items():
            f.scatter(*xy, source=src, name=f"{name}_{kind}", size=4 if kind == "eval" else 5,
                      marker="circle" if kind == "eval" else "triangle", line_color=None,
                      fill_color={"field": "c", "transform": mapper}, fill_alpha=0.75, nonselection_fill_alpha=0.08)
        f.js_on_event("mousemove", CustomJS(code=f"window.kdx && kdx.hover(cb_obj, '{name}')"))
        f.js_on_event("mouseleave", CustomJS(code="window.kdx && kdx.unhover()"))
        f.js_on_event("tap", CustomJS(code=f"window.kdx && kdx.tap(cb_obj, '{name}')"))
    figs["phi"].xaxis.axis_label = "phi(p_teacher)"
    figs["phi"].yaxis.axis_label = "phi(p_student)"
    figs["phi"].add_layout(Slope(gradient=1, y_intercept=0, line_color="black", line_dash="dashed"))
    for src in srcs.values():
        src.selected.js_on_change("indices", CustomJS(code="window.kdx && kdx.selectionChanged()"))
    return row(figs["map"], figs["phi"])


def write_page(view: View, path: Path, runs: list[str] | None = None) -> Path:
    """The page of one view at `path` (runs: the study's run names, for the run selector)."""
    from bokeh.embed import components
    from bokeh.resources import INLINE

    script, div = components(plots(view))
    data = json.dumps(page_data(view, runs or []), separators=(",", ":")).replace("</", "<\\/")
    parts = {"TITLE": html.escape(f"kdx explore {view.name}"), "BOKEH": INLINE.render(),
             "CSS": (HERE / "page.css").read_text(), "PLOTS": div, "DATA": data,
             "JS": (HERE / "page.js").read_text(), "BOKEH_SCRIPT": script}
    # one pass, so that nothing inserted is itself taken for a placeholder
    page = re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m.group(1)], (HERE / "page.html").read_text())
    write_text(path, page)
    return path
