// Job page controller: replays the job's event log over a websocket, then follows it live.
// Events are numbered; `lastSeq` is the highest one applied, so a reconnect resumes with
// `?after=lastSeq` and nothing is drawn twice.
import { api, ApiError, getJSON, LiveSocket } from "./api.js";
import { refreshTimes } from "./app.js";
import { LossChart } from "./charts/loss.js";
import { LrChart } from "./charts/lr.js";
import { ExpertLoadChart, ExpertLoadTimeChart } from "./charts/expert_load.js";
import { TokenRoutingView } from "./charts/moe_routing.js";
import { RouterChart } from "./charts/router.js";
import { ThroughputChart } from "./charts/throughput.js";
import { AttentionPanel } from "./charts/attention.js";
import { GradNormChart, UpdateRatioChart, renderLayerTable } from "./charts/health.js";
import { LogpChart, RewardChart } from "./charts/preference.js";
import { KIND } from "./events.js";
import * as fmt from "./format.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const ACTIVE = new Set(["queued", "running"]);
const MAX_SAMPLES_SHOWN = 100;
const KEPT_CHECKPOINTS = 3;

const $ = (id) => document.getElementById(id);
let job = JSON.parse($("job-data").textContent);

const lossChart = new LossChart($("loss-chart"));
const lrChart = new LrChart($("lr-chart"));
const tpsChart = new ThroughputChart($("tps-chart"));
const expertChart = new ExpertLoadChart($("moe-heatmap"));
const routerChart = new RouterChart($("moe-router-chart"));
const expertTimeChart = new ExpertLoadTimeChart($("moe-time-chart"));
const routing = new TokenRoutingView($("moe-routing"));
let lastMoe = null;
const gradChart = new GradNormChart($("grad-chart"), { clip: Number(job.spec?.train?.grad_clip) || 0 });
const updateChart = new UpdateRatioChart($("update-chart"));
// DPO jobs only: the card exists when the job's objective is "dpo"
const rewardChart = $("dpo-card") ? new RewardChart($("reward-chart")) : null;
const logpChart = $("dpo-card") ? new LogpChart($("logp-chart")) : null;
let lastReward = null;
let lastHealth = null;
const healthEvents = [];  // loss spikes and non-finite steps, oldest first
const MAX_HEALTH_EVENTS_SHOWN = 200;

// Attention maps are large: the websocket's replay leaves them out (?omit=attention) and the
// panel fetches an index of them, then only the map it shows; new ones arrive live whole.
const eventsURL = (params) => `/api/v1/jobs/${job.id}/events?${new URLSearchParams(params)}`;
const attention = new AttentionPanel($("attention-card"), {
  async fetchEvent(seq) {
    const body = await getJSON(eventsURL({ after: seq - 1, limit: 1 }));
    return body.events[0]?.data;
  },
  // a long input's detail on zoom, recomputed by the server from the job's checkpoint
  fetchRegion: (params, { signal }) =>
    getJSON(`/api/v1/jobs/${job.id}/attention/region?${new URLSearchParams(params)}`, { signal }),
});
async function loadAttentionIndex() {
  try {
    const body = await getJSON(eventsURL({ kind: KIND.attention, brief: true, limit: 20000 }));
    attention.addIndex(body.events.map((e) => ({ seq: e.seq, step: e.data.step })));
  } catch (err) {
    console.warn("could not load the attention maps", err);
  }
}

let lastSeq = 0;
// The header shows the latest snapshot; a replayed status event older than it is history.
let snapshotSeq = job.last_seq || 0;
let finished = false;   // a terminal status event has been applied: nothing more will come
const metrics = { ...job.summary, step: job.step, total_steps: job.total_steps, params: job.params };
let endInfo = null;
const samples = [];

// ------------------------------------------------------------------ header
function setStatus(status) {
  job.status = status;
  const badge = $("job-status");
  badge.className = `badge status-${status}`;
  badge.dataset.status = status;
  badge.textContent = status;
  $("prog-bar").className = `progress lg status-${status}`;
  $("cancel-form").hidden = !ACTIVE.has(status);
  $("queue-note").hidden = status !== "queued";
  $("error-box").hidden = status !== "failed";
  const retry = $("retry-form");
  if (retry) retry.hidden = !(status === "failed" || status === "cancelled");
}

