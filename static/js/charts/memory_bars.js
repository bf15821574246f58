// Memory, stacked: training (weights, gradients, optimizer state, activations; per GPU too when
// sharded over several) and inference (weights, KV cache, activations), in the binary unit that suits the largest bar, with the chosen
// device's memory as a dashed line. Several models: one group of bars per model.
import { MEMORY_COLORS, bytes, layout, plot, wrap } from "./analysis_common.js";

const COMPONENTS = [
  ["weights", "weights"], ["gradients", "gradients"], ["optimizer", "optimizer state"],
  ["activations", "activations"], ["kv_cache", "KV cache"],
];

/** Inference memory: the engine's breakdown when it gives one, else the fit table's (weights, KV cache). */
export function inferenceMemory(report) {
  const inf = report.memory?.inference;
  if (inf) return inf;
  const row = report.fit || (report.fit_table || []).find((r) => r.inference);
  if (!row) return null;
  return { weights: row.inference.weights, kv_cache: row.inference.kv_cache, activations: 0, total: row.inference.memory_needed };
}

/** The bars of one report: [{bar, parts: {weights: bytes, ...}}]. */
export function memoryBars(report) {
  const m = report.memory || {};
  const bars = [{ bar: "Training", parts: { weights: m.weights, gradients: m.gradients, optimizer: m.optimizer, activations: m.activations } }];
  const perGpu = m.train_per_gpu;
  const nGpus = report.settings?.n_gpus || 1;
  if (perGpu && nGpus > 1) {
    bars.push({ bar: `Training / GPU (×${nGpus})`, parts: { weights: perGpu.weights, gradients: perGpu.gradients, optimizer: perGpu.optimizer, activations: perGpu.activations } });
  }
  const inf = inferenceMemory(report);
  if (inf) bars.push({ bar: "Inference", parts: { weights: inf.weights, kv_cache: inf.kv_cache, activations: inf.activations || 0 } });
  return bars;
}

const UNITS = [["KiB", 2 ** 10], ["MiB", 2 ** 20], ["GiB", 2 ** 30], ["TiB", 2 ** 40], ["PiB", 2 ** 50]];

/** The binary unit that keeps the largest value between 1 and 1024 (at least KiB). */
function unitFor(maxBytes) {
  let best = UNITS[0];
  for (const u of UNITS) if (maxBytes >= u[1]) best = u;
  return best;
}

/** models: [{label, report}]; deviceMemory: bytes of the chosen device (all GPUs), perGpuMemory
 * one GPU's (drawn too when several share the model), or null. */
export function renderMemory(el, models, { deviceMemory = null, perGpuMemory = null, deviceName = "" } = {}) {
  const single = models.length === 1;
  const cats = [];   // [model label, bar] pairs
  const values = {}; // component -> [bytes per category]
  const hovers = {};
  for (const [k] of COMPONENTS) { values[k] = []; hovers[k] = []; }
  for (const m of models) {
    for (const b of memoryBars(m.report)) {
      cats.push([m.label, b.bar]);
      for (const [k] of COMPONENTS) {
        values[k].push(b.parts[k] ?? null);
        const key = b.bar === "Inference" ? `memory.inference.${k}` : b.bar.startsWith("Training /") ? `memory.train_per_gpu.${k}` : `memory.${k}`;
        hovers[k].push(`${bytes(b.parts[k])}<br>${wrap(m.report.formulas?.[key] || m.report.formulas?.[`memory.${k}`] || "")}`);
      }
    }
  }
  const totals = cats.map((_, i) => COMPONENTS.reduce((s, [k]) => s + (values[k][i] || 0), 0));
  const [unit, scale] = unitFor(Math.max(...totals, deviceMemory || 0));
  const x = single ? cats.map((c) => c[1]) : [cats.map((c) => c[0]), cats.map((c) => c[1])];
  const data = COMPONENTS.filter(([k]) => values[k].some((v) => v)).map(([k, label]) => ({
    type: "bar", name: label, x, y: values[k].map((v) => (v == null ? null : v / scale)),
    marker: { color: MEMORY_COLORS[k] }, customdata: hovers[k],
    hovertemplate: `%{x}<br><b>${label}</b>: %{customdata}<extra></extra>`,
  }));
  data.push({
    type: "scatter", mode: "text", x, y: totals.map((t) => t / scale), text: totals.map((t) => bytes(t)),
    textposition: "top center", textfont: { size: 10, color: "#1c2230" }, showlegend: false, hoverinfo: "skip", cliponaxis: false,
  });
  const shapes = [];
  const annotations = [];
  const deviceLine = (bytesAt, text, dash, x, yanchor = "middle") => {
    shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, y0: bytesAt / scale, y1: bytesAt / scale,
                  line: { color: "#c62828", width: 1.5, dash } });
    annotations.push({ xref: "paper", x, xanchor: "center", y: bytesAt / scale, yanchor, showarrow: false,
                       text, font: { size: 10, color: "#c62828" }, bgcolor: "rgba(255,255,255,0.9)", borderpad: 2 });
  };
  // two lines (all GPUs, one GPU) may sit close: one label above its line, the other below
  if (deviceMemory) deviceLine(deviceMemory, `${deviceName}: ${bytes(deviceMemory)}${perGpuMemory ? " in all" : ""}`, "dash", 0.5, perGpuMemory ? "bottom" : "middle");
  if (perGpuMemory) deviceLine(perGpuMemory, `${bytes(perGpuMemory)} per GPU`, "dot", 0.5, "top");
  const top = Math.max(...totals, deviceMemory || 0) / scale;
  plot(el, data, layout({
    barmode: "stack", bargap: 0.35, shapes, annotations,
    margin: { l: 56, r: 12, t: 18, b: single ? 40 : 56 },
    yaxis: { title: { text: unit, font: { size: 11 } }, range: [0, top * 1.15 || 1] },
    legend: { orientation: "h", x: 0, y: single ? -0.16 : -0.26, font: { size: 11 } },
  }));
  el.dataset.unit = unit;
}
