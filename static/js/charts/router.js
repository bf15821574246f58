// Router health over training: token-choices dropped by the experts' capacity limit (all MoE
// layers together, left axis) and the load-balancing aux loss (mean over MoE layers, right axis).
import { SeriesChart, baseLayout } from "./series.js";
import { COLORS } from "./theme.js";

export class RouterChart {
  constructor(el) {
    this.chart = new SeriesChart(el, [
      { name: "dropped", type: "scatter", mode: "lines", line: { color: COLORS.pink, width: 1.6 }, hovertemplate: "%{y:,}" },
      { name: "aux loss", type: "scatter", mode: "lines", yaxis: "y2", line: { color: COLORS.accent, width: 1.6 }, hovertemplate: "%{y:.4f}" },
    ], baseLayout({
      showlegend: true,
      legend: { orientation: "h", x: 0, y: 1.14, font: { size: 11 } },
      margin: { l: 48, r: 48, t: 24, b: 34 },
      yaxis: { gridcolor: "#eef0f3", linecolor: "#e3e6eb", automargin: true, rangemode: "tozero", title: { text: "dropped", font: { size: 11 } } },
      yaxis2: { overlaying: "y", side: "right", showgrid: false, automargin: true, nticks: 5, tickformat: ".3~f", tickfont: { size: 11 }, title: { text: "aux loss", font: { size: 11 } } },
    }), { emptyText: "Dropped tokens and the aux loss appear with the first MoE statistics." });
  }

  /** One "moe" event's data: sums the layers' drops, averages their aux losses. */
  addEvent(moe) {
    const layers = Array.isArray(moe?.layers) ? moe.layers : [];
    if (!layers.length) return;
    const dropped = layers.reduce((s, l) => s + (Number(l.dropped) || 0), 0);
    const aux = layers.map((l) => l.aux_loss).filter((v) => Number.isFinite(v));
    this.chart.addDataPoint(0, moe.step, dropped);
    if (aux.length) this.chart.addDataPoint(1, moe.step, aux.reduce((s, v) => s + v, 0) / aux.length);
  }
}