function renderReward() {
  if (!lastReward) return;
  const parts = [];
  const { train, val } = lastReward;
  if (train) parts.push(`step ${fmt.int(train.step)}: margin ${train.reward_margin?.toFixed(3)}, accuracy ${fmt.percent(train.reward_accuracy)}`);
  if (val) parts.push(`held out (step ${fmt.int(val.step)}): margin ${val.reward_margin?.toFixed(3)}, accuracy ${fmt.percent(val.reward_accuracy)}`);
  $("dpo-summary").textContent = parts.join(" · ");
}

// ------------------------------------------------------------------ checkpoints and retries
// A retry resumes at its status event's `resume_from_step`: the earlier attempt's events past
// that step were trained again, so they are left out. [{seq, step}], from the event log.
const retries = [];
function supersededBy(e) {
  const step = e.data?.step;
  if (step == null || e.kind === KIND.status || e.kind === KIND.checkpoint) return false;
  return retries.some((r) => e.seq < r.seq && step > r.step);
}
async function loadRetries() {
  try {
    const body = await getJSON(eventsURL({ kind: KIND.status, limit: 20000 }));
    for (const e of body.events) {
      if (e.data.attempt > 1) retries.push({ seq: e.seq, step: e.data.resume_from_step || 0 });
    }
  } catch (err) {
    console.warn("could not load the job's attempts", err);
  }
}

function addCheckpoint(d, ts) {
  const body = $("checkpoints-table").tBodies[0];
  body.querySelector(`tr[data-step="${d.step}"]`)?.remove();
  const base = `/api/v1/jobs/${job.id}/checkpoints/${d.step}`;
  const row = document.createElement("tr");
  row.dataset.step = d.step;
  row.innerHTML = `<td class="tabular"></td><td class="num tabular"></td><td></td>
    <td class="right"><a class="btn sm" download>safetensors</a> <a class="btn sm" download title="A transformers model directory (config.json + model.safetensors), zipped">transformers</a></td>`;
  row.cells[0].textContent = fmt.int(d.step);
  row.cells[1].textContent = fmt.bytes(d.bytes);
  const when = document.createElement("time");
  when.dataset.local = "";
  when.setAttribute("datetime", new Date(ts * 1000).toISOString());
  row.cells[2].append(when);
  const [dl, hf] = row.querySelectorAll("a");
  dl.href = `${base}/download`;
  hf.href = `${base}/transformers`;
  body.append(row);
  const rows = [...body.rows].sort((a, b) => Number(a.dataset.step) - Number(b.dataset.step));
  rows.forEach((r) => body.append(r));
  // the engine keeps the newest KEPT_CHECKPOINTS (engine.checkpoint.save_checkpoint's keep)
  while (body.rows.length > KEPT_CHECKPOINTS) body.rows[0].remove();
  $("checkpoints-table").hidden = false;
  $("checkpoints-empty").hidden = true;
  $("checkpoints-count").textContent = `${body.rows.length} saved`;
  $("finetune-link").hidden = false;
  refreshTimes(row);
}

function setMeta(key, value, iso = false) {
  const wrap = $(`meta-${key}`);
  const el = wrap.querySelector(`[data-meta="${key}"]`);
  wrap.hidden = !value;
  if (!value) return;
  if (iso) el.setAttribute("datetime", value);
  else el.textContent = value;
}

/** A status snapshot of the whole job (sent on connect and after each status change). */
function applyJob(snapshot) {
  job = { ...job, ...snapshot };
  snapshotSeq = Math.max(snapshotSeq, job.last_seq || 0);
  setStatus(job.status);
  setMeta("worker", job.worker);
  setMeta("device", job.device);
  setMeta("started", job.started_at, true);
  setMeta("finished", job.finished_at, true);
  refreshTimes($("meta-started").parentElement);
  $("queue-note").textContent = job.position
    ? `Waiting — #${job.position} in the ${job.queue} queue`
    : `Waiting — in the ${job.queue} queue`;
  if (job.error) $("error-text").textContent = job.error;
  const btn = $("cancel-btn");
  btn.disabled = job.cancel_requested;
  btn.textContent = job.cancel_requested ? "Cancelling…" : "Cancel job";
  Object.assign(metrics, job.summary || {});
  metrics.step = Math.max(metrics.step || 0, job.step || 0);
  if (job.total_steps) metrics.total_steps = job.total_steps;
  if (job.params) metrics.params = job.params;
  renderProgress();
}

