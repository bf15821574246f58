// Parameters by component (embedding, positions, attention, cross-attention, FFN/experts, norms,
// head): one bar group per component, one bar per model; for a Mixture of Experts the FFN also
// shows its active part (top_k experts + shared) next to the total.
import { MODEL_COLORS, PART_COLORS, count, formulas, layout, plot, wrap } from "./analysis_common.js";

const PARTS = [
  ["embedding", "Embedding"], ["position", "Positions"], ["attention", "Attention"],
  ["cross_attention", "Cross-attn"], ["ffn", "FFN / experts"], ["norms", "Norms"], ["head", "LM head"],
];

/** models: [{label, report}] */
export function renderParams(el, models) {
  const parts = PARTS.filter(([k]) => models.some((m) => (m.report.params?.[k] || 0) > 0));
  const single = models.length === 1;
  const data = [];
  models.forEach((m, i) => {
    const p = m.report.params;
    const hover = parts.map(([k]) => {
      const f = m.report.formulas?.[`params.${k}`];
      return f ? wrap(f) : "";
    });
    data.push({
      type: "bar", name: single ? "parameters" : m.label,
      x: parts.map(([, label]) => label), y: parts.map(([k]) => p[k] || 0),
      marker: { color: single ? parts.map(([k]) => PART_COLORS[k]) : MODEL_COLORS[i % MODEL_COLORS.length] },
      text: single ? parts.map(([k]) => count(p[k] || 0)) : undefined, textposition: "outside", cliponaxis: false, textfont: { size: 10 },
      customdata: hover,
      hovertemplate: `${single ? "" : m.label + "<br>"}%{x}: %{y:,}<br>%{customdata}<extra></extra>`,
    });
    if (p.active != null && p.active < p.total) {
      const activeFfn = (p.ffn || 0) - (p.total - p.active);
      data.push({
        type: "bar", name: single ? "active per token" : `${m.label} (active)`,
        x: parts.map(([, label]) => label),
        y: parts.map(([k]) => (k === "ffn" ? activeFfn : p[k] || 0)),
        marker: { color: single ? "rgba(79,70,229,0.35)" : MODEL_COLORS[i % MODEL_COLORS.length], opacity: single ? 1 : 0.45,
                  pattern: { shape: "/", size: 5, solidity: 0.3 } },
        text: single ? parts.map(([k]) => (k === "ffn" ? count(activeFfn) : "")) : undefined, textposition: "outside", cliponaxis: false,
        textfont: { size: 10 },
        hovertemplate: `${single ? "" : m.label + "<br>"}%{x}, active per token: %{y:,}<br>`
          + `${wrap(m.report.formulas?.["params.active"] || "active = total − (n_expert − top_k) × FFN per MoE layer")}<extra></extra>`,
      });
    }
  });
  plot(el, data, layout({
    barmode: "group", bargap: 0.25,
    showlegend: !single || data.length > 1,
    margin: { l: 56, r: 12, t: 18, b: 40 },
    yaxis: { title: { text: "parameters", font: { size: 11 } }, tickformat: "~s" },
  }));
  el.dataset.total = String(models[0]?.report.params?.total ?? "");
}

export const PARAM_FORMULA_PREFIXES = ["params"];
export { formulas };
