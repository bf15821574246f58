// The large attention map of a long input (≥ a few hundred tokens): an overview of every position,
// pooled in blocks (engine/attention_zoom.py), drawn with token-index axes; zooming (a box dragged
// on the map, or any relayout of its axis ranges) asks the server for that region of the head,
// recomputed from the job's checkpoint at full resolution, or pooled to fit 128 cells a side,
// and draws it in place, labelled with the tokens once a side is at full resolution.
//
// The page never waits on it: requests are debounced, a newer zoom aborts the older request, and
// a response for a view that is no longer shown is dropped. Overview cells and pooled region
// cells hold the mean, over a query block, of the mass given to a key block; at full resolution a
// cell is the weight itself.
import { MONO, THEME } from "./theme.js";

const DEBOUNCE_MS = 180;
const CELLS = 128;          // cells a side asked for; a side that fits is at full resolution
const MAX_TICKS = 40;       // token labels per axis, at most

const every = (n) => Math.max(1, Math.ceil(n / MAX_TICKS));

/** Centres, in token positions, of ``n`` blocks of ``b`` positions from ``start`` (the last may be shorter). */
function centres(start, n, b, end) {
  const out = new Array(n);
  for (let i = 0; i < n; i++) out[i] = (start + i * b + Math.min(start + (i + 1) * b, end) - 1) / 2;
  return out;
}

function span(start, i, b, end) {
  const a = start + i * b, z = Math.min(start + (i + 1) * b, end) - 1;
  return a === z ? `${a}` : `${a}–${z}`;
}

export class ZoomableMap {
  /**
   * el: the Plotly div. fetchRegion(params, {signal}) -> Promise of the region API's answer.
   * onState({state, text}): "overview" | "loading" | "detail" | "error", for the card's status line.
   * onRegion(region | null, bytes): a region drawn at full resolution on both sides (its uint8
   * weights, scaled to its largest), or null when the map goes back to the overview.
   */
  constructor(el, { fetchRegion, onState, onRegion, colorscale, config }) {
    this.el = el;
    this.fetchRegion = fetchRegion;
    this.onState = onState || (() => {});
    this.onRegion = onRegion || (() => {});
    this.colorscale = colorscale;
    this.config = config;
    this.view = null;       // {key, step, stack, layer, head, Tq, Tk, ...} of the overview shown
    this.region = null;     // the region drawn, or null: the overview
    this.timer = null;
    this.controller = null;
    this.drawing = false;   // our own redraws are not the user's zoom
    this.bound = false;
  }

  /**
   * Draw the overview of one head. ov: {bytes (Nq·Nk), Nq, Nk, bq, bk, Tq, Tk}; view: {step, stack,
   * layer, head}. Returns a promise resolved once Plotly has drawn it.
   */
  showOverview(ov, view) {
    const key = `${view.step}/${view.stack}/${view.layer}/${view.head}`;
    if (this.view?.key !== key) this.cancel();
    this.view = { ...view, key, ov };
    this.region = null;
    this.onState({ state: "overview", text: `overview · ${ov.bq}×${ov.bk}-token blocks · drag a box to see detail` });
    return this.drawOverview();
  }

  drawOverview(range) {
    const { ov } = this.view;
    const z = [];
    let max = 0;
    for (let i = 0; i < ov.Nq; i++) {
      const row = new Array(ov.Nk);
      for (let j = 0; j < ov.Nk; j++) {
        const v = ov.bytes[i * ov.Nk + j] / 255;
        row[j] = v;
        if (v > max) max = v;
      }
      z.push(row);
    }
    const xs = centres(0, ov.Nk, ov.bk, ov.Tk), ys = centres(0, ov.Nq, ov.bq, ov.Tq);
    const labelsX = xs.map((_, j) => span(0, j, ov.bk, ov.Tk)), labelsY = ys.map((_, i) => span(0, i, ov.bq, ov.Tq));
    const custom = ys.map((_, i) => xs.map((_, j) => [labelsY[i], labelsX[j]]));
    const trace = {
      type: "heatmap", x: xs, y: ys, z, customdata: custom, zmin: 0, zmax: Math.max(max, 1e-3),
      colorscale: this.colorscale, xgap: 0, ygap: 0,
      hovertemplate: "queries %{customdata[0]} → keys %{customdata[1]}<br>mass %{z:.3f} (mean over the block's queries)<extra></extra>",
      colorbar: { thickness: 10, outlinewidth: 0, tickfont: { size: 10 }, len: 1 },
    };
    return this.plot([trace], this.layout({ x: [-0.5, ov.Tk - 0.5], y: [ov.Tq - 0.5, -0.5], ...range }));
  }

