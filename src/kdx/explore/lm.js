"use strict";
// The language-model page's client side. A point is a counted position p of a probed sequence: the
// teacher's context state there, and both models' distribution over token p + 1. Token p + 1 is drawn
// coloured by that position's KL(t||s) or deviation, and hovering it shows what each model predicted
// in its place (top-k with probabilities). Bokeh draws the map of context states and keeps its
// selection; this file decodes the data, renders the sequences, the generations and the regions, and
// links them to the map. window.kdx is also the tests' hook (screen, openSequence, select).
window.kdx = (() => {
  const {D, $, fmt, frame, decode, html, bokehDoc, runPicker, regionsTable, nearest, screen} = kdxCommon;
  const C = {};  // typed arrays: per position (id = index), and per sequence (seq_*, ids: n_seq x width)
  const kdx = {data: D, cols: C, ready: false, lastHover: null};
  let models = null, colorBy = "kl", scale = null;
  let slot = null;  // slot[s * width + j]: the position predicting token j of sequence s, or -1

  const tokenText = t => t < 0 ? "" : D.vocab[t];
  const shown = t => tokenText(t).replace(/\n/g, "↵");  // a token in running text: one line per sequence
  const quoted = t => JSON.stringify(tokenText(t));  // a token in a list: its spaces and newlines visible
  const seqName = s => `${D.sets[C.seq_set[s]]}:${C.seq_row[s]}`;
  const token = (s, j) => C.ids[s * D.width + j];

  // Colour of a position: KL from white to dark red; deviation red (student less sure) to blue (more sure).
  function lerp(a, b, t) {
    const p = i => parseInt(a.slice(i, i + 2), 16) * (1 - t) + parseInt(b.slice(i, i + 2), 16) * t;
    return `rgb(${Math.round(p(1))},${Math.round(p(3))},${Math.round(p(5))})`;
  }
  function setScale() {
    const P = D.palettes, q98 = a => { const s = Float32Array.from(a, Math.abs).sort(); return s[Math.floor(0.98 * (s.length - 1))] || 1; };
    if (colorBy === "kl") {
      const hi = Math.max(q98(C.kl), 1e-3);
      scale = {v: C.kl, lo: 0, hi, pal: P.continuous, text: id => lerp("#ffffff", "#d7301f", Math.min(1, C.kl[id] / hi)),
        legend: [`KL(teacher || student) of the token's slot: 0 (white) … ${fmt(hi, 2)} (red); map: purple … yellow`]};
    } else if (colorBy === "deviation") {
      const hi = Math.max(1, q98(C.deviation));
      const text = id => { const t = Math.max(-1, Math.min(1, C.deviation[id] / hi));
        return t < 0 ? lerp("#ffffff", "#d6604d", -t) : lerp("#ffffff", "#4393c3", t); };
      scale = {v: C.deviation, lo: -hi, hi, pal: P.diverging, text,
        legend: [`red: student less sure of the teacher's top-1 (≤ ${fmt(-hi, 1)})`, `blue: more sure (≥ ${fmt(hi, 1)})`]};
    } else {
      const names = colorBy === "set" ? D.sets : null, v = colorBy === "set" ? Float32Array.from(C.sequence, s => C.seq_set[s])
        : Float32Array.from(C.region), k = names ? names.length : Math.max(...C.region) + 1;
      const pal = k <= 10 ? P.category10 : P.category20;
      scale = {v, lo: -0.5, hi: pal.length - 0.5, pal, text: id => `${pal[v[id] % pal.length]}55`,
        legend: names ? names.map((n, i) => [n, pal[i % pal.length]]) : [`context region (${k} colours, as on the map)`]};
    }
  }

  function legend() {
    $("legend").replaceChildren(...scale.legend.map(l => Array.isArray(l)
      ? html("span", {}, html("i", {style: `background:${l[1]}`}), l[0]) : html("span", {}, l)));
  }

  function recolor() {
    setScale();
    Object.assign(models.mapper, {palette: scale.pal, low: scale.lo, high: scale.hi});
    models.src.data = {x: C.x, y: C.y, c: scale.v};
    for (const el of document.querySelectorAll(".tok[data-id]")) el.style.background = scale.text(+el.dataset.id);
    legend();
  }

  // Tokens lo..hi-1 of sequence s as spans; a predicted token carries its slot's position id.
  function tokens(s, lo = 0, hi = C.seq_length[s]) {
    const out = [];
    for (let j = lo; j < hi; j++) {
      const el = html("span", {className: "tok", textContent: shown(token(s, j))});
      el.dataset.seq = s;
      el.dataset.j = j;
      const id = j > 0 ? slot[s * D.width + j] : -1;
      if (id >= 0) {
        el.dataset.id = id;
        el.style.background = scale.text(id);
      } else el.classList.add("nc");
      out.push(el);
    }
    return out;
  }

  function topList(who, id) {
    const k = D.top_k, ids = C[`${who}_top`], ps = C[`${who}_top_prob`];
    const rows = [];
    for (let r = 0; r < k; r++) {
      const t = ids[id * k + r], tr = html("tr", {}, html("td", {className: "t"}, quoted(t)),
        html("td", {className: "p"}, fmt(ps[id * k + r])));
      tr.dataset.token = t;
      rows.push(tr);
    }
    return html("table", {className: `top ${who}`}, html("tr", {}, html("th", {colSpan: 2}, who)), ...rows);
  }

  // What a position is: its sequence, the context before it, the token that came, and both top-k lists.
  function card(id) {
    const s = C.sequence[id], p = C.position[id], lo = Math.max(0, p - 7);
    let context = "";
    for (let j = lo; j <= p; j++) context += shown(token(s, j));
    return html("div", {className: "card"},
      html("div", {className: "item"}, html("b", {}, seqName(s)), ` position ${p} (point ${id})`),
      html("div", {className: "ctx"}, `«${lo > 0 ? "…" : ""}${context}» → `, html("b", {}, quoted(token(s, p + 1)))),
      html("div", {}, `KL(t||s) ${fmt(C.kl[id])}, deviation ${fmt(C.deviation[id], 2)}, region ${C.region[id]}`),
      html("div", {className: "tops"}, topList("teacher", id), topList("student", id)));
  }

  function showTip(id, x, y) {
    const tip = $("tip");
    if (tip.dataset.id !== String(id)) tip.replaceChildren(card(id));
    tip.dataset.id = id;
    const w = tip.offsetWidth || 360;
    Object.assign(tip.style, {left: `${Math.min(x + 14, window.innerWidth - w - 8)}px`, top: `${y + 14}px`});
    tip.hidden = false;
    kdx.lastHover = {id, t: performance.now()};
  }
  kdx.unhover = () => { $("tip").hidden = true; delete $("tip").dataset.id; };

  kdx.hover = ev => {
    if (!kdx.ready) return;
    const id = nearest(models.plot, C.x, C.y, D.n, ev.sx, ev.sy, 10);
    if (id < 0) return kdx.unhover();
    const r = models.view.el.getBoundingClientRect();
    showTip(id, r.left + ev.sx, r.top + ev.sy);
  };
  kdx.tap = ev => {
    if (!kdx.ready) return;
    const id = nearest(models.plot, C.x, C.y, D.n, ev.sx, ev.sy, 10);
    if (id >= 0) kdx.openSequence(C.sequence[id], id);
  };
  kdx.screen = id => screen(models.plot, C.x[id], C.y[id]);

  // The sequence in the side panel, the token of position `id` marked; its positions selected on the map.
  kdx.openSequence = (s, id = -1, select = true) => {
    const box = $("sequence");
    box.dataset.seq = s;
    box.dataset.id = id;
    const body = html("div", {className: "seq big"}, ...tokens(s));
    box.replaceChildren(html("div", {className: "item"}, html("b", {}, seqName(s)),
      ` (${C.seq_length[s]} tokens${D.sets[C.seq_set[s]].endsWith("samples") ? `, prompt of ${C.seq_start[s] + 1}` : ""})`), body);
    const marked = id >= 0 ? body.querySelector(`.tok[data-id="${id}"]`) : null;
    models.marked.data = id >= 0 ? {x: [C.x[id]], y: [C.y[id]]} : {x: [], y: []};
    if (marked) {
      marked.classList.add("marked");
      marked.scrollIntoView({block: "nearest"});
    }
    if (!select) return;
    const ids = [];
    for (let i = 0; i < D.n; i++) if (C.sequence[i] === s) ids.push(i);
    kdx.select(ids);
  };
  kdx.select = ids => { models.src.selected.indices = ids; };
  kdx.selected = () => Array.from(models.src.selected.indices).sort((a, b) => a - b);

  function sequences() {
    const groups = D.sets.map((name, k) => {
      const rows = [];
      for (let s = 0; s < D.n_seq; s++) if (C.seq_set[s] === k) {
        const el = html("div", {className: "seq"}, html("span", {className: "name"}, seqName(s)), ...tokens(s));
        el.dataset.seq = s;
        rows.push(el);
      }
      return html("details", {open: k === 0}, html("summary", {}, `${name} (${rows.length} sequences)`), ...rows);
    });
    $("sequences").replaceChildren(...groups);
  }

  function generations() {
    if (!D.generations.length) {
      $("generations").replaceChildren(html("tr", {}, html("td", {},
        "no generations: probe the run on teacher_samples and student_samples (kdx probe RUN, the default sets)")));
      return;
    }
    const head = html("tr", {}, ...["prompt", "teacher's completion", "student's completion"].map(h => html("th", {}, h)));
    const rows = D.generations.map(([t, s]) => {
      let prompt = "";
      for (let j = 0; j <= C.seq_start[t]; j++) prompt += shown(token(t, j));
      const tr = html("tr", {}, html("td", {className: "prompt"}, prompt),
        html("td", {className: "seq teacher"}, ...tokens(t, C.seq_start[t] + 1)),
        html("td", {className: "seq student"}, ...tokens(s, C.seq_start[s] + 1)));
      tr.dataset.teacher = t;
      tr.dataset.student = s;
      return tr;
    });
    $("generations").replaceChildren(head, ...rows);
  }

  kdx.selectRegion = r => {
    const ids = [];
    for (let i = 0; i < D.n; i++) if (C.region[i] === r) ids.push(i);
    kdx.select(ids);
  };

  // Hovering a token anywhere on the page (sequences, the side panel, generations): its slot's card.
  function tokenEvents() {
    document.addEventListener("mouseover", ev => {
      const el = ev.target.closest && ev.target.closest(".tok[data-id]");
      if (!el || !kdx.ready) return;
      const r = el.getBoundingClientRect();
      showTip(+el.dataset.id, r.left, r.bottom);
    });
    document.addEventListener("mouseout", ev => {
      if (ev.target.closest && ev.target.closest(".tok[data-id]")) kdx.unhover();
    });
    document.addEventListener("click", ev => {
      const el = ev.target.closest && ev.target.closest(".tok");
      if (el && !el.closest("#sequence")) kdx.openSequence(+el.dataset.seq, el.dataset.id ? +el.dataset.id : -1);
    });
  }

  async function start() {
    for (const [name, col] of Object.entries(D.cols)) C[name] = await decode(col);
    slot = new Int32Array(D.n_seq * D.width).fill(-1);
    for (let i = 0; i < D.n; i++) slot[C.sequence[i] * D.width + C.position[i] + 1] = i;
    const get = await bokehDoc("map");
    models = {src: get("src"), mapper: get("mapper"), plot: get("map"), marked: get("marked")};
    models.view = Bokeh.index.find_one(models.plot);
    $("title").textContent = D.name;
    const color = $("color");
    for (const [k, label] of Object.entries(D.color_by)) color.append(html("option", {value: k}, label));
    color.value = colorBy;
    color.onchange = () => { colorBy = color.value; recolor(); };
    runPicker();
    setScale();
    sequences();
    generations();
    regionsTable(r => kdx.selectRegion(r));
    tokenEvents();
    recolor();
    if (D.n) kdx.openSequence(C.sequence[0], -1, false);  // something to read before the first click
    await frame();
    await frame();
    kdx.ready = true;
    kdx.readyAt = performance.now();
    $("status").textContent = `${D.n} positions of ${D.n_seq} sequences (${D.sets.join(", ")})`;
  }
  kdx.started = start().catch(e => { $("status").textContent = `error: ${e}`; throw e; });
  return kdx;
})();
