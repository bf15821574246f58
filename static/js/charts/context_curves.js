// KV cache and attention FLOPs per token against context length, log-log: the model's attention
// pattern bold, the other patterns thin and dashed (composer), or each model's own (compare); a
// dotted line marks each model's context (block_size).
import { MODEL_COLORS, bytes, color, flops, layout, plot, wrap } from "./analysis_common.js";

const METRICS = {
  kv_cache: { title: "KV cache per sequence", fmt: bytes, axis: "bytes" },
  attention_flops: { title: "attention FLOPs per token", fmt: flops, axis: "FLOPs / token" },
};

function line(x, y, name, color, { chosen = true, fmtValue, formula, legendgroup }) {
  const pts = x.map((t, i) => [t, y[i]]).filter(([, v]) => v != null && v > 0);
  return {
    type: "scatter", mode: chosen ? "lines+markers" : "lines", name, legendgroup,
    x: pts.map((p) => p[0]), y: pts.map((p) => p[1]),
    line: { color, width: chosen ? 2.5 : 1.4, dash: chosen ? "solid" : "dash" }, marker: { size: 5 },
    customdata: pts.map((p) => fmtValue(p[1])),
    hovertemplate: `<b>${name}</b><br>context %{x:,} → %{customdata}<br>${wrap(formula)}<extra></extra>`,
  };
}

/** Composer: one model, every attention pattern. */
export function renderPatternCurves(el, report, metric) {
  const c = report.curves;
  const spec = METRICS[metric];
  const data = c.series.map((s) => line(c.contexts, s[metric], s.chosen ? `${s.label || s.attention} (this model)` : s.label || s.attention,
    color(s.color), { chosen: s.chosen, fmtValue: spec.fmt, formula: c.formulas?.[metric] }));
  plot(el, data, curveLayout(spec, [c.block_size]));
}

/** Compare: each model's own pattern. models: [{label, report}] */
export function renderModelCurves(el, models, metric) {
  const spec = METRICS[metric];
  const data = models.map((m, i) => {
    const c = m.report.curves;
    const s = c.series.find((x) => x.chosen) || c.series[0];
    return line(c.contexts, s[metric], `${m.label} (${s.attention})`, MODEL_COLORS[i % MODEL_COLORS.length],
      { chosen: true, fmtValue: spec.fmt, formula: c.formulas?.[metric] });
  });
  plot(el, data, curveLayout(spec, models.map((m) => m.report.curves.block_size)));
}

function curveLayout(spec, blockSizes) {
  const shapes = [...new Set(blockSizes)].map((b) => ({
    type: "line", x0: b, x1: b, yref: "paper", y0: 0, y1: 1, line: { color: "#94a3b8", width: 1, dash: "dot" },
  }));
  return layout({
    hovermode: "closest", shapes,
    margin: { l: 60, r: 12, t: 10, b: 44 },
    xaxis: { type: "log", dtick: 1, exponentformat: "SI", title: { text: "context length (tokens)", font: { size: 11 } } },
    yaxis: { type: "log", dtick: 1, exponentformat: "SI", title: { text: spec.axis, font: { size: 11 } } },
    legend: { orientation: "h", x: 0, y: -0.25, font: { size: 11 } },
  });
}
