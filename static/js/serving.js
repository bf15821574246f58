// Serving page controller: every served model's live figures from /api/v1/serving, polled every
// second (a serving process publishes them twice a second): batch occupancy, KV blocks, queue,
// tokens/s and 429s as tiles; throughput and batch over the last two minutes; TTFT and TPOT
// histograms of its last finished requests.
import { ApiError, getJSON, postJSON } from "./api.js";
import { AXIS, COLORS, CONFIG, THEME } from "./charts/theme.js";
import * as fmt from "./format.js";

const POLL_MS = 1000;
const HISTORY_POINTS = 120;
const root = document.getElementById("models");
const empty = document.getElementById("serving-empty");
const template = document.getElementById("model-template");
const live = document.getElementById("live");
const cards = new Map(); // model -> {node, history}

const role = (node, name) => node.querySelector(`[data-role="${name}"]`);
const ms = (s) => (s == null ? "–" : s < 1 ? `${(s * 1000).toFixed(s < 0.1 ? 1 : 0)} ms` : `${s.toFixed(2)} s`);

function layout(extra) {
  return { ...THEME, margin: { l: 44, r: 44, t: 6, b: 34 }, showlegend: false, ...extra };
}

function card(model) {
  let entry = cards.get(model);
  if (!entry) {
    const node = template.content.firstElementChild.cloneNode(true);
    node.dataset.model = model;
    wireLoadTest(role(node, "loadtest"), model);
    root.append(node);
    entry = { node, history: { t: [], tps: [], running: [] } };
    cards.set(model, entry);
  }
  return entry;
}

// The load-test form: a job (POST /api/v1/serving/loadtest) whose page charts each point.
function wireLoadTest(form, model) {
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    for (const el of form.querySelectorAll("[data-error]")) el.textContent = "";
    const button = role(form, "loadtest-submit");
    button.disabled = true;
    const data = new FormData(form);
    try {
      const job = await postJSON("/api/v1/serving/loadtest", {
        model, rates: data.get("rates"), requests: Number(data.get("requests")),
        max_tokens: Number(data.get("max_tokens")), policies: data.getAll("policies"),
      });
      window.location.href = job.url;
    } catch (err) {
      button.disabled = false;
      const errors = (err instanceof ApiError && err.body?.errors) || { other: err.message };
      for (const [field, message] of Object.entries(errors)) {
        const slot = form.querySelector(`[data-error="${field}"]`) || form.querySelector('[data-error="other"]');
        slot.textContent = message;
      }
    }
  });
}

function setBar(span, frac) {
  const f = Math.max(0, Math.min(1, frac || 0));
  span.style.width = `${(f * 100).toFixed(1)}%`;
  span.parentElement.classList.toggle("warn", f >= 0.7 && f < 0.9);
  span.parentElement.classList.toggle("hot", f >= 0.9);
}

function histogram(el, values, unit, color) {
  if (!window.Plotly) return;
  const data = values.map((v) => v * 1000);
  const trace = { type: "histogram", x: data, marker: { color }, nbinsx: 30, hovertemplate: `%{x} ${unit}: %{y}<extra></extra>` };
  Plotly.react(el, [trace], layout({
    bargap: 0.06,
    xaxis: { ...AXIS, title: { text: unit, font: { size: 11 } } },
    yaxis: { ...AXIS, title: { text: "requests", font: { size: 11 } }, rangemode: "tozero", ...(data.length <= 12 ? { dtick: 1 } : {}) },
    annotations: data.length ? [] : [{ text: "No finished request yet", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5, font: { color: "#8a93a3" } }],
  }), CONFIG);
}

function timeline(el, h, maxBatch) {
  if (!window.Plotly) return;
  // new arrays each time: Plotly.react redraws only data it sees change by reference
  const traces = [
    { x: [...h.t], y: [...h.tps], name: "tokens/s", type: "scatter", mode: "lines", line: { color: COLORS.teal, width: 1.6 }, fill: "tozeroy", fillcolor: "rgba(13,148,136,0.08)", hovertemplate: "%{y:.1f} tokens/s<extra></extra>" },
    { x: [...h.t], y: [...h.running], name: "in the batch", type: "scatter", mode: "lines", yaxis: "y2", line: { color: COLORS.accent, width: 1.4, shape: "hv" }, hovertemplate: "%{y} in the batch<extra></extra>" },
  ];
  Plotly.react(el, traces, layout({
    showlegend: true, legend: { orientation: "h", x: 0, y: 1.12, font: { size: 11 } }, margin: { l: 44, r: 44, t: 22, b: 34 },
    hovermode: "x unified",
    xaxis: { ...AXIS, type: "date", tickformat: "%H:%M:%S" },
    yaxis: { ...AXIS, title: { text: "tokens/s", font: { size: 11 } }, rangemode: "tozero" },
    yaxis2: { ...AXIS, overlaying: "y", side: "right", range: [0, Math.max(1, maxBatch)], dtick: Math.max(1, Math.ceil(maxBatch / 4)), title: { text: "sequences", font: { size: 11 } }, showgrid: false },
  }), CONFIG);
}

