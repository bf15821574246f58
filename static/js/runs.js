// Run comparison controller: the curves of two to eight training jobs overlaid, one chart per
// metric, one colour per job. Each job's step/eval events come from the events API; a job still
// queued or running is polled with ?after=<last seq> so its curves keep growing. The URL holds
// the state: ?jobs=3,5&smooth=0.6&metrics=train_loss,val_loss&step=120
import { getJSON } from "./api.js";
import * as fmt from "./format.js";
import { baseLayout } from "./charts/series.js";
import { CONFIG } from "./charts/theme.js";

export const RUN_COLORS = ["#4f46e5", "#db2777", "#0d9488", "#d97706", "#0284c7", "#65a30d", "#9333ea", "#475569"];
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MS = 3000;
const PAGE = 5000;

// name -> [label, event kind, event field, which way is best (null: no best), formatter]
export const METRICS = {
  train_loss: ["train loss", "step", "loss", "min", fmt.loss],
  val_loss: ["val loss", "eval", "val_loss", "min", fmt.loss],
  accuracy: ["accuracy", "eval", "accuracy", "max", (x) => fmt.percent(x, 1)],
  tokens_per_s: ["tokens/s", "step", "tokens_per_s", "max", fmt.int],
  lr: ["learning rate", "step", "lr", null, fmt.lr],
};

// ------------------------------------------------------------------ pure maths
/** Exponential moving average with TensorBoard's debiasing, so the first points are not
 * pulled towards zero: s_t = a s_{t-1} + (1 - a) y_t, shown as s_t / (1 - a^t). */
export function ema(ys, a) {
  if (!a) return ys.slice();
  let s = 0;
  return ys.map((y, i) => { s = a * s + (1 - a) * y; return s / (1 - a ** (i + 1)); });
}

/** The best point of a series: {value, step} or null. */
export function best(xs, ys, dir) {
  if (!dir || !ys.length) return null;
  let j = 0;
  for (let i = 1; i < ys.length; i++) if (dir === "min" ? ys[i] < ys[j] : ys[i] > ys[j]) j = i;
  return { value: ys[j], step: xs[j] };
}

/** The last point at or before `step` (xs ascending): index or -1. */
export function indexAt(xs, step) {
  let lo = 0, hi = xs.length - 1, found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] <= step) { found = mid; lo = mid + 1; } else hi = mid - 1;
  }
  return found;
}

// ------------------------------------------------------------------ state <-> URL
const data = JSON.parse(document.getElementById("runs-data").textContent);
const query = new URLSearchParams(location.search);
const state = {
  smooth: Math.min(0.99, Math.max(0, Number(query.get("smooth") ?? 0.6) || 0)),
  metrics: (query.get("metrics") || Object.keys(METRICS).join(",")).split(",").filter((m) => m in METRICS),
  step: query.has("step") ? Number(query.get("step")) : null,  // null: follow the newest step
};
if (!state.metrics.length) state.metrics = Object.keys(METRICS);

function syncURL() {
  const q = new URLSearchParams();
  q.set("jobs", data.jobs.map((j) => j.id).join(","));
  q.set("smooth", state.smooth.toFixed(2));
  q.set("metrics", state.metrics.join(","));
  if (state.step !== null) q.set("step", String(state.step));
  const url = `${location.pathname}?${q.toString().replaceAll("%2C", ",")}`;
  if (url !== location.pathname + location.search) history.replaceState(null, "", url);
}

// ------------------------------------------------------------------ runs and their events
const runs = data.jobs.map((j, i) => ({ ...j, color: RUN_COLORS[i % RUN_COLORS.length], lastSeq: 0,
  series: Object.fromEntries(Object.keys(METRICS).map((m) => [m, { x: [], y: [] }])) })).filter((r) => r.found);

function applyEvent(run, e) {
  const d = e.data || {};
  if (e.kind === "status" && d.status) run.status = d.status;
  for (const [name, [, kind, field]] of Object.entries(METRICS)) {
    const y = d[field];
    if (e.kind !== kind || y === null || y === undefined || !Number.isFinite(y)) continue;
    const s = run.series[name];
    if (s.x.length && d.step <= s.x[s.x.length - 1]) continue;  // keep steps ascending
    s.x.push(d.step);
    s.y.push(y);
  }
  if (Number.isFinite(d.step)) run.step = Math.max(run.step || 0, d.step);
}

