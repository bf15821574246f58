// What the analysis charts share: layout, colours per component and per model, units, and the
// formula strings the engine returns (report.formulas), shown on hover and as footnotes. An
// attention kind's colour is not here: the report carries its token (series.color), which the
// theme module maps (color()).
import * as fmt from "../format.js";
import { AXIS, CONFIG, PALETTE, THEME, color } from "./theme.js";

export { CONFIG, color };

export const PART_COLORS = {
  embedding: "#4f46e5", position: "#8b85f0", attention: "#0ea5a4", cross_attention: "#5eead4",
  ffn: "#f59e0b", norms: "#94a3b8", head: "#ec4899",
};
export const MEMORY_COLORS = {
  weights: "#4f46e5", gradients: "#8b85f0", optimizer: "#f59e0b", activations: "#0ea5a4", kv_cache: "#ec4899",
};
export const MODEL_COLORS = [PALETTE.indigo, PALETTE.pink, PALETTE.teal, PALETTE.amber];

export const GiB = 2 ** 30;

export function layout(extra = {}) {
  return {
    ...THEME,
    margin: { l: 56, r: 12, t: 10, b: 40 },
    showlegend: true,
    legend: { orientation: "h", x: 0, y: -0.18, font: { size: 11 } },
    hoverlabel: { align: "left", font: { size: 11 } },
    ...extra,
    xaxis: { ...AXIS, ...(extra.xaxis || {}) },
    yaxis: { ...AXIS, ...(extra.yaxis || {}) },
  };
}

/** Draw or redraw; a missing Plotly leaves a note instead of an empty box. */
export function plot(el, data, lay) {
  if (!window.Plotly) {
    el.classList.add("chart-empty");
    el.textContent = "Charts are unavailable (plotly.js did not load).";
    return;
  }
  if (!el.dataset.drawn) {
    el.classList.remove("chart-empty");
    el.textContent = "";
    window.Plotly.newPlot(el, data, lay, { ...CONFIG, displayModeBar: false });
    el.dataset.drawn = "1";
  } else {
    window.Plotly.react(el, data, lay, { ...CONFIG, displayModeBar: false });
  }
  el.dataset.traces = String(data.length);
}

/** The formula strings of a report whose keys start with one of `prefixes`. */
export function formulas(report, prefixes) {
  const all = report?.formulas || {};
  return Object.entries(all).filter(([k]) => prefixes.some((p) => k === p || k.startsWith(p + ".") || k.startsWith(p)));
}

/** One formula for hover text, wrapped at ~70 characters so the label stays on screen. */
export function wrap(text, width = 72) {
  if (!text) return "";
  const words = String(text).split(" ");
  const lines = [];
  let line = "";
  for (const w of words) {
    if ((line + " " + w).trim().length > width && line) { lines.push(line); line = w; } else line = (line + " " + w).trim();
  }
  if (line) lines.push(line);
  return lines.join("<br>");
}

/** Fill a footnote list with `[key, formula]` pairs (text only: no HTML from data): the first
 * `shown` stay visible, the rest fold under "n more formulas". */
export function footnote(el, pairs, extra = [], { shown = 2 } = {}) {
  if (!el) return;
  el.innerHTML = "";
  const rows = [...pairs, ...extra].filter(([, f]) => f);
  const item = ([k, f]) => {
    const li = document.createElement("li");
    if (k) {
      const code = document.createElement("code");
      code.textContent = k;
      li.append(code, " ");
    }
    li.append(f);
    return li;
  };
  rows.slice(0, shown).forEach((r) => el.append(item(r)));
  if (rows.length > shown) {
    const li = document.createElement("li");
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = `${rows.length - shown} more formula${rows.length - shown > 1 ? "s" : ""}`;
    const ul = document.createElement("ul");
    ul.className = "formulas nested";
    rows.slice(shown).forEach((r) => ul.append(item(r)));
    details.append(summary, ul);
    li.append(details);
    el.append(li);
  }
  el.hidden = rows.length === 0;
}

export const bytes = fmt.bytes;
export const count = fmt.count;
export const flops = fmt.flops;
