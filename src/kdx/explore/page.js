"use strict";
// The explorer's client side. Bokeh draws the two scatter plots and keeps their selections (the
// plots share their sources); this file decodes the page's data, fills those sources, colours the
// points, and draws what Bokeh does not: the hover card, the neighbour lists, the selection grid and
// table, and the regions table. window.kdx is also the tests' hook (select, neighbours, screen).
window.kdx = (() => {
  const {D, $, fmt, frame, decode, html, bokehDoc, runPicker, regionsTable, plotView: view, nearest: near, screen: at} = kdxCommon;
  const C = {};  // columns as typed arrays, point id = index; evaluation points first, then distillation inputs
  const GRID_MAX = 300;  // thumbnails and table rows shown of a selection
  const kdx = {data: D, cols: C, ready: false, lastHover: null};
  let models = null, showDistill = true, colorBy = "disagreement", pending = false;

  const item = id => `${D.sources[C.source[id]]}:${C.row[id]}`;
  const className = c => c >= 0 ? D.classes[c] : "none";

  // Thumbnails: a CSS background offset into the point's sprite sheet (one .sN class per sheet).
  function thumb(id, scale) {
    const {w, h, per_row} = D.thumb, per = per_row * per_row, j = id % per;
    const el = document.createElement("div");
    if (D.texts) {  // text data: the decoded input instead of a thumbnail
      el.className = "th txt";
      el.dataset.id = id;
      el.title = `${id} ${item(id)}: teacher ${className(C.teacher_class[id])}, student ${className(C.student_class[id])}`;
      el.textContent = D.texts[id];
      Object.assign(el.style, {width: `${w * scale * 3}px`, maxHeight: `${h * scale * 1.5}px`});
      return el;
    }
    el.className = `th s${Math.floor(id / per)}`;
    el.dataset.id = id;
    el.title = `${id} ${item(id)}: teacher ${className(C.teacher_class[id])}, student ${className(C.student_class[id])}`;
    Object.assign(el.style, {width: `${w * scale}px`, height: `${h * scale}px`,
      backgroundSize: `${per_row * w * scale}px auto`,
      backgroundPosition: `-${(j % per_row) * w * scale}px -${Math.floor(j / per_row) * h * scale}px`});
    return el;
  }
  const scaleFor = px => Math.max(1, Math.round(px / Math.max(D.thumb.w, D.thumb.h)));

  // Colour: one LinearColorMapper; categories are integer codes mapped onto a discrete palette.
  function colors() {
    const P = D.palettes, m = colorBy;
    let v = C[m], pal = P.continuous, lo = 0, hi = 1, legend = [];
    if (m === "deviation") {
      const a = Float32Array.from(C.deviation, Math.abs).sort();
      hi = Math.max(1, a[Math.floor(0.98 * (a.length - 1))]);
      lo = -hi;
      pal = P.diverging;
      legend = [`red: student less sure than the teacher (≤ ${fmt(lo, 1)})`, `blue: more sure (≥ ${fmt(hi, 1)})`];
    } else if (m === "source" || m === "class" || m === "teacher_class") {
      const names = m === "source" ? D.sources : D.classes;
      pal = names.length <= 10 ? P.category10 : P.category20;
      lo = -0.5;
      hi = pal.length - 0.5;
      v = Float32Array.from(v);
      legend = names.map((n, i) => [n, pal[i % pal.length]]);
      if (m === "class") legend.push(["no label", "#bbbbbb"]);
    } else if (m === "drawn") {
      hi = Math.max(1, ...C.drawn);
      legend = [`train inputs the adaptive source drew: 0 (purple) … ${hi} times (yellow); grey: not a train input`];
    } else if (m === "drawn_when") {
      legend = ["mean training step at which the adaptive source drew a train input: start (purple) … end (yellow); grey: never drawn or not a train input"];
    } else {
      legend = [`${m === "teacher_prob" ? "teacher confidence" : m}: 0 (purple) … 1 (yellow)`];
      if (m === "teacher_prob") lo = 1 / D.classes.length;
    }
    Object.assign(models.mapper, {palette: pal, low: lo, high: hi, low_color: "#bbbbbb"});
    $("legend").replaceChildren(...legend.map(l => Array.isArray(l)
      ? html("span", {}, html("i", {style: `background:${l[1]}`}), l[0]) : html("span", {}, l)));
    return v;
  }

  function fill() {
    const c = colors();
    for (const [kind, lo, hi] of [["eval", 0, D.n_eval], ["distill", D.n_eval, D.n]]) {
      const s = (a) => a.subarray(lo, hi);
      models[kind].data = {x: s(C.x), y: s(C.y), tphi: s(C.teacher_phi), sphi: s(C.student_phi), c: s(c)};
    }
  }

  const plotView = name => view(models.plots[name]);
  const xy = plot => plot === "map" ? [C.x, C.y] : [C.teacher_phi, C.student_phi];

  // The point drawn nearest to screen position (sx, sy) of a plot, within maxPx pixels; -1 if none.
  const nearest = (plot, sx, sy, maxPx) => near(models.plots[plot], ...xy(plot), showDistill ? D.n : D.n_eval, sx, sy, maxPx);

  function card(id) {
    const label = C.class[id];
    return html("div", {className: "card"},
      html("div", {className: "item"}, html("b", {}, item(id)), ` (${id < D.n_eval ? "evaluation" : "distillation input"}, id ${id})`),
      html("div", {}, `label: ${className(label)}`),
      html("div", {className: "teacher"}, "teacher: ", html("b", {}, className(C.teacher_class[id])), ` ${fmt(C.teacher_prob[id])}`),
      html("div", {className: "student"}, "student: ", html("b", {}, className(C.student_class[id])), ` ${fmt(C.student_prob[id])}`),
      html("div", {}, `deviation ${fmt(C.deviation[id], 2)}, disagreement ${fmt(C.disagreement[id])}`),
      html("div", {}, `region ${C.region[id]}`));
  }

  kdx.hover = (ev, plot) => {
    if (!kdx.ready) return;
    const id = nearest(plot, ev.sx, ev.sy, 10);
    if (id < 0) return kdx.unhover();
    const tip = $("tip"), r = plotView(plot).el.getBoundingClientRect();
    if (tip.dataset.id !== String(id)) tip.replaceChildren(thumb(id, scaleFor(84)), card(id));
    tip.dataset.id = id;
    Object.assign(tip.style, {left: `${r.left + ev.sx + 14}px`, top: `${r.top + ev.sy + 14}px`});
    tip.hidden = false;
    kdx.lastHover = {id, t: performance.now()};
  };
  kdx.unhover = () => { $("tip").hidden = true; delete $("tip").dataset.id; };

  // Neighbours: precomputed by kdx probe with faiss (teacher features), k of each kind.
  kdx.neighbours = (id, kind) =>
    Array.from(C[`${kind}_neighbors`].subarray(id * D.k, (id + 1) * D.k)).filter(j => j >= 0);

  kdx.tap = (ev, plot) => {
    if (!kdx.ready) return;
    const id = nearest(plot, ev.sx, ev.sy, 10);
    if (id >= 0) kdx.showNeighbours(id);
  };
  kdx.showNeighbours = id => {
    const box = $("neighbours");
    box.dataset.id = id;
    const list = kind => html("div", {className: "list"}, ...kdx.neighbours(id, kind).map(j =>
      html("div", {className: "cell"}, thumb(j, scaleFor(48)), html("br"), item(j),
        html("br"), `${className(C.teacher_class[j])} / ${className(C.student_class[j])}`)));
    const ev = list("eval"), di = list("distill");
    ev.dataset.kind = "eval";
    di.dataset.kind = "distill";
    box.replaceChildren(html("div", {className: "nb"}, thumb(id, scaleFor(56)), card(id)),
      html("h4", {}, `${D.k} nearest evaluation points`), ev,
      html("h4", {}, `${D.k} nearest distillation inputs`), di);
  };

  // Selection: Bokeh keeps it on the two sources (evaluation, distillation); ids are global.
  kdx.selected = () => {
    const e = Array.from(models.eval.selected.indices);
    const d = showDistill ? Array.from(models.distill.selected.indices, i => i + D.n_eval) : [];
    return e.concat(d).sort((a, b) => a - b);
  };
  kdx.select = ids => {
    models.eval.selected.indices = ids.filter(i => i < D.n_eval);
    models.distill.selected.indices = ids.filter(i => i >= D.n_eval).map(i => i - D.n_eval);
  };
  kdx.selectionChanged = () => {  // both sources may change in one gesture: draw once, next frame
    if (!kdx.ready || pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; drawSelection(); });
  };
  function drawSelection() {
    const ids = kdx.selected(), shown = ids.slice(0, GRID_MAX), s = scaleFor(42);
    $("sel-count").textContent = ids.length
      ? `${ids.length} selected${ids.length > GRID_MAX ? `, the first ${GRID_MAX} shown` : ""}` : "(none)";
    $("grid").replaceChildren(...shown.map(id => thumb(id, s)));
    const head = html("tr", {}, ...["id", "item", "label", "teacher", "student", "deviation", "disagreement", "region"]
      .map(h => html("th", {}, h)));
    $("sel-table").replaceChildren(head, ...shown.map(id => html("tr", {},
      ...[id, item(id), className(C.class[id]), `${className(C.teacher_class[id])} ${fmt(C.teacher_prob[id])}`,
        `${className(C.student_class[id])} ${fmt(C.student_prob[id])}`, fmt(C.deviation[id], 2),
        fmt(C.disagreement[id]), C.region[id]].map(v => html("td", {}, String(v))))));
    kdx.drawn = performance.now();
  }

  kdx.selectRegion = r => {
    const ids = [];
    for (let i = 0; i < D.n_eval; i++) if (C.region[i] === r) ids.push(i);
    kdx.select(ids);
  };

  // Screen position (client coordinates) of a point in a plot: for tests and benchmarks.
  kdx.screen = (id, plot = "map") => { const [X, Y] = xy(plot); return at(models.plots[plot], X[id], Y[id]); };

  function controls() {
    $("title").textContent = D.name;
    const color = $("color");
    for (const [k, label] of Object.entries(D.color_by)) color.append(html("option", {value: k}, label));
    color.value = colorBy;
    color.onchange = () => { colorBy = color.value; fill(); };
    $("show-distill").onchange = ev => {
      showDistill = ev.target.checked;
      for (const p of ["map", "phi"]) models.renderers[p].visible = showDistill;
      if (!showDistill) models.distill.selected.indices = [];
      kdx.selectionChanged();
    };
    runPicker();
    regionsTable(r => kdx.selectRegion(r));
  }

  async function start() {
    for (const [name, col] of Object.entries(D.cols)) C[name] = await decode(col);
    const style = document.createElement("style");
    style.textContent = D.thumb.sheets.map((u, i) => `.s${i}{background-image:url(${u})}`).join("\n");
    document.head.append(style);
    const get = await bokehDoc("map");
    models = {eval: get("src_eval"), distill: get("src_distill"), mapper: get("mapper"),
      plots: {map: get("map"), phi: get("phi")}, renderers: {map: get("map_distill"), phi: get("phi_distill")}};
    controls();
    fill();
    await frame();
    await frame();
    kdx.ready = true;
    kdx.readyAt = performance.now();
    $("status").textContent = `${D.n} points: ${D.n_eval} evaluation, ${D.n - D.n_eval} distillation inputs`;
  }
  kdx.started = start().catch(e => { $("status").textContent = `error: ${e}`; throw e; });
  return kdx;
})();