  layout({ x, y, xticks = {}, yticks = {} }) {
    const axis = {
      ticks: "outside", ticklen: 3, tickfont: { size: 10, family: MONO }, automargin: true, showgrid: false,
      zeroline: false, fixedrange: false,
    };
    return {
      ...THEME,
      margin: { l: 8, r: 8, t: 8, b: 8 }, dragmode: "zoom",
      xaxis: { ...axis, ...xticks, range: x, side: "top", title: { text: "key position", font: { size: 11 }, standoff: 4 } },
      yaxis: { ...axis, ...yticks, range: y, title: { text: "query position", font: { size: 11 }, standoff: 4 } },
    };
  }

  async plot(data, layout) {
    if (!window.Plotly) { this.el.textContent = "Charts are unavailable (plotly.js did not load)."; return; }
    this.el.classList.remove("chart-empty");
    this.drawing = true;
    try {
      await window.Plotly.react(this.el, data, layout, { ...this.config, displayModeBar: false, doubleClick: false });
    } finally {
      this.drawing = false;
    }
    if (!this.bound) {
      this.bound = true;
      this.el.on("plotly_relayout", (e) => this.relayout(e));
      this.el.on("plotly_doubleclick", () => this.reset());
    }
  }

  /** A relayout of the axes: the user zoomed, panned or reset (autorange). */
  relayout(e) {
    if (this.drawing || !this.view || !e) return;
    if (e["xaxis.autorange"] || e["yaxis.autorange"]) { this.reset(); return; }
    const full = this.el._fullLayout;
    const xr = e["xaxis.range"] || (e["xaxis.range[0]"] !== undefined ? [e["xaxis.range[0]"], e["xaxis.range[1]"]] : full?.xaxis?.range);
    const yr = e["yaxis.range"] || (e["yaxis.range[0]"] !== undefined ? [e["yaxis.range[0]"], e["yaxis.range[1]"]] : full?.yaxis?.range);
    if (!xr || !yr) return;
    const { Tq, Tk } = this.view.ov;
    const cut = (r, T) => {
      const lo = Math.min(r[0], r[1]), hi = Math.max(r[0], r[1]);
      const a = Math.max(0, Math.min(T - 1, Math.floor(lo + 0.5)));
      return [a, Math.max(a + 1, Math.min(T, Math.ceil(hi - 0.5) + 1))];
    };
    const [q0, q1] = cut(yr, Tq), [k0, k1] = cut(xr, Tk);
    if (q0 === 0 && k0 === 0 && q1 === Tq && k1 === Tk) { this.reset(); return; }
    this.request({ q0, q1, k0, k1 });
  }

  /** Ask for a region after a short quiet spell; a newer request aborts an older one. */
  request(region) {
    clearTimeout(this.timer);
    this.onState({ state: "loading", text: `loading detail… queries ${region.q0}–${region.q1 - 1} × keys ${region.k0}–${region.k1 - 1}` });
    const view = this.view;
    this.timer = setTimeout(() => this.load(view, region), DEBOUNCE_MS);
  }