function render(m) {
  const { node, history } = card(m.model);
  role(node, "name").textContent = m.model;
  role(node, "where").textContent = `${m.title && m.title !== m.model ? `${m.title} · ` : ""}${m.host} · pid ${m.pid} · up ${fmt.duration(m.at - m.started_at)} · context ${fmt.int(m.context)} tokens · ${fmt.int(m.totals.requests)} requests, ${fmt.int(m.totals.tokens)} tokens served`;
  const policy = role(node, "policy");
  policy.textContent = m.policy === "static" ? "static batching" : "continuous batching";
  policy.className = `badge ${m.policy === "static" ? "policy-static" : "policy-continuous"}`;
  role(node, "batch").textContent = `${m.running} / ${m.max_batch}`;
  setBar(role(node, "batch-bar"), m.running / m.max_batch);
  role(node, "batch-sub").textContent = `${m.live_requests} request${m.live_requests === 1 ? "" : "s"} open`;
  role(node, "blocks").textContent = `${fmt.int(m.blocks_used)} / ${fmt.int(m.blocks_total)}`;
  setBar(role(node, "blocks-bar"), m.blocks_used / m.blocks_total);
  const waste = m.kv_bytes_used ? m.kv_bytes_reserved / m.kv_bytes_used : null;
  role(node, "blocks-sub").textContent = `${m.block_size} positions each · ${fmt.bytes(m.kv_bytes_used)} used of ${fmt.bytes(m.kv_bytes_reserved)} held${waste ? ` (${waste.toFixed(2)}×)` : ""}`;
  role(node, "waiting").textContent = fmt.int(m.waiting);
  role(node, "waiting-sub").textContent = `at most ${fmt.int(m.max_queued)} wait beyond the batch · ${fmt.int(m.waiting_tokens)} tokens`;
  role(node, "tps").textContent = m.tokens_per_s.toFixed(1);
  role(node, "tps-sub").textContent = `TTFT p50 ${ms(m.ttft_p50_s)}, p99 ${ms(m.ttft_p99_s)} · TPOT p50 ${ms(m.tpot_p50_s)}`;
  role(node, "refused").textContent = fmt.int(m.refusals.last_minute);
  role(node, "refused-sub").textContent = `${fmt.int(m.totals.aborted)} aborted by their client · ${fmt.int(m.totals.timed_out)} timed out`;

  const h = history;
  h.t.push(new Date(m.at * 1000));
  h.tps.push(m.tokens_per_s);
  h.running.push(m.running);
  for (const key of ["t", "tps", "running"]) h[key].splice(0, Math.max(0, h[key].length - HISTORY_POINTS));
  timeline(role(node, "timeline"), h, m.max_batch);
  histogram(role(node, "ttft"), m.ttft_s, "ms", COLORS.accent);
  histogram(role(node, "tpot"), m.tpot_s, "ms", COLORS.amber);
}

function draw(data) {
  const names = new Set(data.models.map((m) => m.model));
  for (const [model, { node }] of cards) {
    if (!names.has(model)) {
      node.remove();
      cards.delete(model);
    }
  }
  data.models.forEach(render);
  empty.hidden = data.models.length > 0;
  root.dataset.ready = "1";
}

async function poll() {
  try {
    draw(await getJSON("/api/v1/serving"));
    live.dataset.state = "open";
  } catch (err) {
    live.dataset.state = "closed";
    console.error(err);
  }
  setTimeout(poll, POLL_MS);
}

function start() {
  draw(JSON.parse(document.getElementById("serving-initial").textContent));
  setTimeout(poll, POLL_MS);
}

if (window.Plotly) start();
else window.addEventListener("load", start);