// ------------------------------------------------------------------ events
function applyEvent(e) {
  const d = e.data || {};
  switch (e.kind) {
    case KIND.status:
      if (e.seq > snapshotSeq) {
        setStatus(d.status);
        if (d.error) $("error-text").textContent = d.error;
        if (d.worker) setMeta("worker", d.worker);
        if (d.device) setMeta("device", d.device);
      }
      // a retry (attempt 2, 3...) follows a terminal status: the job goes on
      finished = TERMINAL.has(d.status);
      if (d.attempt > 1) {
        if (e.seq > snapshotSeq && d.status === "queued") location.reload(); // redraw without the abandoned steps
        setMeta("attempt", String(d.attempt));
      }
      break;
    case KIND.checkpoint:
      addCheckpoint(d, e.ts);
      break;
    case KIND.start:
      if (d.total_steps) metrics.total_steps = d.total_steps;
      if (d.params) metrics.params = d.params;
      if (d.device) setMeta("device", d.device);
      if (d.peak_flops !== undefined) setPeak(d.peak_flops, d.peak_source);
      break;
    case KIND.step:
      lossChart.addStep(d.step, d.loss, d.spike);
      lrChart.addDataPoint(d.step, d.lr);
      tpsChart.addDataPoint(d.step, d.tokens_per_s);
      gradChart.addStep(d.step, d.grad_norm, d.clipped);
      updateChart.addStep(d.step, d.update_ratio);
      if (rewardChart && d.reward_margin !== undefined) {
        rewardChart.addStep(d);
        logpChart.addStep(d);
        lastReward = { ...lastReward, train: d };
      }
      if (d.spike) healthEvents.push({ kind: "spike", step: d.step, text: `step ${d.step}: loss spike, loss ${fmt.loss(d.loss)}` });
      Object.assign(metrics, pick(d, ["step", "loss", "lr", "tokens_per_s", "elapsed", "eta", "aux_loss", "mfu"]));
      if (d.peak_source) setPeak(d.peak_flops, d.peak_source); // a step beat the peak: raised
      break;
    case KIND.health:
      if (!lastHealth || d.step >= lastHealth.step) lastHealth = d;
      break;
    case KIND.nonfinite:
      lossChart.addNonfinite(d.step, d.message);
      healthEvents.push({ kind: KIND.nonfinite, step: d.step, action: d.action, text: d.message || `step ${d.step}: non-finite` });
      break;
    case KIND.eval:
      lossChart.addEval(d.step, d.train_loss, d.val_loss);
      if (rewardChart && d.reward_margin !== undefined) {
        rewardChart.addEval(d);
        lastReward = { ...lastReward, val: d };
      }
      Object.assign(metrics, pick(d, ["val_loss", "accuracy"]));
      if (d.sample) samples.push({ step: d.step, val_loss: d.val_loss, ...d.sample });
      break;
    case KIND.moe:
      // The card is unhidden before drawing, so Plotly measures its real width.
      $("moe-card").hidden = false;
      expertChart.update(d);
      routerChart.addEvent(d);
      expertTimeChart.addEvent(d);
      if (!lastMoe || d.step >= lastMoe.step) lastMoe = d;
      break;
    case KIND.routing:
      $("moe-card").hidden = false;
      routing.addEvent(d);
      break;
    case KIND.attention:
      attention.addEvent(e.seq, d);
      break;
    case KIND.end:
      endInfo = d;
      Object.assign(metrics, pick(d, ["step", "elapsed"]));
      if (d.final_val_loss != null) metrics.val_loss = d.final_val_loss;
      break;
    default:
      break;
  }
}

function pick(obj, keys) {
  const out = {};
  for (const k of keys) if (obj[k] !== undefined && obj[k] !== null) out[k] = obj[k];
  return out;
}

function applyEvents(events) {
  let applied = 0;
  const nSamples = samples.length;
  const health = lastHealth;
  const nHealthEvents = healthEvents.length;
  for (const e of events) {
    if (e.seq <= lastSeq) continue; // already applied (a replay overlapping the live stream)
    if (supersededBy(e)) { lastSeq = e.seq; continue; }
    applyEvent(e);
    lastSeq = e.seq;
    applied++;
  }
  if (!applied) return;
  renderProgress();
  if (samples.length !== nSamples) renderSamples();
  if (lastHealth !== health) renderHealth();
  if (healthEvents.length !== nHealthEvents) renderHealthEvents();
  renderMoeNote();
  renderMoeLayers();
  renderReward();
  if (finished) socket.stop();
}

