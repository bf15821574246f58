// Training health: the gradient norm against the clip threshold, the update/weight ratio, and the
// per-block norms of the latest "health" event (engine/train.py's step and health events).
import { SeriesChart, baseLayout } from "./series.js";
import { COLORS } from "./theme.js";
import * as fmt from "../format.js";

const axis = { gridcolor: "#eef0f3", linecolor: "#e3e6eb", automargin: true };

/** Gradient norm (before clipping) at each logged step; clipped steps marked; the clip as a line. */
export class GradNormChart {
  constructor(el, { clip = 0 } = {}) {
    this.el = el;
    const shapes = [];
    const annotations = [];
    if (clip > 0) {
      shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, y0: clip, y1: clip, line: { color: COLORS.pink, width: 1.2, dash: "dash" } });
      annotations.push({ xref: "paper", x: 1, xanchor: "right", y: clip, yanchor: "bottom", text: `clip ${clip}`, showarrow: false, font: { size: 10, color: COLORS.pink } });
    }
    this.chart = new SeriesChart(el, [
      { name: "grad norm", type: "scatter", mode: "lines", line: { color: COLORS.accent, width: 1.5 }, hovertemplate: "%{y:.3f}" },
      { name: "clipped", type: "scatter", mode: "markers", marker: { color: COLORS.pink, size: 5, symbol: "circle-open", line: { width: 1.2 } }, hovertemplate: "clipped to %{text}" },
    ], baseLayout({ shapes, annotations, yaxis: { ...axis, rangemode: "tozero", title: { text: "‖g‖", font: { size: 11 } } } }),
    { emptyText: "The gradient norm appears with the first steps.", text: true });
    this.clip = clip;
    this.chart.onDraw = () => { el.dataset.points = String(this.chart.count(0)); };
  }

  addStep(step, gradNorm, clipped) {
    this.chart.addDataPoint(0, step, gradNorm);
    if (clipped) this.chart.addDataPoint(1, step, gradNorm, String(this.clip));
  }

  get points() {
    return this.chart.count(0);
  }
}

/** ‖Δw‖ / ‖w‖ over all weights, on a log axis (≈1e-3 is the usual healthy order of magnitude). */
export class UpdateRatioChart {
  constructor(el) {
    this.chart = new SeriesChart(el, [
      { name: "update / weight", type: "scatter", mode: "lines", line: { color: COLORS.teal, width: 1.5 }, hovertemplate: "%{y:.2e}" },
    ], baseLayout({ yaxis: { ...axis, type: "log", dtick: 1, exponentformat: "power", title: { text: "‖Δw‖ / ‖w‖", font: { size: 11 } } } }),
    { emptyText: "The update/weight ratio appears with the first steps." });
  }

  addStep(step, ratio) {
    if (ratio > 0) this.chart.addDataPoint(0, step, ratio); // a skipped step updates nothing; log axis
  }
}

const LAYER_COLUMNS = [
  { key: "grad_norm", label: "grad norm", format: (v) => fmt.loss(v) },
  { key: "weight_norm", label: "weight norm", format: (v) => fmt.loss(v) },
  { key: "update_ratio", label: "update ratio", format: (v) => (Number.isFinite(v) ? v.toExponential(2) : "—") },
];

/** One row per transformer block of a health event, each figure with a bar scaled to its column's largest. */
export function renderLayerTable(table, event) {
  const layers = Array.isArray(event?.layers) ? event.layers : [];
  const max = Object.fromEntries(LAYER_COLUMNS.map((c) => [c.key, Math.max(0, ...layers.map((l) => Number(l[c.key]) || 0))]));
  const head = document.createElement("tr");
  for (const label of ["block", ...LAYER_COLUMNS.map((c) => c.label)]) {
    const th = document.createElement("th");
    th.textContent = label;
    if (label !== "block") th.className = "num";
    head.append(th);
  }
  const rows = layers.map((l) => {
    const tr = document.createElement("tr");
    const name = document.createElement("td");
    name.textContent = l.name ?? `block ${l.layer}`;
    name.className = "mono";
    tr.append(name);
    for (const c of LAYER_COLUMNS) {
      const td = document.createElement("td");
      td.className = "num bar-cell";
      const bar = document.createElement("span");
      bar.className = `bar bar-${c.key}`;
      const v = Number(l[c.key]);
      bar.style.width = `${max[c.key] > 0 && Number.isFinite(v) ? (100 * v) / max[c.key] : 0}%`;
      const label = document.createElement("span");
      label.className = "bar-label";
      label.textContent = c.format(l[c.key]);
      td.append(bar, label);
      tr.append(td);
    }
    return tr;
  });
  table.tHead.replaceChildren(head);
  table.tBodies[0].replaceChildren(...rows);
}
