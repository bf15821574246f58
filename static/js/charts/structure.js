// The attention pattern's mask and the position scheme's signal as small heatmaps (from the
// analysis report's `structure`): what each query may see, and how position enters the scores.
import { layout, plot } from "./analysis_common.js";

const AXES = { xaxis: { title: { text: "key position", font: { size: 11 } }, constrain: "domain" },
               yaxis: { title: { text: "query position", font: { size: 11 } }, autorange: "reversed", scaleanchor: "x" } };

export function renderMask(el, s) {
  // one pattern drawn (the first head's); patterns that differ by head (dilated) give each
  // group's mean keys in the note
  el.classList.remove("chart-empty");
  plot(el, [{
    type: "heatmap", z: s.mask.heads[0], showscale: false, colorscale: [[0, "#f4f5f7"], [1, "#4f46e5"]],
    zmin: 0, zmax: 1, xgap: 1, ygap: 1, hovertemplate: "query %{y} → key %{x}: %{z}<extra></extra>",
  }], layout({ ...AXES, showlegend: false, margin: { l: 56, r: 8, t: 8, b: 40 } }));
  const keys = s.mask.mean_keys.map((k) => k.toFixed(1)).join(" / ");
  const groups = s.mask.heads.length > 1 ? ` (head groups: ${keys}; the first drawn)` : `: ${keys}`;
  return `${s.mask.attention}, ${s.mask.causal ? "causal" : "bidirectional"} · mean keys per query at ${s.t} tokens${groups}` +
    (s.mask.note ? ` · ${s.mask.note}` : "");
}

export function renderPosition(el, s) {
  const p = s.position;
  if (!p.matrix) {
    el.classList.add("chart-empty");
    el.textContent = p.title || "no position signal to draw";
    return p.title;
  }
  el.classList.remove("chart-empty");
  const diverging = p.kind === "rope" || p.kind === "sinusoidal";
  plot(el, [{
    type: "heatmap", z: p.matrix, colorscale: diverging ? "RdBu" : "Viridis", reversescale: diverging,
    zmid: diverging ? 0 : undefined, colorbar: { thickness: 10, len: 0.9 },
    hovertemplate: `${p.y} %{y}, ${p.x} %{x}: %{z:.3f}<extra></extra>`,
  }], layout({
    showlegend: false, margin: { l: 56, r: 8, t: 8, b: 40 },
    xaxis: { title: { text: p.x, font: { size: 11 } } },
    yaxis: { title: { text: p.y, font: { size: 11 } }, autorange: "reversed" },
  }));
  return p.title;
}