// ------------------------------------------------------------------ rendering
// The MFU tile says which peak it divides by and where that came from (a datasheet, measured now,
// cached from the per-machine file, or raised when a step ran faster than it).
function setPeak(flops, source) {
  const el = $("mfu-peak");
  if (!el) return;
  el.textContent = flops ? `of ${fmt.flops(flops)}/s · ${String(source || "").split(/[ :(]/)[0]}` : "peak unknown";
  $("mfu-tile").title = `Model FLOPs utilisation: achieved FLOP/s ÷ device peak; FLOPs from the analysis. `
    + (flops ? `Peak ${fmt.flops(flops)}/s, ${source}` : "No peak is known for this device.");
}

function tile(key, text) {
  const el = document.querySelector(`[data-tile="${key}"]`);
  if (el && el.textContent !== text) el.textContent = text;
}

function renderProgress() {
  const step = metrics.step || 0;
  const total = metrics.total_steps || 0;
  const frac = total ? Math.min(1, step / total) : 0;
  $("prog-step").textContent = fmt.int(step);
  $("prog-total").textContent = fmt.int(total);
  $("prog-pct").textContent = fmt.percent(frac);
  $("prog-bar").firstElementChild.style.width = `${frac * 100}%`;
  let eta;
  if (job.status === "running") eta = metrics.eta != null ? `ETA ${fmt.duration(metrics.eta)}` : "starting…";
  else if (job.status === "queued") eta = "queued";
  else {
    const reason = endInfo?.reason ? String(endInfo.reason).replaceAll("_", " ") : "";
    eta = reason && reason !== job.status ? `${job.status} · ${reason}` : job.status;
  }
  $("prog-eta").textContent = eta;

  tile("step", fmt.int(step));
  tile("loss", fmt.loss(metrics.loss));
  tile("val_loss", fmt.loss(metrics.val_loss));
  $("tile-accuracy").hidden = metrics.accuracy == null;
  tile("accuracy", fmt.percent(metrics.accuracy, 1));
  $("tile-aux_loss").hidden = metrics.aux_loss == null;
  tile("aux_loss", fmt.loss(metrics.aux_loss));
  tile("tokens_per_s", fmt.count(metrics.tokens_per_s));
  tile("lr", fmt.lr(metrics.lr));
  tile("elapsed", fmt.duration(metrics.elapsed));
  tile("params", fmt.count(metrics.params));
  tile("mfu", fmt.percent(metrics.mfu, metrics.mfu < 0.01 ? 3 : metrics.mfu < 0.1 ? 2 : 1));
}

function renderHealth() {
  renderLayerTable($("health-layers"), lastHealth);
  const n = lastHealth.layers?.length ?? 0;
  $("layers-step").textContent = `· step ${fmt.int(lastHealth.step)} · ${n} block${n === 1 ? "" : "s"}`;
}

function renderHealthEvents() {
  const items = healthEvents.slice(-MAX_HEALTH_EVENTS_SHOWN).reverse().map((ev) => {
    const li = document.createElement("li");
    li.className = `ev-${ev.kind}`;
    li.dataset.step = String(ev.step);
    const kind = document.createElement("span");
    kind.className = "ev-kind";
    kind.textContent = ev.kind === "spike" ? "spike" : ev.action ? String(ev.action).replaceAll("_", " ") : "non-finite";
    const text = document.createElement("span");
    text.className = "ev-text";
    text.textContent = ev.text;
    li.append(kind, text);
    return li;
  });
  $("health-events").replaceChildren(...items);
  $("health-events-empty").hidden = healthEvents.length > 0;
}

function renderMoeNote() {
  if (!lastMoe) return;
  const layers = Array.isArray(lastMoe.layers) ? lastMoe.layers : [];
  const dropped = layers.reduce((s, l) => s + (Number(l.dropped) || 0), 0);
  const routed = layers.reduce((s, l) => s + (l.tokens_per_expert || []).reduce((a, n) => a + n, 0), 0);
  const share = routed + dropped ? ` (${fmt.percent(dropped / (routed + dropped), 1)})` : "";
  $("moe-step").textContent = `step ${fmt.int(lastMoe.step)} · ${layers.length} MoE layer${layers.length === 1 ? "" : "s"} · ${fmt.int(dropped)} dropped${share}`;
}

// One layer picker for the MoE card's over-time heatmap and token view; options as layers appear.
function renderMoeLayers() {
  const layers = [...new Set([...expertTimeChart.layers, ...routing.layers])].sort((a, b) => a - b);
  const select = $("moe-layer");
  if (layers.length === select.options.length) return;
  const chosen = select.value;
  select.replaceChildren(...layers.map((l) => new Option(`layer ${l}`, String(l))));
  select.value = layers.map(String).includes(chosen) ? chosen : String(layers[0]);
  $("moe-layer-pick").hidden = layers.length < 2;
}