async function fetchNew(run) {
  for (;;) {
    const body = await getJSON(`/api/v1/jobs/${run.id}/events?${new URLSearchParams({ after: run.lastSeq, kind: "step,eval,status", limit: PAGE })}`);
    for (const e of body.events) { applyEvent(run, e); run.lastSeq = Math.max(run.lastSeq, e.seq); }
    if (body.events.length < PAGE) return;
  }
}

let timer = null;
/** Fetch what is new: every run the first time, then only those not yet finished. */
async function poll(first = false) {
  const due = first ? runs : runs.filter((r) => !TERMINAL.has(r.status));
  await Promise.all(due.map(async (r) => {
    try { await fetchNew(r); r.error = ""; } catch (err) { r.error = err.message; }
  }));
  render();
  const still = runs.filter((r) => !TERMINAL.has(r.status));
  setLive(still.length ? "open" : "done", still.length ? `following ${still.length} running` : "all finished");
  clearTimeout(timer);
  if (still.length) timer = setTimeout(poll, POLL_MS);
}

function setLive(kind, text) {
  const el = document.getElementById("runs-live");
  el.dataset.state = kind;
  el.textContent = text;
}

// ------------------------------------------------------------------ rendering
const $ = (id) => document.getElementById(id);
const charts = {};
let frame = null;

function render() {
  if (frame) return;
  frame = requestAnimationFrame(() => { frame = null; draw(); });
}

function maxStep() {
  return Math.max(0, ...runs.flatMap((r) => Object.values(r.series).map((s) => s.x[s.x.length - 1] ?? 0)));
}

function cursorStep() {
  const top = maxStep();
  return state.step === null ? top : Math.min(state.step, top);
}

function buildCharts() {
  const box = $("runs-charts");
  box.innerHTML = "";
  for (const name of state.metrics) {
    const fig = document.createElement("figure");
    fig.className = "report-fig";
    const cap = document.createElement("figcaption");
    cap.textContent = METRICS[name][0];
    const el = document.createElement("div");
    el.className = "chart runs-chart chart-empty";
    el.id = `runs-chart-${name}`;
    el.dataset.metric = name;
    el.textContent = window.Plotly ? "Waiting for data…" : "Charts are unavailable (plotly.js did not load).";
    fig.append(cap, el);
    box.append(fig);
    charts[name] = { el, drawn: false };
  }
  for (const name of Object.keys(charts)) if (!state.metrics.includes(name)) delete charts[name];
}

function drawChart(name) {
  const chart = charts[name];
  if (!window.Plotly || !chart) return;
  const [label] = METRICS[name];
  const traces = [];
  let points = 0;
  for (const r of runs) {
    const s = r.series[name];
    points += s.x.length;
    if (state.smooth > 0) {
      traces.push({ type: "scatter", mode: "lines", x: s.x.slice(), y: s.y.slice(), name: `${r.name} (raw)`, legendgroup: String(r.id),
        showlegend: false, hoverinfo: "skip", line: { color: r.color, width: 1 }, opacity: 0.22 });
    }
    traces.push({ type: "scatter", mode: s.x.length < 40 ? "lines+markers" : "lines", x: s.x.slice(), y: ema(s.y, state.smooth),
      name: r.name, legendgroup: String(r.id), line: { color: r.color, width: 2 }, marker: { size: 5 },
      hovertemplate: `%{y:.4g}<extra>${r.name.replace(/[<>]/g, "")}</extra>` });
  }
  chart.el.dataset.points = String(points);
  chart.el.dataset.traces = String(runs.filter((r) => r.series[name].x.length).length);
  if (!points) return;
  const step = cursorStep();
  const layout = baseLayout({
    margin: { l: 52, r: 12, t: 8, b: 34 },
    yaxis: { gridcolor: "#eef0f3", zerolinecolor: "#e3e6eb", linecolor: "#e3e6eb", automargin: true,
      title: { text: label, font: { size: 11 } },
      ...(name === "accuracy" ? { tickformat: ".0%", range: [0, 1.02] } : {}) },
    shapes: [{ type: "line", xref: "x", yref: "paper", x0: step, x1: step, y0: 0, y1: 1, line: { color: "#94a3b8", width: 1, dash: "dot" } }],
    uirevision: name,
  });
  if (!chart.drawn) {
    chart.el.classList.remove("chart-empty");
    chart.el.textContent = "";
    window.Plotly.newPlot(chart.el, traces, layout, CONFIG);
    chart.el.on("plotly_hover", (ev) => { const x = ev.points?.[0]?.x; if (Number.isFinite(x)) setCursor(x); });
    chart.drawn = true;
  } else {
    window.Plotly.react(chart.el, traces, layout, CONFIG);
  }
}

