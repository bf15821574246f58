// Expert load: a heatmap of MoE layers × experts, each cell the share of that layer's routed
// token-choices (counting each of a token's top-k picks) sent to that expert, at the latest
// "moe" event. The colour scale runs from 0 to 2/n_expert, so a balanced router (1/n_expert
// everywhere) sits at the neutral middle; idle experts go teal, overloaded ones orange.
import { scheduleFlush } from "./series.js";
import { AXIS, CONFIG, THEME } from "./theme.js";

const COLORSCALE = [[0, "#0f766e"], [0.25, "#8fdcd0"], [0.5, "#f4f5f7"], [0.75, "#fbbf77"], [1, "#c2410c"]];

export class ExpertLoadChart {
  constructor(el) {
    this.el = el;
    this.latest = null;
    this.drawn = false;
    this.scheduled = false;
    el.classList.add("chart-empty");
    el.textContent = window.Plotly ? "Expert load appears with the first MoE statistics." : "Charts are unavailable (plotly.js did not load).";
  }

  /** A "moe" event's data: {step, layers: [{layer, tokens_per_expert, dropped, ...}]}; only the latest is drawn. */
  update(moe) {
    if (!Array.isArray(moe?.layers) || !moe.layers.length) return;
    if (this.latest && moe.step < this.latest.step) return;
    this.latest = moe;
    scheduleFlush(this);
  }

  flush() {
    if (!this.scheduled) return;
    this.scheduled = false;
    if (!window.Plotly || !this.latest) return;
    const layers = [...this.latest.layers].sort((a, b) => a.layer - b.layer);
    const nExpert = Math.max(...layers.map((l) => (l.tokens_per_expert || []).length));
    const experts = Array.from({ length: nExpert }, (_, e) => `expert ${e}`);
    const rows = layers.map((l) => `layer ${l.layer}`);
    const counts = layers.map((l) => experts.map((_, e) => l.tokens_per_expert?.[e] ?? 0));
    const z = counts.map((row) => {
      const routed = row.reduce((s, n) => s + n, 0);
      return row.map((n) => (routed ? n / routed : 0));
    });
    const balanced = 1 / nExpert;
    const data = [{
      type: "heatmap", x: experts, y: rows, z, customdata: counts,
      zmin: 0, zmax: 2 * balanced, colorscale: COLORSCALE, xgap: 2, ygap: 2,
      texttemplate: "%{z:.0%}", textfont: { size: 11 },
      hovertemplate: "%{y}, %{x}<br>%{z:.1%} of routed tokens (%{customdata:,})<extra></extra>",
      colorbar: {
        thickness: 10, outlinewidth: 0, len: 1, tickfont: { size: 10 },
        tickvals: [0, balanced, 2 * balanced],
        ticktext: ["0", `${+(balanced * 100).toFixed(1)}% balanced`, `≥ ${+(200 * balanced).toFixed(1)}%`],
      },
    }];
    const layout = {
      margin: { l: 8, r: 8, t: 6, b: 8 },
      ...THEME,
      xaxis: { side: "top", automargin: true, tickfont: { size: 11 }, ticks: "", fixedrange: true },
      yaxis: { autorange: "reversed", automargin: true, tickfont: { size: 11 }, ticks: "", fixedrange: true },
    };
    // Rows keep a readable height however many MoE layers there are.
    this.el.style.height = `${Math.min(560, Math.max(240, 56 + 44 * rows.length))}px`;
    if (!this.drawn) {
      this.el.classList.remove("chart-empty");
      this.el.textContent = "";
      window.Plotly.newPlot(this.el, data, layout, { ...CONFIG, displayModeBar: false });
      this.drawn = true;
    } else {
      window.Plotly.react(this.el, data, layout, { ...CONFIG, displayModeBar: false });
    }
  }
}

// Expert load over time: x = the step of each "moe" event, y = the experts of one MoE layer, each
// cell that step's share of the layer's routed token-choices (the colour scale above); under it,
// bars of the token-choices the capacity limit dropped in that layer at that step. Every "moe"
// event is kept, so the replayed log and the live stream draw the same picture.
export class ExpertLoadTimeChart {
  constructor(el) {
    this.el = el;
    this.byStep = new Map();  // step -> {layer -> {tokens_per_expert, dropped}}
    this.layer = null;        // the MoE layer shown; null: the first one seen
    this.drawn = false;
    this.scheduled = false;
    el.dataset.columns = "0";
    el.classList.add("chart-empty");
    el.textContent = window.Plotly ? "Expert load over time appears with the first MoE statistics."
      : "Charts are unavailable (plotly.js did not load).";
  }

