"""One run's explorer page: two Bokeh scatter plots (the UMAP map, teacher-vs-student phi) sharing
their data sources, so a selection in one is a selection in the other, and page.js for what Bokeh
does not do (hover with thumbnails, the selection grid, neighbour lists, regions). Everything is
inlined: BokehJS, the data (typed arrays, gzipped, base64) and the thumbnail sheets.

A language-model run's page (LmView) is the same shell (page.html, common.js) with its own body
(lm.html, lm.js): the probed sequences with every token coloured, both models' top next tokens on
hover, the UMAP of the teacher's context states linked to them, the generations and the regions."""
from __future__ import annotations

import base64
import gzip
import html
import json
import re
from pathlib import Path

import numpy as np

from kdx.explore import thumbs as th
from kdx.explore.views import LmView, View
from kdx.io import write_text

HERE = Path(__file__).parent
COLOR_BY = {"disagreement": "disagreement (total variation)", "deviation": "deviation phi(student) - phi(teacher)",
            "source": "source", "teacher_class": "class (teacher's top)", "class": "class (label)",
            "teacher_prob": "teacher confidence"}
DRAWN = {"drawn": "adaptive source: times drawn", "drawn_when": "adaptive source: when drawn (0 start, 1 end)"}
LM_COLOR_BY = {"kl": "KL(teacher || student)", "deviation": "deviation phi_s - phi_t (teacher's top-1)",
               "set": "held-out set", "region": "context region"}
CLASSIFIER_CONTROLS = '<label><input type="checkbox" id="show-distill" checked> distillation inputs</label>'


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


def lm_page_data(view: LmView, runs: list[str]) -> dict:
    """A language-model page's data: tokens.npz's arrays, typed (positions, and sequences: `seq_*`), the
    vocabulary, the generations (pairs of a teacher's and a student's sequence of one prompt) and regions."""
    a = view.arrays
    sets = a["sets"].tolist()
    cols = {k: a[k] for k in ("x", "y", "kl", "deviation", "sequence", "position", "region", "teacher_top",
                              "teacher_top_prob", "student_top", "student_top_prob")}
    cols.update({f"seq_{k}": a[k] for k in ("set", "row", "start", "length")}, ids=a["ids"])
    generations = []
    if {"teacher_samples", "student_samples"} <= set(sets):  # completions of one prompt: the same row of both
        by = {(int(s), int(r)): i for i, (s, r) in enumerate(zip(a["set"], a["row"]))}
        t, s = sets.index("teacher_samples"), sets.index("student_samples")
        generations = [[i, by[s, r]] for (k, r), i in by.items() if k == t and (s, r) in by]
    regions = view.regions[[c for c in ("rank", "region", "size", "mean_kl_teacher_student", "mean_deviation",
                                        "agreement", "dominant_next_tokens", "examples") if c in view.regions]]
    return {"name": view.name, "runs": runs, "lm": True, "n": int(len(a["x"])), "n_seq": int(len(a["row"])),
            "width": int(a["ids"].shape[1]), "top_k": int(a["teacher_top"].shape[1]), "sets": sets,
            "vocab": a["vocab"].tolist(), "generations": generations,
            "cols": {c: _array(np.ascontiguousarray(v).ravel()) for c, v in cols.items()},
            "regions": json.loads(regions.to_json(orient="records")), "color_by": LM_COLOR_BY, "palettes": _palettes()}


def lm_plots(view: LmView):
    """The UMAP of the teacher's context states; page.js fills its source."""
    from bokeh.models import ColumnDataSource, CustomJS, LinearColorMapper, Range1d
    from bokeh.plotting import figure

    a = view.arrays
    mapper = LinearColorMapper(name="mapper", palette=_palettes()["continuous"], low=0, high=1)
    src = ColumnDataSource({c: [] for c in ("x", "y", "c")}, name="src")
    f = figure(name="map", title="UMAP of the teacher's context states (one point per position)", width=640,
               height=600, x_range=Range1d(*_span(a["x"])), y_range=Range1d(*_span(a["y"])),
               tools="pan,wheel_zoom,box_select,lasso_select,reset", output_backend="webgl")
    f.toolbar.active_scroll = next(t for t in f.tools if type(t).__name__ == "WheelZoomTool")
    f.scatter("x", "y", source=src, name="points", size=4, line_color=None, fill_alpha=0.75,
              fill_color={"field": "c", "transform": mapper}, nonselection_fill_alpha=0.08)
    marked = ColumnDataSource({"x": [], "y": []}, name="marked")  # the position of the opened sequence's marked token
    f.scatter("x", "y", source=marked, size=14, fill_color=None, line_color="black", line_width=2)
    f.js_on_event("mousemove", CustomJS(code="window.kdx && kdx.hover(cb_obj)"))
    f.js_on_event("mouseleave", CustomJS(code="window.kdx && kdx.unhover()"))
    f.js_on_event("tap", CustomJS(code="window.kdx && kdx.tap(cb_obj)"))
    return f


def write_page(view: View | LmView, path: Path, runs: list[str] | None = None) -> Path:
    """The page of one view at `path` (runs: the study's run names, for the run selector)."""
    from bokeh.embed import components
    from bokeh.resources import INLINE

    lm = isinstance(view, LmView)
    script, div = components(lm_plots(view) if lm else plots(view))
    data = json.dumps((lm_page_data if lm else page_data)(view, runs or []), separators=(",", ":")).replace("</", "<\\/")
    parts = {"TITLE": html.escape(f"kdx explore {view.name}"), "BOKEH": INLINE.render(),
             "CSS": (HERE / "page.css").read_text(), "PLOTS": div, "DATA": data,
             "CONTROLS": "" if lm else CLASSIFIER_CONTROLS,
             "JS": (HERE / "common.js").read_text() + (HERE / ("lm.js" if lm else "page.js")).read_text(),
             "BOKEH_SCRIPT": script}
    shell = (HERE / "page.html").read_text().replace("{{MAIN}}", (HERE / ("lm.html" if lm else "classes.html")).read_text())
    # one pass, so that nothing inserted is itself taken for a placeholder
    page = re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m.group(1)], shell)
    write_text(path, page)
    return path