$("moe-layer").addEventListener("change", (e) => {
  const layer = Number(e.target.value);
  expertTimeChart.setLayer(layer);
  routing.setLayer(layer);
});

function sampleItem(s) {
  const li = document.createElement("li");
  const head = document.createElement("div");
  head.className = "sample-head";
  const hasExpected = s.expected !== null && s.expected !== undefined;
  const completion = s.completion ?? "";
  if (hasExpected) {
    const right = completion.slice(0, s.expected.length) === s.expected;
    const mark = document.createElement("span");
    mark.className = `mark ${right ? "right" : "wrong"}`;
    mark.textContent = right ? "✓" : "✗";
    mark.title = right ? "matches the expected output" : "differs from the expected output";
    head.append(mark);
  }
  const label = document.createElement("span");
  label.textContent = `step ${fmt.int(s.step)}${s.val_loss != null ? ` · val loss ${fmt.loss(s.val_loss)}` : ""}`;
  head.append(label);

  const pre = document.createElement("pre");
  pre.className = "sample-text";
  const prompt = document.createElement("span");
  prompt.className = "prompt";
  prompt.textContent = s.prompt ?? "";
  const comp = document.createElement("span");
  comp.className = "completion";
  comp.textContent = completion;
  pre.append(prompt, comp);
  li.append(head, pre);

  if (hasExpected) {
    const exp = document.createElement("div");
    exp.className = "sample-expected";
    const code = document.createElement("code");
    code.textContent = s.expected;
    exp.append("expected ", code);
    li.append(exp);
  }
  return li;
}

function renderSamples() {
  const shown = samples.slice(-MAX_SAMPLES_SHOWN).reverse();
  $("samples").replaceChildren(...shown.map(sampleItem));
  $("samples-empty").hidden = samples.length > 0;
  $("samples-count").textContent = samples.length ? `${samples.length} sample${samples.length > 1 ? "s" : ""}` : "";
}

// ------------------------------------------------------------------ cancel
$("cancel-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const btn = $("cancel-btn");
  btn.disabled = true;
  btn.textContent = "Cancelling…";
  try {
    applyJob(await api.cancel(job.id));
  } catch (err) {
    if (err instanceof ApiError && err.status === 409) {
      $("cancel-form").hidden = true; // it ended meanwhile; the status event will follow
    } else {
      btn.disabled = false;
      btn.textContent = "Cancel job";
      alert(`Could not cancel: ${err.message}`);
    }
  }
});

$("log-y").addEventListener("change", (e) => lossChart.setLogY(e.target.checked));

// Each chart's PNG button: Plotly renders the chart as it is on the page.
for (const btn of document.querySelectorAll("[data-png]")) {
  btn.addEventListener("click", () => {
    const el = $(btn.dataset.png);
    if (!window.Plotly || !el.classList.contains("js-plotly-plot")) return; // nothing drawn yet
    window.Plotly.downloadImage(el, { format: "png", filename: `job-${job.id}-${btn.dataset.png}`, width: 1200, height: 500 });
  });
}

// ------------------------------------------------------------------ live
const live = $("live");
const socket = new LiveSocket({
  url: () => `/ws/jobs/${job.id}/?after=${lastSeq}&omit=attention`,
  minDelay: 500,
  maxDelay: 10000,
  onMessage(msg) {
    if (msg.type === "job" && msg.job) applyJob(msg.job);
    else if (msg.type === "events" && Array.isArray(msg.events)) applyEvents(msg.events);
  },
  onState(state) {
    if (state === "open") loadAttentionIndex();  // at first and after a reconnect: maps missed meanwhile
    live.dataset.state = state;
    live.textContent = { open: "live", connecting: "connecting…", closed: "disconnected", done: "" }[state] ?? "";
    live.hidden = state === "done";
  },
});
// a retried job's log holds abandoned steps: learn where each attempt resumed before replaying
(job.attempt > 1 ? loadRetries() : Promise.resolve()).then(() => socket.start());

renderProgress();

// For tests and the curious: how far the page has got.
window.jobPage = {
  get lastSeq() { return lastSeq; },
  get points() { return lossChart.points; },
  get finished() { return finished; },
  get samples() { return samples.length; },
  get gradPoints() { return gradChart.points; },
  get healthEvents() { return healthEvents.slice(); },
  get rewardPoints() { return rewardChart ? rewardChart.points : 0; },
  attention,
  routing,
  socket,
};
