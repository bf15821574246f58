// Loss chart: training loss at every logged step, and validation / evaluation-train loss at evals;
// loss spikes and non-finite steps (skipped, lr lowered or stopped) as markers, their reason on hover.
import { SeriesChart, baseLayout } from "./series.js";
import { COLORS } from "./theme.js";

const TRAIN = 0;
const VAL = 1;
const EVAL_TRAIN = 2;
const SPIKE = 3;
const NONFINITE = 4;

export class LossChart {
  constructor(el) {
    this.el = el;
    this.chart = new SeriesChart(el, [
      { name: "train loss", type: "scatter", mode: "lines", line: { color: COLORS.accent, width: 1.5 }, hovertemplate: "%{y:.4f}" },
      { name: "val loss", type: "scatter", mode: "lines+markers", line: { color: COLORS.pink, width: 2 }, marker: { size: 6 }, hovertemplate: "%{y:.4f}" },
      { name: "train loss (eval)", type: "scatter", mode: "lines+markers", line: { color: COLORS.teal, width: 1.5, dash: "dot" }, marker: { size: 5 }, hovertemplate: "%{y:.4f}" },
      { name: "loss spike", type: "scatter", mode: "markers", marker: { color: COLORS.amber, size: 10, symbol: "triangle-up", line: { color: "#fff", width: 1 } }, hovertemplate: "%{text}" },
      { name: "non-finite step", type: "scatter", mode: "markers", marker: { color: "#b91c1c", size: 11, symbol: "x" }, hovertemplate: "%{text}" },
    ], baseLayout({
      showlegend: true,
      legend: { orientation: "h", x: 0, y: 1.12, font: { size: 11 } },
      margin: { l: 48, r: 12, t: 24, b: 34 },
      yaxis: { gridcolor: "#eef0f3", zerolinecolor: "#e3e6eb", linecolor: "#e3e6eb", automargin: true, title: { text: "loss", font: { size: 11 } } },
    }), { emptyText: "The loss curve appears with the first training steps.", text: true });
    this.lastLoss = null;
    // The e2e tests read how many train-loss points have been drawn.
    this.chart.onDraw = () => { el.dataset.points = String(this.chart.count(TRAIN)); };
  }

  /** One step event; ``spike``: a loss spike since the previous one. */
  addStep(step, loss, spike = false) {
    this.chart.addDataPoint(TRAIN, step, loss);
    if (Number.isFinite(loss)) this.lastLoss = loss;
    if (spike) this.chart.addDataPoint(SPIKE, step, loss, `loss spike at step ${step}`);
  }

  /** A non-finite step has no loss to plot: its marker sits at the last finite one. */
  addNonfinite(step, message) {
    this.chart.addDataPoint(NONFINITE, step, this.lastLoss ?? 0, message || `step ${step}: non-finite`);
  }

  addEval(step, trainLoss, valLoss) {
    this.chart.addDataPoint(VAL, step, valLoss);
    this.chart.addDataPoint(EVAL_TRAIN, step, trainLoss);
  }

  get points() {
    return this.chart.count(TRAIN);
  }

  setLogY(on) {
    this.chart.relayout({ "yaxis.type": on ? "log" : "linear" });
  }
}