function cell(tag, text, cls) {
  const el = document.createElement(tag);
  if (text !== undefined) el.textContent = text;
  if (cls) el.className = cls;
  return el;
}

function runHead(r) {
  const th = cell("th");
  const sw = cell("i", undefined, "swatch");
  sw.style.background = r.color;
  const a = document.createElement("a");
  a.href = r.url;
  a.textContent = r.name;
  th.append(sw, a);
  return th;
}

function tableHead(table, first) {
  const tr = document.createElement("tr");
  tr.append(cell("th", first));
  for (const name of state.metrics) tr.append(cell("th", METRICS[name][0], "num"));
  table.tHead.replaceChildren(tr);
}

function drawTables() {
  const step = cursorStep();
  const top = maxStep();
  const slider = $("runs-cursor");
  slider.max = String(top);
  slider.value = String(step);
  $("runs-cursor-out").textContent = fmt.int(step);
  $("runs-cursor-note").textContent = "the last logged value at or before it · hover a chart to move it";

  const at = $("runs-at-step");
  tableHead(at, "run");
  at.tBodies[0].replaceChildren(...runs.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.jobId = r.id;
    tr.append(runHead(r));
    for (const name of state.metrics) {
      const s = r.series[name];
      const i = indexAt(s.x, step);
      const smooth = i >= 0 && state.smooth > 0 ? ema(s.y.slice(0, i + 1), state.smooth)[i] : null;
      const format = METRICS[name][4];
      const td = cell("td", i >= 0 ? format(s.y[i]) : "—", "num tabular");
      td.dataset.metric = name;
      if (i >= 0) {
        td.title = `logged at step ${s.x[i]}`;
        if (smooth !== null) td.append(cell("div", `smoothed ${format(smooth)}`, "sub"));
      }
      tr.append(td);
    }
    return tr;
  }));

  const bestTable = $("runs-best");
  tableHead(bestTable, "run");
  const winners = {};
  for (const name of state.metrics) {
    const dir = METRICS[name][3];
    const bests = runs.map((r) => best(r.series[name].x, r.series[name].y, dir));
    const vals = bests.filter(Boolean).map((b) => b.value);
    // a star for the best run, unless every run reached the same value
    winners[name] = vals.length > 1 && new Set(vals).size > 1 ? (dir === "min" ? Math.min(...vals) : Math.max(...vals)) : null;
  }
  bestTable.tBodies[0].replaceChildren(...runs.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.jobId = r.id;
    tr.append(runHead(r));
    for (const name of state.metrics) {
      const [, , , dir, format] = METRICS[name];
      const s = r.series[name];
      const b = best(s.x, s.y, dir);
      const td = cell("td", undefined, "num tabular");
      td.dataset.metric = name;
      if (b) {
        td.append(cell("b", format(b.value)), cell("span", ` @ ${fmt.int(b.step)}`, "muted small"));
        td.dataset.best = String(b.value);
        td.dataset.bestStep = String(b.step);
        if (winners[name] === b.value) td.classList.add("winner");
      }
      const last = s.y.length ? s.y[s.y.length - 1] : null;
      td.append(cell("div", last === null ? "—" : `last ${format(last)}`, "sub"));
      tr.append(td);
    }
    return tr;
  }));
}

function drawState() {
  const failed = runs.filter((r) => r.error);
  const text = failed.length
    ? `could not load ${failed.map((r) => `#${r.id}`).join(", ")}: ${failed[0].error}`
    : `${runs.length} run${runs.length === 1 ? "" : "s"} · up to step ${fmt.int(maxStep())}`;
  $("runs-state").textContent = text;
  for (const r of runs) {
    const chip = document.querySelector(`.run-chip[data-job-id="${r.id}"]`);
    if (!chip) continue;
    const badge = chip.querySelector('[data-role="status"]');
    badge.className = `badge status-${r.status}`;
    badge.textContent = r.status;
    chip.querySelector('[data-role="steps"]').textContent = `#${r.id} · ${fmt.int(r.step)} / ${fmt.int(r.total_steps)}`;
  }
}

function draw() {
  for (const name of state.metrics) drawChart(name);
  drawTables();
  drawState();
}

