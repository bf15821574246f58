// DPO's live metrics (engine.preference): the implicit reward margin β[(log π − log π_ref)(y_w) −
// (log π − log π_ref)(y_l)] and the share of pairs it ranks right, on training batches (lines)
// and held-out pairs (markers, at each evaluation); and the policy's summed log-probabilities of
// the chosen and rejected responses, which DPO pulls apart.
import { SeriesChart, baseLayout } from "./series.js";
import { COLORS } from "./theme.js";

const AXIS2 = { overlaying: "y", side: "right", range: [0, 1.02], tickformat: ".0%", showgrid: false, zeroline: false, automargin: true };

export class RewardChart {
  constructor(el) {
    this.chart = new SeriesChart(el, [
      { name: "reward margin", type: "scatter", mode: "lines", line: { color: COLORS.accent, width: 1.8 }, hovertemplate: "%{y:.3f}" },
      { name: "reward accuracy", type: "scatter", mode: "lines", yaxis: "y2", line: { color: COLORS.teal, width: 1.4, dash: "dot" }, hovertemplate: "%{y:.1%}" },
      { name: "held-out margin", type: "scatter", mode: "markers", marker: { color: COLORS.accent, size: 8, symbol: "diamond" }, hovertemplate: "%{y:.3f}" },
      { name: "held-out accuracy", type: "scatter", mode: "markers", yaxis: "y2", marker: { color: COLORS.teal, size: 8, symbol: "diamond-open", line: { width: 2 } }, hovertemplate: "%{y:.1%}" },
    ], baseLayout({
      showlegend: true,
      legend: { orientation: "h", y: 1.14, x: 0, font: { size: 11 } },
      margin: { l: 48, r: 48, t: 26, b: 34 },
      yaxis: { gridcolor: "#eef0f3", zerolinecolor: "#c7ccd4", automargin: true, title: { text: "margin", font: { size: 11 } } },
      yaxis2: AXIS2,
    }), { emptyText: "Reward margin and accuracy appear with the first DPO steps." });
  }

  addStep(d) {
    if (d.reward_margin != null) this.chart.addDataPoint(0, d.step, d.reward_margin);
    if (d.reward_accuracy != null) this.chart.addDataPoint(1, d.step, d.reward_accuracy);
  }

  addEval(d) {
    if (d.reward_margin != null) this.chart.addDataPoint(2, d.step, d.reward_margin);
    if (d.reward_accuracy != null) this.chart.addDataPoint(3, d.step, d.reward_accuracy);
  }

  get points() { return this.chart.xs[0].length; }
}

export class LogpChart {
  constructor(el) {
    this.chart = new SeriesChart(el, [
      { name: "chosen", type: "scatter", mode: "lines", line: { color: COLORS.teal, width: 1.8 }, hovertemplate: "%{y:.2f}" },
      { name: "rejected", type: "scatter", mode: "lines", line: { color: COLORS.pink, width: 1.8 }, hovertemplate: "%{y:.2f}" },
    ], baseLayout({
      showlegend: true,
      legend: { orientation: "h", y: 1.14, x: 0, font: { size: 11 } },
      margin: { l: 48, r: 12, t: 26, b: 34 },
      yaxis: { gridcolor: "#eef0f3", zerolinecolor: "#c7ccd4", automargin: true, title: { text: "log π(y | x)", font: { size: 11 } } },
    }), { emptyText: "Log-probabilities appear with the first DPO steps." });
  }

  addStep(d) {
    if (d.chosen_logp != null) this.chart.addDataPoint(0, d.step, d.chosen_logp);
    if (d.rejected_logp != null) this.chart.addDataPoint(1, d.step, d.rejected_logp);
  }
}