  async load(view, region) {
    this.controller?.abort();
    const controller = this.controller = new AbortController();
    const params = { step: view.step, stack: view.stack, layer: view.layer, head: view.head, ...region, cells: CELLS };
    const started = performance.now();
    let body;
    try {
      body = await this.fetchRegion(params, { signal: controller.signal });
    } catch (err) {
      if (err.name === "AbortError" || controller.signal.aborted) return;
      if (this.view === view) this.onState({ state: "error", text: `no detail: ${err.message}` });
      return;
    }
    if (controller.signal.aborted || this.view !== view) return;  // the user moved on meanwhile
    this.controller = null;
    await this.drawRegion(body);
    this.el.dataset.regionMs = String(Math.round(performance.now() - started));
  }

  drawRegion(r) {
    this.region = r;
    const [q0, q1] = r.q, [k0, k1] = r.k, [bq, bk] = r.block, [nq, nk] = r.shape;
    const raw = atob(r.maps);
    const z = [], custom = [];
    const ys = centres(q0, nq, bq, q1), xs = centres(k0, nk, bk, k1);
    const qLabel = (i) => (r.queries ? `${q0 + i} “${r.queries[i]}”` : `${span(q0, i, bq, q1)}`);
    const kLabel = (j) => (r.keys ? `${k0 + j} “${r.keys[j]}”` : `${span(k0, j, bk, k1)}`);
    let max = 0;
    for (let i = 0; i < nq; i++) {
      const row = new Array(nk), crow = new Array(nk), ql = qLabel(i);
      for (let j = 0; j < nk; j++) {
        const v = (raw.charCodeAt(i * nk + j) / 255) * r.scale;
        row[j] = v; crow[j] = [ql, kLabel(j)];
        if (v > max) max = v;
      }
      z.push(row); custom.push(crow);
    }
    const ticks = (pos, labels) => {
      if (!labels) return {};
      const k = every(pos.length);
      return { tickmode: "array", tickvals: pos.filter((_, i) => i % k === 0), ticktext: labels.filter((_, i) => i % k === 0), tickangle: 0 };
    };
    const full = bq === 1 && bk === 1;
    const trace = {
      type: "heatmap", x: xs, y: ys, z, customdata: custom, zmin: 0, zmax: Math.max(max, 1e-6), colorscale: this.colorscale,
      hovertemplate: `query %{customdata[0]} → key %{customdata[1]}<br>${full ? "weight" : "mass"} %{z:.4f}<extra></extra>`,
      colorbar: { thickness: 10, outlinewidth: 0, tickfont: { size: 10 }, len: 1 },
    };
    const layout = this.layout({
      x: [k0 - 0.5, k1 - 0.5], y: [q1 - 0.5, q0 - 0.5],
      // one-character tokens stand upright; longer ones turn so that they do not overlap
      xticks: { ...ticks(xs, r.keys), tickangle: r.keys && nk > 24 && r.keys.some((t) => t.length > 2) ? -90 : 0 },
      yticks: ticks(ys, r.queries),
    });
    const what = full ? "full resolution" : `pooled ${bq}×${bk}`;
    // recomputed from the weights of another step than the overview's: the server's note says so
    const from = r.note ? ` · ${r.note}` : "";
    this.onState({ state: "detail", text: `queries ${q0}–${q1 - 1} × keys ${k0}–${k1 - 1} · ${what}${from}` });
    this.el.dataset.region = `${q0},${q1},${k0},${k1}`;
    const drawn = this.plot([trace], layout);
    if (full) this.onRegion(r, Uint8Array.from(raw, (c) => c.charCodeAt(0)));
    else this.onRegion(null);
    return drawn;
  }

  /** Back to the whole overview. */
  reset() {
    this.cancel();
    if (!this.view) return;
    if (this.region) this.onRegion(null);
    this.region = null;
    delete this.el.dataset.region;
    const { ov } = this.view;
    this.onState({ state: "overview", text: `overview · ${ov.bq}×${ov.bk}-token blocks · drag a box to see detail` });
    return this.drawOverview();
  }

  /** The large map shows something else (a short input's map): forget the view. */
  detach() {
    this.cancel();
    this.view = this.region = null;
  }

  cancel() {
    clearTimeout(this.timer);
    this.controller?.abort();
    this.controller = null;
  }
}