  /** The MoE layer numbers seen so far, in order. */
  get layers() {
    const seen = new Set();
    for (const layers of this.byStep.values()) for (const l of layers.keys()) seen.add(l);
    return [...seen].sort((a, b) => a - b);
  }

  /** One "moe" event's data: {step, layers: [{layer, tokens_per_expert, dropped}]}. */
  addEvent(moe) {
    if (!Array.isArray(moe?.layers) || !moe.layers.length || !Number.isFinite(moe.step)) return;
    this.byStep.set(moe.step, new Map(moe.layers.map((l) => [l.layer, l])));
    scheduleFlush(this);
  }

  setLayer(layer) {
    this.layer = layer;
    scheduleFlush(this);
  }

  flush() {
    if (!this.scheduled) return;
    this.scheduled = false;
    if (!window.Plotly || !this.byStep.size) return;
    const layer = this.layer ?? this.layers[0];
    const steps = [...this.byStep.keys()].sort((a, b) => a - b);
    const rows = steps.map((s) => this.byStep.get(s).get(layer));
    const nExpert = Math.max(1, ...rows.map((r) => r?.tokens_per_expert?.length ?? 0));
    const experts = Array.from({ length: nExpert }, (_, e) => `expert ${e}`);
    // z[e][j]: expert e's share at step j; a step without this layer (none) stays a gap
    const counts = experts.map((_, e) => rows.map((r) => (r ? r.tokens_per_expert?.[e] ?? 0 : null)));
    const routed = rows.map((r) => (r ? (r.tokens_per_expert || []).reduce((s, n) => s + n, 0) : 0));
    const z = counts.map((row) => row.map((n, j) => (n === null || !routed[j] ? null : n / routed[j])));
    const dropped = rows.map((r) => (r ? Number(r.dropped) || 0 : null));
    const balanced = 1 / nExpert;
    const data = [
      {
        type: "heatmap", x: steps, y: experts, z, customdata: counts, yaxis: "y",
        zmin: 0, zmax: 2 * balanced, colorscale: COLORSCALE, xgap: steps.length > 80 ? 0 : 1, ygap: 2,
        hovertemplate: "step %{x}, %{y}<br>%{z:.1%} of routed tokens (%{customdata:,})<extra></extra>",
        colorbar: {
          thickness: 10, outlinewidth: 0, len: 0.72, y: 1, yanchor: "top", tickfont: { size: 10 },
          tickvals: [0, balanced, 2 * balanced],
          ticktext: ["0", `${+(balanced * 100).toFixed(1)}% balanced`, `≥ ${+(200 * balanced).toFixed(1)}%`],
        },
      },
      {
        type: "bar", x: steps, y: dropped, yaxis: "y2", marker: { color: "#db2777" }, name: "dropped",
        hovertemplate: "step %{x}: %{y:,} token-choices dropped<extra></extra>",
      },
    ];
    const layout = {
      ...THEME,
      margin: { l: 8, r: 8, t: 6, b: 34 },
      showlegend: false,
      bargap: 0.15,
      // the step axis under the dropped bars, shared by the heatmap above them
      xaxis: { ...AXIS, anchor: "y2", title: { text: "step", font: { size: 11 } }, showgrid: false, zeroline: false },
      yaxis: { domain: [0.28, 1], autorange: "reversed", automargin: true, tickfont: { size: 11 }, ticks: "", fixedrange: true },
      yaxis2: { ...AXIS, domain: [0, 0.2], rangemode: "tozero", fixedrange: true, nticks: 3, title: { text: "dropped", font: { size: 10 } } },
    };
    this.el.style.height = `${Math.min(520, Math.max(260, 120 + 26 * nExpert))}px`;
    this.el.dataset.columns = String(steps.length);
    this.el.dataset.layer = String(layer);
    const config = { ...CONFIG, displayModeBar: false };
    if (!this.drawn) {
      this.el.classList.remove("chart-empty");
      this.el.textContent = "";
      window.Plotly.newPlot(this.el, data, layout, config);
      this.drawn = true;
    } else {
      window.Plotly.react(this.el, data, layout, config);
    }
  }
}
