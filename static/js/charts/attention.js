// Attention maps: every layer's and head's weights on one held-out example, at each evaluation.
// An "attention" event (engine/attention_maps.py) carries, per stack, the maps of shape
// [n_layer, n_head, Tq, Tk] as base64 uint8 bytes, row-major: byte / 255 is the weight that query
// (row) gives to key (column), each row renormalised over the window's keys.
//
// The panel: a layer × head grid of canvas thumbnails; the chosen head large (a Plotly heatmap
// with the tokens on both axes) and as a head view (BertViz-style: queries left, keys right, a
// line per pair whose opacity is the weight; hovering a token keeps only its lines); a slider
// over the evaluations so far, which follows the newest map unless the user pins a step.
//
// Long inputs: the event also carries, per stack, an "overview" of every position pooled in
// blocks (N ≤ 128 a side). The thumbnails and the large map then show the overview (token-index
// axes), and zooming into the large map fetches that region's detail from the server
// (./attention_zoom.js); the head view keeps the window of the last positions.
import { CONFIG, MONO, THEME } from "./theme.js";
import { ZoomableMap } from "./attention_zoom.js";

// white -> indigo, the accent's hue; the same stops for the canvases and for Plotly
const STOPS = [[0, [255, 255, 255]], [0.15, [224, 231, 255]], [0.45, [129, 140, 248]], [0.75, [79, 70, 229]], [1, [30, 27, 75]]];
const COLORSCALE = STOPS.map(([t, c]) => [t, `rgb(${c.join(",")})`]);
const STACK_NAMES = { self: "self-attention", encoder: "encoder", cross: "cross-attention" };
const STACK_ORDER = ["encoder", "cross", "self"];
const MAX_CACHED = 24;
const HEADVIEW_REGION = 64;  // a zoomed region this small (tokens a side) replaces the head view's window  // decoded events kept in memory; older ones are fetched again when chosen

function colour(t) {
  t = Math.max(0, Math.min(1, t));
  for (let i = 1; i < STOPS.length; i++) {
    const [t1, c1] = STOPS[i];
    const [t0, c0] = STOPS[i - 1];
    if (t <= t1) {
      const f = (t - t0) / (t1 - t0);
      return c0.map((v, k) => Math.round(v + f * (c1[k] - v)));
    }
  }
  return STOPS[STOPS.length - 1][1];
}

