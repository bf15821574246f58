// A serving load test's page: a progress bar with ETA, and each "load_point" (one arrival rate
// under one batching policy) as it comes over the job's websocket: output tokens/s, TTFT and TPOT
// (p50 solid, p99 dashed) against the offered rate, continuous and static batching on the same
// charts, and a table of every point. The log is replayed from the start on each connect.
import { AXIS, COLORS, CONFIG, THEME } from "./charts/theme.js";
import { followJob, renderHead, wireCancel } from "./components/job_page.js";
import { KIND } from "./events.js";
import * as fmt from "./format.js";

const POLICY_COLOR = { continuous: COLORS.accent, static: COLORS.amber };
const $ = (id) => document.getElementById(id);
let job = JSON.parse($("job-data").textContent);
let fraction = (job.step || 0) / 100;
let eta = null;
let detail = null;
let redraw = false; // a point came since the charts were drawn
const points = []; // load_point events' data, in order

const ms = (s) => (s == null ? "–" : s < 1 ? `${(s * 1000).toFixed(s < 0.1 ? 1 : 0)} ms` : `${s.toFixed(2)} s`);

function layout(yTitle) {
  return {
    ...THEME, margin: { l: 52, r: 12, t: 8, b: 40 }, hovermode: "x unified",
    showlegend: true, legend: { orientation: "h", x: 0, y: 1.14, font: { size: 11 } },
    xaxis: { ...AXIS, title: { text: "offered rate (requests/s)", font: { size: 11 } }, rangemode: "tozero" },
    yaxis: { ...AXIS, title: { text: yTitle, font: { size: 11 } }, rangemode: "tozero" },
  };
}

function byPolicy() {
  const out = {};
  for (const p of points) (out[p.policy] ||= []).push(p);
  for (const list of Object.values(out)) list.sort((a, b) => a.rate - b.rate);
  return out;
}

function line(name, list, y, color, dash, unit) {
  return {
    name, x: list.map((p) => p.rate), y: list.map(y), type: "scatter", mode: "lines+markers",
    line: { color, width: 2, dash }, marker: { size: 7, color },
    hovertemplate: `%{y:.3~f}${unit}<extra>${name}</extra>`,
  };
}

function drawCharts() {
  if (!window.Plotly) return;
  const groups = byPolicy();
  const throughput = [];
  const ttft = [];
  const tpot = [];
  for (const [policy, list] of Object.entries(groups)) {
    const c = POLICY_COLOR[policy];
    throughput.push(line(policy, list, (p) => p.summary.output_tokens_per_s, c, "solid", " tokens/s"));
    ttft.push(line(`${policy} p50`, list, (p) => p.summary.ttft_s.p50, c, "solid", " s"));
    ttft.push(line(`${policy} p99`, list, (p) => p.summary.ttft_s.p99, c, "dash", " s"));
    tpot.push(line(`${policy} p50`, list, (p) => (p.summary.tpot_s.p50 ?? 0) * 1000, c, "solid", " ms"));
    tpot.push(line(`${policy} p99`, list, (p) => (p.summary.tpot_s.p99 ?? 0) * 1000, c, "dash", " ms"));
  }
  Plotly.react($("chart-throughput"), throughput, layout("output tokens/s"), CONFIG);
  Plotly.react($("chart-ttft"), ttft, layout("seconds"), CONFIG);
  Plotly.react($("chart-tpot"), tpot, layout("ms per token"), CONFIG);
}

function cell(text, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  td.textContent = text;
  return td;
}

function drawTable() {
  const rows = points.map((p) => {
    const s = p.summary;
    const tr = document.createElement("tr");
    tr.dataset.policy = p.policy;
    const name = cell("");
    const dot = document.createElement("span");
    dot.className = "policy-dot";
    dot.style.background = POLICY_COLOR[p.policy];
    name.append(dot, p.policy);
    tr.append(name, cell(p.rate.toString(), "num"), cell(`${s.completed} / ${s.requests}`, "num"),
      cell(fmt.int(s.refused), "num"), cell(s.output_tokens_per_s.toFixed(1), "num"),
      cell(`${ms(s.ttft_s.p50)} / ${ms(s.ttft_s.p99)}`, "num"), cell(`${ms(s.tpot_s.p50)} / ${ms(s.tpot_s.p99)}`, "num"),
      cell(ms(s.e2e_s.p99), "num"));
    return tr;
  });
  $("points-body").replaceChildren(...rows);
  $("points-empty").hidden = points.length > 0;
}

function render() {
  const status = job.status;
  renderHead(job);
  if (redraw) {
    redraw = false;
    drawCharts();
    drawTable();
  }
  $("prog-bar").className = `progress lg status-${status}`;
  const shown = status === "succeeded" ? 1 : fraction;
  $("prog-bar").firstElementChild.style.width = `${shown * 100}%`;
  $("prog-pct").textContent = fmt.percent(shown);
  $("prog-eta").textContent = status === "running" ? (eta != null ? `ETA ${fmt.duration(eta)}` : "starting…") : status;
  if (detail && status === "running") $("prog-detail").textContent = `Measuring ${detail}`;
}

function apply(e) {
  const d = e.data || {};
  if (e.kind === KIND.progress) {
    fraction = d.fraction ?? fraction;
    eta = d.eta ?? null;
    detail = d.detail || detail;
  } else if (e.kind === KIND.load_point) {
    points.push(d);
    redraw = true;
  } else if (e.kind === KIND.status) {
    job.status = d.status;
    if (d.error) job.error = d.error;
  }
}

function start() {
  const update = (fields) => { job = { ...job, ...fields }; render(); };
  wireCancel(job.id, update);
  followJob(job.id, { onEvent: apply, onJob: update, onBatch: render });
  redraw = true;
  render();
}

if (window.Plotly) start();
else window.addEventListener("load", start);
