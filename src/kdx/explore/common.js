"use strict";
// What the classifier page (page.js) and the language-model page (lm.js) share: the page's data and its
// typed arrays, element building, waiting for BokehJS, the study's run selector, and the point of a
// plot nearest a screen position.
const kdxCommon = (() => {
  const D = JSON.parse(document.getElementById("kdx-data").textContent);
  const TYPES = {float32: Float32Array, int16: Int16Array, int32: Int32Array, uint8: Uint8Array};
  const $ = id => document.getElementById(id);
  const fmt = (v, d = 3) => Number(v).toFixed(d);
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const frame = () => new Promise(r => requestAnimationFrame(r));

  async function decode(col) {  // a typed array: gzipped little-endian bytes, base64 (page.py _array)
    const s = atob(col.b64), bytes = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new TYPES[col.dtype](await new Response(stream).arrayBuffer());
  }

  function html(tag, attrs, ...children) {
    const el = document.createElement(tag);
    Object.assign(el, attrs || {});
    el.append(...children);
    return el;
  }

  // Bokeh's document once it is drawn: get(name) finds a model, and the plot named `first` has a view.
  async function bokehDoc(first) {
    while (!(window.Bokeh && Bokeh.documents && Bokeh.documents.length)) await sleep(10);
    const doc = Bokeh.documents[0], get = n => doc.get_model_by_name(n);
    while (!Bokeh.index.find_one(get(first))) await sleep(10);
    return get;
  }

  function runPicker() {  // a study's pages link to each other: NAME.html
    if (D.runs.length <= 1) return;
    const run = $("run");
    for (const r of D.runs) run.append(html("option", {value: r}, r));
    run.value = D.name;
    run.onchange = () => { location.href = `${encodeURIComponent(run.value)}.html`; };
    $("run-pick").hidden = false;
  }

  // The regions table (#regions): the columns page.py chose, in its order; a click on a row calls onClick(region).
  function regionsTable(onClick) {
    if (!D.regions.length) return;
    const cols = Object.keys(D.regions[0]);
    const rows = D.regions.map(r => {
      const tr = html("tr", {}, ...cols.map(c => html("td", {}, typeof r[c] === "number" && !Number.isInteger(r[c])
        ? fmt(r[c]) : String(r[c]))));
      tr.dataset.region = r.region;
      tr.onclick = () => onClick(r.region);
      return tr;
    });
    $("regions").replaceChildren(html("tr", {}, ...cols.map(c => html("th", {}, c.replace(/_/g, " ")))), ...rows);
  }

  const plotView = model => Bokeh.index.find_one(model);

  // The point drawn nearest to screen position (sx, sy) of a plot, among the first n of X, Y, within
  // maxPx pixels; -1 if none.
  function nearest(model, X, Y, n, sx, sy, maxPx) {
    const f = plotView(model).frame, xs = f.x_scale, ys = f.y_scale;
    const bx = xs.compute(0), ax = xs.compute(1) - bx, by = ys.compute(0), ay = ys.compute(1) - by;
    let best = -1, bd = maxPx * maxPx;
    for (let i = 0; i < n; i++) {
      const dx = ax * X[i] + bx - sx, dy = ay * Y[i] + by - sy, d = dx * dx + dy * dy;
      if (d < bd) { bd = d; best = i; }
    }
    return best;
  }

  // Screen position (client coordinates) of data point (x, y) in a plot: for tests and benchmarks.
  function screen(model, x, y) {
    const pv = plotView(model), r = pv.el.getBoundingClientRect();
    return [r.left + pv.frame.x_scale.compute(x), r.top + pv.frame.y_scale.compute(y)];
  }

  return {D, $, fmt, sleep, frame, decode, html, bokehDoc, runPicker, regionsTable, plotView, nearest, screen};
})();