/** base64 -> Uint8Array. */
export function decodeMaps(b64) {
  const raw = atob(b64);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

/** A stack of an event, decoded once: shape, bytes and a `map(layer, head)` view. */
function decodeStack(event, name) {
  const s = event.stacks[name];
  const [L, H, Tq, Tk] = s.shape;
  const bytes = decodeMaps(s.maps);
  const start = (event[s.queries === "tokens" ? "window" : "source_window"] || [0])[0];
  const kstart = (event[s.keys === "tokens" ? "window" : "source_window"] || [0])[0];
  return {
    name, L, H, Tq, Tk, bytes, qStart: start, kStart: kstart,
    queries: event[s.queries] || [], keys: event[s.keys] || [],
    map(l, h) { const n = Tq * Tk; return bytes.subarray((l * H + h) * n, (l * H + h + 1) * n); },
    overview: s.overview ? decodeOverview(s.overview) : null,
  };
}

/** A long input's overview: {Nq, Nk, bq, bk, Tq, Tk, bytes, map(l, h)} (engine/attention_maps.py). */
function decodeOverview(o) {
  const [, H, Nq, Nk] = o.shape;
  const bytes = decodeMaps(o.maps);
  const n = Nq * Nk;
  return {
    Nq, Nk, bq: o.block[0], bk: o.block[1], Tq: o.length[0], Tk: o.length[1], bytes,
    map(l, h) { return bytes.subarray((l * H + h) * n, (l * H + h + 1) * n); },
  };
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  e.append(...children);
  return e;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

export class AttentionPanel {
  /**
   * root: the card (ids inside: attention-thumbs, attention-heatmap, attention-headview,
   * attention-step, attention-step-label, attention-latest, attention-stack, attention-title).
   * fetchEvent(seq) -> Promise of the event's data (the full map of one evaluation).
   * fetchRegion(params, {signal}) -> Promise of a region of a long input's map (optional; ids
   * attention-zoom, attention-zoom-state and attention-reset inside the card then show its state).
   */
  constructor(root, { fetchEvent, fetchRegion }) {
    this.root = root;
    this.fetchEvent = fetchEvent;
    this.index = new Map();     // step -> seq
    this.cache = new Map();     // seq -> event data
    this.pinned = null;         // a step the user chose, or null: follow the newest
    this.shownSeq = null;
    this.stackName = null;
    this.layer = 0;
    this.head = 0;
    this.hover = null;          // {side: "q" | "k", i} in the head view
    this.loading = null;
    const $ = (id) => root.querySelector(`#${id}`);
    this.els = {
      thumbs: $("attention-thumbs"), heat: $("attention-heatmap"), headview: $("attention-headview"),
      slider: $("attention-step"), label: $("attention-step-label"), latest: $("attention-latest"),
      stack: $("attention-stack"), title: $("attention-title"), note: $("attention-note"),
      zoomBar: $("attention-zoom"), zoomState: $("attention-zoom-state"), reset: $("attention-reset"),
      legend: $("attention-legend"),
    };
    this.zoom = fetchRegion ? new ZoomableMap(this.els.heat, {
      fetchRegion, colorscale: COLORSCALE, config: CONFIG,
      onState: ({ state, text }) => this.zoomState(state, text),
      onRegion: (r, bytes) => this.drawRegionHeadView(r, bytes),
    }) : null;
    this.els.reset?.addEventListener("click", () => this.zoom?.reset());
    this.els.slider.addEventListener("input", () => this.choose(Number(this.els.slider.value)));
    this.els.latest.addEventListener("click", () => { this.pinned = null; this.refresh(); });
    this.els.stack.addEventListener("change", () => { this.stackName = this.els.stack.value; this.layer = this.head = 0; this.draw(); });
  }

  get steps() { return [...this.index.keys()].sort((a, b) => a - b); }

  /** Index entries [{seq, step}] (from the events API, ``brief``); the panel fetches what it shows. */
  addIndex(entries) {
    for (const { seq, step } of entries) if (!this.index.has(step) || this.index.get(step) < seq) this.index.set(step, seq);
    this.refresh();
  }

  /** A whole "attention" event, as it arrives live. */
  addEvent(seq, data) {
    if (!data?.stacks) return;
    this.index.set(data.step, seq);
    this.remember(seq, data);
    this.refresh();
  }

  remember(seq, data) {
    this.cache.set(seq, data);
    while (this.cache.size > MAX_CACHED) {
      const oldest = [...this.cache.keys()].find((s) => s !== this.shownSeq);
      this.cache.delete(oldest);
    }
  }

  choose(i) {
    const steps = this.steps;
    this.pinned = i >= steps.length - 1 ? null : steps[i];
    this.refresh();
  }

  /** Show the pinned step, or the newest. */
  async refresh() {
    const steps = this.steps;
    if (!steps.length) return;
    this.root.hidden = false;
    const step = this.pinned ?? steps[steps.length - 1];
    const seq = this.index.get(step);
    this.renderControls(step);
    if (seq === this.shownSeq) return;
    let data = this.cache.get(seq);
    if (!data) {
      if (this.loading === seq) return;
      this.loading = seq;
      this.els.note.textContent = `loading step ${step}…`;
      try {
        data = await this.fetchEvent(seq);
      } catch (err) {
        this.els.note.textContent = `could not load the maps of step ${step}: ${err.message}`;
        return;
      } finally {
        if (this.loading === seq) this.loading = null;
      }
      if (!data?.stacks) return;
      this.remember(seq, data);
      const now = this.pinned ?? this.steps[this.steps.length - 1];
      if (this.index.get(now) !== seq) return this.refresh();  // the choice moved on meanwhile
    }
    this.shownSeq = seq;
    this.event = data;
    this.decoded = {};
    const names = STACK_ORDER.filter((n) => data.stacks[n]);
    if (!names.includes(this.stackName)) this.stackName = names.includes("self") ? "self" : names[0];
    this.els.stack.replaceChildren(...names.map((n) => el("option", { value: n, text: STACK_NAMES[n] || n })));
    this.els.stack.value = this.stackName;
    this.els.stack.hidden = names.length < 2;
    this.draw();
  }

  renderControls(step) {
    const steps = this.steps;
    const i = steps.indexOf(step);
    const s = this.els.slider;
    s.max = String(Math.max(0, steps.length - 1));
    s.value = String(i);
    s.disabled = steps.length < 2;
    this.els.label.textContent = `step ${step.toLocaleString()} · evaluation ${i + 1} of ${steps.length}`;
    this.els.latest.disabled = this.pinned === null;
    this.els.latest.textContent = this.pinned === null ? "following newest" : "show newest";
    this.root.dataset.step = String(step);
    this.root.dataset.steps = String(steps.length);
    this.root.dataset.pinned = this.pinned === null ? "" : String(this.pinned);
  }

  stack() {
    if (!this.decoded[this.stackName]) this.decoded[this.stackName] = decodeStack(this.event, this.stackName);
    return this.decoded[this.stackName];
  }

  draw() {
    const started = performance.now();
    const st = this.stack();
    this.layer = Math.min(this.layer, st.L - 1);
    this.head = Math.min(this.head, st.H - 1);
    const w = this.event.window;
    const ov = this.zoom && st.overview;
    this.els.note.textContent = ov
      ? `${ov.Tq.toLocaleString()} × ${ov.Tk.toLocaleString()} tokens, in ${ov.bq}×${ov.bk}-token blocks`
      : `${st.queries.length} × ${st.keys.length} tokens` +
        (w && w[0] > 0 ? ` (positions ${w[0]}–${w[1] - 1}, the last of the input)` : "");
    if (this.els.legend) {
      this.els.legend.textContent = ov
        ? "Each thumbnail pools the whole input in blocks (a cell: the mass a block of queries gives a block of keys), coloured from 0 to its own largest. Drag a box on the large map to fetch that region at full resolution; the head view shows the last positions, or a zoomed region of up to 64 tokens."
        : "Each thumbnail is coloured from 0 (white) to its own largest weight, so faint heads still show their pattern; the large map's scale is the weight itself.";
    }
    this.drawThumbs(st);
    const painted = this.drawFocus();
    if (ov) {  // time to first paint of a long input's overview, for the record (tests read it)
      Promise.resolve(painted).then(() => {
        this.root.dataset.overviewMs = (performance.now() - started).toFixed(1);
        this.root.dataset.overviewAt = performance.now().toFixed(1);
      });
    }
  }

  /** The head view of a small region at full resolution (≤ HEADVIEW_REGION tokens a side; a
   * larger one, or null, shows the window of the last positions). */
  drawRegionHeadView(r, bytes) {
    const note = this.root.querySelector("#attention-headview-note");
    const st = this.stack();
    if (!r || Math.max(...r.shape) > HEADVIEW_REGION) {
      if (note) note.textContent = "· queries → keys; hover a token";
      this.drawHeadView(st, st.map(this.layer, this.head));
      return;
    }
    if (note) note.textContent = `· zoomed: ${r.q[0]}–${r.q[1] - 1} → ${r.k[0]}–${r.k[1] - 1}`;
    // bytes are relative to the region's largest weight; as 255·weight, the head view leaves out
    // the same weights (< ~1%) as for the window
    const weights = bytes.map((b) => Math.round(b * r.scale));
    this.drawHeadView({ Tq: r.shape[0], Tk: r.shape[1], queries: r.queries, keys: r.keys }, weights);
  }

  zoomState(state, text) {
    const bar = this.els.zoomBar;
    if (!bar) return;
    bar.hidden = false;
    bar.dataset.state = state;
    this.els.zoomState.textContent = text;
    this.els.reset.disabled = state === "overview";
  }

  drawThumbs(st) {
    const grid = this.els.thumbs;
    const ov = this.zoom && st.overview;
    const [rows, cols] = ov ? [ov.Nq, ov.Nk] : [st.Tq, st.Tk];
    grid.style.gridTemplateColumns = `auto repeat(${st.H}, minmax(0, 1fr))`;
    const cells = [el("span")];
    for (let h = 0; h < st.H; h++) cells.push(el("span", { class: "attn-axis", text: `H${h}` }));
    for (let l = 0; l < st.L; l++) {
      cells.push(el("span", { class: "attn-axis", text: `L${l}` }));
      for (let h = 0; h < st.H; h++) {
        const c = el("canvas", { width: cols, height: rows, "data-layer": l, "data-head": h, title: `layer ${l}, head ${h}` });
        c.className = l === this.layer && h === this.head ? "selected" : "";
        paint(c, ov ? ov.map(l, h) : st.map(l, h), rows, cols);
        c.addEventListener("click", () => { this.layer = l; this.head = h; this.draw(); });
        cells.push(c);
      }
    }
    grid.replaceChildren(...cells);
  }

  drawFocus() {
    const st = this.stack();
    const m = st.map(this.layer, this.head);
    this.els.title.textContent = `layer ${this.layer}, head ${this.head} · ${STACK_NAMES[st.name] || st.name}, step ${this.event.step.toLocaleString()}`;
    let painted;
    if (this.zoom && st.overview) {
      painted = this.zoom.showOverview({ ...st.overview, bytes: st.overview.map(this.layer, this.head) },
                                       { step: this.event.step, stack: st.name, layer: this.layer, head: this.head });
    } else {
      this.zoom?.detach();
      if (this.els.zoomBar) this.els.zoomBar.hidden = true;
      this.drawHeatmap(st, m);
    }
    const note = this.root.querySelector("#attention-headview-note");
    if (note) note.textContent = "· queries → keys; hover a token";
    this.drawHeadView(st, m);
    return painted;
  }

  drawHeatmap(st, m) {
    if (!window.Plotly) { this.els.heat.textContent = "Charts are unavailable (plotly.js did not load)."; return; }
    const z = [], text = [];
    let max = 0;
    for (let i = 0; i < st.Tq; i++) {
      const row = [], trow = [];
      for (let j = 0; j < st.Tk; j++) {
        const v = m[i * st.Tk + j] / 255;
        row.push(v); trow.push([st.queries[i], st.keys[j]]);
        if (v > max) max = v;
      }
      z.push(row); text.push(trow);
    }
    const xs = st.keys.map((_, j) => st.kStart + j), ys = st.queries.map((_, i) => st.qStart + i);
    const every = (n) => Math.max(1, Math.ceil(n / 40));  // at most ~40 tick labels per axis
    const ticks = (pos, labels) => {
      const k = every(pos.length);
      return { tickvals: pos.filter((_, i) => i % k === 0), ticktext: labels.filter((_, i) => i % k === 0) };
    };
    const data = [{
      type: "heatmap", x: xs, y: ys, z, customdata: text, zmin: 0, zmax: Math.max(max, 1e-3), colorscale: COLORSCALE,
      hovertemplate: "query %{y} “%{customdata[0]}” → key %{x} “%{customdata[1]}”<br>weight %{z:.3f}<extra></extra>",
      colorbar: { thickness: 10, outlinewidth: 0, tickfont: { size: 10 }, len: 1 },
    }];
    const axis = { ticks: "", tickfont: { size: 11, family: MONO }, automargin: true, fixedrange: true, showgrid: false, zeroline: false };
    const layout = {
      ...THEME,
      margin: { l: 8, r: 8, t: 8, b: 8 },
      xaxis: { ...axis, ...ticks(xs, st.keys), side: "top", tickangle: 0, title: { text: "key", font: { size: 11 }, standoff: 4 } },
      yaxis: { ...axis, ...ticks(ys, st.queries), autorange: "reversed", title: { text: "query", font: { size: 11 }, standoff: 4 } },
    };
    this.els.heat.classList.remove("chart-empty");
    if (!this.heatDrawn) this.els.heat.textContent = "";
    window.Plotly.react(this.els.heat, data, layout, { ...CONFIG, displayModeBar: false });
    this.heatDrawn = true;
  }

  drawHeadView(st, m) {
    const box = this.els.headview;
    const rows = Math.max(st.Tq, st.Tk);
    const rowH = Math.max(9, Math.min(18, 440 / rows));
    const width = Math.max(220, box.clientWidth || 280), labelW = 64;
    const height = rows * rowH + 8;
    const yq = (i) => 4 + (i + 0.5) * rowH * (rows / st.Tq);
    const yk = (j) => 4 + (j + 0.5) * rowH * (rows / st.Tk);
    const x0 = labelW + 6, x1 = width - labelW - 6;
    const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "attn-headview" });
    const lines = svg("g");
    let max = 1;  // a loop, not Math.max(...m): spreading a 512 × 512 map overflows the call stack
    for (const v of m) if (v > max) max = v;
    const lineEls = [];
    for (let i = 0; i < st.Tq; i++) {
      for (let j = 0; j < st.Tk; j++) {
        const v = m[i * st.Tk + j];
        if (v < 3) continue;  // below ~1% of the weight: not drawn
        const line = svg("line", { x1: x0, y1: yq(i), x2: x1, y2: yk(j), "stroke-opacity": (v / max).toFixed(3), "data-q": i, "data-k": j, "data-w": v });
        lines.append(line);
        lineEls.push(line);
      }
    }
    root.append(lines);
    const font = Math.min(12, rowH - 1);
    const label = (text, x, y, anchor, side, i) => {
      const t = svg("text", { x, y, "text-anchor": anchor, "dominant-baseline": "middle", "font-size": font, class: "attn-token", "data-side": side, "data-i": i });
      t.textContent = text;
      t.addEventListener("mouseenter", () => this.highlight(root, lineEls, side, i));
      t.addEventListener("mouseleave", () => this.highlight(root, lineEls, null, null));
      return t;
    };
    st.queries.forEach((tok, i) => root.append(label(tok, x0 - 4, yq(i), "end", "q", i)));
    st.keys.forEach((tok, j) => root.append(label(tok, x1 + 4, yk(j), "start", "k", j)));
    box.replaceChildren(root);
  }

  /** Keep only the lines of the hovered token (side "q" or "k", index i); the tokens at their
   * other ends that take at least a quarter of its strongest weight are marked too. */
  highlight(root, lineEls, side, i) {
    root.classList.toggle("focused", side !== null);
    const mine = lineEls.filter((l) => side !== null && Number(l.dataset[side]) === i);
    const strongest = Math.max(0, ...mine.map((l) => Number(l.dataset.w)));
    const other = side === "q" ? "k" : "q";
    const linked = new Set(mine.filter((l) => Number(l.dataset.w) >= strongest / 4).map((l) => Number(l.dataset[other])));
    for (const line of lineEls) line.classList.toggle("on", mine.includes(line));
    for (const t of root.querySelectorAll(".attn-token")) {
      const n = Number(t.dataset.i);
      t.classList.toggle("on", side !== null && t.dataset.side === side && n === i);
      t.classList.toggle("linked", side !== null && t.dataset.side === other && linked.has(n));
    }
  }
}

/** Draw a Tq × Tk map on a canvas of that many pixels (CSS scales it up, pixelated); the colour
 * runs from 0 to the map's largest weight, so weak heads still show their pattern. */
function paint(canvas, bytes, Tq, Tk) {
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(Tk, Tq);
  let max = 1;
  for (let i = 0; i < bytes.length; i++) if (bytes[i] > max) max = bytes[i];
  for (let i = 0; i < bytes.length; i++) {
    const [r, g, b] = colour(bytes[i] / max);
    img.data[4 * i] = r; img.data[4 * i + 1] = g; img.data[4 * i + 2] = b; img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}
