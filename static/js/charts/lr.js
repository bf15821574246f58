// Learning-rate schedule, as the optimiser actually used it.
import { SeriesChart, baseLayout } from "./series.js";
import { COLORS } from "./theme.js";

export class LrChart {
  constructor(el) {
    this.chart = new SeriesChart(el, [
      { name: "lr", type: "scatter", mode: "lines", line: { color: COLORS.amber, width: 1.8 }, hovertemplate: "%{y:.3e}" },
    ], baseLayout({ yaxis: { gridcolor: "#eef0f3", linecolor: "#e3e6eb", automargin: true, exponentformat: "e", rangemode: "tozero" } }),
    { emptyText: "The schedule appears with the first steps." });
  }

  addDataPoint(step, lr) {
    this.chart.addDataPoint(0, step, lr);
  }
}
