// Training throughput in tokens per second.
import { SeriesChart, baseLayout } from "./series.js";
import { COLORS } from "./theme.js";

export class ThroughputChart {
  constructor(el) {
    this.chart = new SeriesChart(el, [
      { name: "tokens/s", type: "scatter", mode: "lines", line: { color: COLORS.teal, width: 1.5 }, fill: "tozeroy", fillcolor: "rgba(13,148,136,0.08)", hovertemplate: "%{y:,.0f}" },
    ], baseLayout({ yaxis: { gridcolor: "#eef0f3", linecolor: "#e3e6eb", automargin: true, rangemode: "tozero" } }),
    { emptyText: "Throughput appears with the first steps." });
  }

  addDataPoint(step, tokensPerS) {
    this.chart.addDataPoint(0, step, tokensPerS);
  }
}