function setCursor(step) {
  state.step = Math.round(step) >= maxStep() ? null : Math.round(step);
  syncURL();
  drawTables();
  for (const name of state.metrics) {
    const c = charts[name];
    const x = cursorStep();
    if (c?.drawn) window.Plotly.relayout(c.el, { "shapes[0].x0": x, "shapes[0].x1": x });
  }
}

// ------------------------------------------------------------------ config diff (compare.js's look)
const NA = "\u0000n/a";

function show(v) {
  if (v === null || v === undefined) return "auto";
  if (typeof v === "number") return Number.isInteger(v) ? fmt.int(v) : String(v);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function renderDiff() {
  const table = $("diff-table");
  const all = $("diff-all").checked;
  const head = document.createElement("tr");
  head.append(cell("th", "field"));
  runs.forEach((r) => {
    const th = cell("th");
    const sw = cell("i", undefined, "swatch");
    sw.style.background = r.color;
    th.append(sw, `#${r.id}`);
    th.title = r.name;
    head.append(th);
  });
  table.tHead.replaceChildren(head);
  const body = table.tBodies[0];
  body.innerHTML = "";
  const keys = [...new Set(runs.flatMap((r) => Object.keys(r.config)))];
  const applies = runs.map((r) => new Set(r.applies));
  let differing = 0;
  for (const key of keys) {
    // a value its other settings make irrelevant (a window without sliding attention) is "n/a"
    const values = runs.map((r, i) => (applies[i].has(key) ? r.config[key] : NA));
    const differs = values.some((v) => JSON.stringify(v) !== JSON.stringify(values[0]));
    if (differs) differing++;
    if (!differs && !all) continue;
    const tr = document.createElement("tr");
    tr.dataset.field = key;
    if (differs) tr.className = "differs";
    tr.append(cell("th", key));
    for (const v of values) tr.append(cell("td", v === NA ? "n/a" : show(v), v === NA ? "muted" : undefined));
    body.append(tr);
  }
  if (!differing && !all) {
    const td = cell("td", runs.length > 1 ? "The settings are identical." : "Nothing to compare.", "muted");
    td.colSpan = runs.length + 1;
    const tr = document.createElement("tr");
    tr.append(td);
    body.append(tr);
  }
  table.dataset.differing = String(differing);
}

// ------------------------------------------------------------------ controls
function buildMetricToggles() {
  const box = $("runs-metrics");
  for (const [name, [label]] of Object.entries(METRICS)) {
    const lab = document.createElement("label");
    const box2 = document.createElement("input");
    box2.type = "checkbox";
    box2.value = name;
    box2.checked = state.metrics.includes(name);
    box2.addEventListener("change", () => {
      const chosen = [...box.querySelectorAll("input:checked")].map((i) => i.value);
      if (!chosen.length) { box2.checked = true; return; }
      state.metrics = Object.keys(METRICS).filter((m) => chosen.includes(m));
      syncURL();
      buildCharts();
      draw();
    });
    lab.append(box2, ` ${label}`);
    box.append(lab);
  }
}

document.querySelectorAll(".run-chip").forEach((chip) => {
  const run = runs.find((r) => String(r.id) === chip.dataset.jobId);
  const i = data.jobs.findIndex((j) => String(j.id) === chip.dataset.jobId);
  chip.querySelector(".swatch").style.background = run ? run.color : "transparent";
  if (!run && i >= 0) chip.querySelector(".swatch").style.borderColor = "var(--border-strong)";
});

const smoothing = $("runs-smoothing");
smoothing.value = String(state.smooth);
$("runs-smoothing-out").textContent = state.smooth.toFixed(2);
smoothing.addEventListener("input", () => {
  state.smooth = Number(smoothing.value);
  $("runs-smoothing-out").textContent = state.smooth.toFixed(2);
  syncURL();
  render();
});
$("runs-cursor").addEventListener("input", (e) => setCursor(Number(e.target.value)));
$("diff-all").addEventListener("change", renderDiff);
$("runs-copy-link").addEventListener("click", async (e) => {
  const btn = e.currentTarget;
  try { await navigator.clipboard.writeText(location.href); btn.textContent = "Copied ✓"; } catch { btn.textContent = "Copy the address bar"; }
  setTimeout(() => { btn.textContent = "Copy link"; }, 1500);
});

syncURL();
buildMetricToggles();
buildCharts();
renderDiff();
if (runs.length) {
  setLive("connecting", "loading…");
  // plotly.js is loaded with `defer`, which runs before module scripts: it is there by now.
  poll(true);
} else {
  $("runs-state").textContent = "no run to show";
}
window.runsPage = { runs, state };
