// A fine-tuning job's page: progress, the loss and learning-rate curves, the answers before and
// after training side by side, the held-out answer at each evaluation, and the downloads once the
// adapter is saved. Replays the job's events over its websocket, then follows them live.
import { api, ApiError, LiveSocket } from "./api.js";
import { LossChart } from "./charts/loss.js";
import { LrChart } from "./charts/lr.js";
import { KIND } from "./events.js";
import * as fmt from "./format.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const $ = (id) => document.getElementById(id);
let job = JSON.parse($("job-data").textContent);
const lossChart = new LossChart($("loss-chart"));
const lrChart = new LrChart($("lr-chart"));
const metrics = { ...job.summary, step: job.step, total_steps: job.total_steps };
const samples = [];
let lastSeq = 0;
let phase = "";
let finished = false;
const answers = { before: null, after: null };

function setStatus(status) {
  job.status = status;
  const badge = $("job-status");
  badge.className = `badge status-${status}`;
  badge.dataset.status = status;
  badge.textContent = status;
  $("prog-bar").className = `progress lg status-${status}`;
  $("cancel-form").hidden = TERMINAL.has(status);
  $("queue-note").hidden = status !== "queued";
  $("error-box").hidden = status !== "failed";
  if (job.error) $("error-text").textContent = job.error;
}

function tile(key, text) {
  const el = document.querySelector(`[data-tile="${key}"]`);
  if (el && text != null) el.textContent = text;
}

function render() {
  const total = metrics.total_steps || 1;
  const step = Math.min(metrics.step || 0, total);
  $("prog-step").textContent = fmt.int(step);
  $("prog-total").textContent = fmt.int(total);
  const done = job.status === "succeeded" ? 1 : step / total;
  $("prog-bar").firstElementChild.style.width = `${done * 100}%`;
  $("prog-pct").textContent = fmt.percent(done);
  $("prog-eta").textContent = job.status === "running"
    ? (metrics.eta != null && step ? `ETA ${fmt.duration(metrics.eta)}` : "starting…") : job.status;
  $("prog-phase").textContent = job.status === "running" && phase ? `· ${phase}` : "";
  tile("loss", metrics.loss != null ? fmt.loss(metrics.loss) : null);
  tile("val_loss", metrics.val_loss != null ? fmt.loss(metrics.val_loss) : null);
  tile("accuracy", metrics.accuracy != null ? fmt.percent(metrics.accuracy) : null);
  tile("tokens_per_s", metrics.tokens_per_s != null ? fmt.count(metrics.tokens_per_s) : null);
  tile("elapsed", metrics.elapsed != null ? fmt.duration(metrics.elapsed) : null);
  if (job.params && metrics.total) tile("share", `${fmt.percent(job.params / metrics.total, 2)} trained`);
}

function renderAnswers() {
  for (const which of ["before", "after"]) {
    const got = answers[which];
    if (!got) continue;
    got.answers.forEach((a, i) => {
      const cell = document.querySelector(`#answers-table tr[data-prompt="${i}"] .ft-${which}`);
      if (!cell) return;
      cell.textContent = a.answer || "(an empty answer)";
      cell.title = `${a.seconds.toFixed(1)} s`;
    });
  }
  if (answers.after) $("after-step").textContent = `· after ${fmt.int(answers.after.step)} steps`;
  else if (answers.before && job.status === "running") {
    for (const cell of document.querySelectorAll("#answers-table .ft-after")) cell.innerHTML = '<span class="muted">training…</span>';
  } else if (TERMINAL.has(job.status) && !answers.after) {
    for (const cell of document.querySelectorAll("#answers-table .ft-after")) {
      cell.innerHTML = `<span class="muted">none: the job ${job.status === "succeeded" ? "ended" : job.status} before answering</span>`;
    }
  }
  const n = ["before", "after"].filter((w) => answers[w]).length;
  $("answers-note").textContent = n ? `${answers.before ? answers.before.answers.length : 0} prompts` : "";
}

function sampleItem(s) {
  const li = document.createElement("li");
  const head = document.createElement("div");
  head.className = "sample-head";
  const label = document.createElement("span");
  label.textContent = `step ${fmt.int(s.step)}${s.val_loss != null ? ` · val loss ${fmt.loss(s.val_loss)}` : ""}`;
  head.append(label);
  const pre = document.createElement("pre");
  pre.className = "sample-text";
  const prompt = document.createElement("span");
  prompt.className = "prompt";
  prompt.textContent = `${s.prompt ?? ""}\n`;
  const comp = document.createElement("span");
  comp.className = "completion";
  comp.textContent = s.completion ?? "";
  pre.append(prompt, comp);
  li.append(head, pre);
  if (s.expected) {
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
  $("samples").replaceChildren(...samples.slice(-50).reverse().map(sampleItem));
  $("samples-empty").hidden = samples.length > 0;
  $("samples-count").textContent = samples.length ? `${samples.length} evaluation${samples.length > 1 ? "s" : ""}` : "";
}

function showSaved(d) {
  $("downloads-table").hidden = false;
  $("downloads-empty").hidden = true;
  $("adapter-bytes").textContent = fmt.bytes(d.bytes);
  $("saved-note").textContent = `${d.method} · step ${fmt.int(d.step)}`;
  const peft = document.querySelector('tr[data-export="peft"]');
  if (peft) peft.hidden = d.method !== "lora";
}

function apply(e) {
  const d = e.data || {};
  switch (e.kind) {
    case KIND.status:
      setStatus(d.status);
      if (d.error) $("error-text").textContent = d.error;
      finished = TERMINAL.has(d.status);
      break;
    case KIND.start:
      phase = "answering the prompts with the pretrained model";
      if (d.total_steps) metrics.total_steps = d.total_steps;
      break;
    case KIND.answers:
      answers[d.phase] = d;
      phase = d.phase === "before" ? "training" : "";
      break;
    case KIND.step:
      lossChart.addStep(d.step, d.loss, d.spike);
      lrChart.addDataPoint(d.step, d.lr);
      Object.assign(metrics, { step: d.step, loss: d.loss, lr: d.lr, tokens_per_s: d.tokens_per_s,
        elapsed: d.elapsed, eta: d.eta });
      if (d.step === metrics.total_steps) phase = "saving and answering the prompts again";
      break;
    case KIND.eval:
      lossChart.addEval(d.step, d.train_loss, d.val_loss);
      Object.assign(metrics, { val_loss: d.val_loss, accuracy: d.accuracy });
      if (d.sample) samples.push({ step: d.step, val_loss: d.val_loss, ...d.sample });
      break;
    case KIND.adapter:
      metrics.total = d.total;
      showSaved(d);
      break;
    case KIND.end:
      metrics.elapsed = d.elapsed;
      break;
    default:
      break;
  }
}

$("cancel-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("cancel-btn").disabled = true;
  $("cancel-btn").textContent = "Cancelling…";
  try {
    job = { ...job, ...(await api.cancel(job.id)) };
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 409)) alert(`Could not cancel: ${err.message}`);
  }
});
$("log-y").addEventListener("change", (e) => lossChart.setLogY(e.target.checked));

const live = $("live");
const socket = new LiveSocket({
  url: () => `/ws/jobs/${job.id}/?after=${lastSeq}`,
  onMessage(msg) {
    if (msg.type === "job" && msg.job) {
      job = { ...job, ...msg.job };
      setStatus(job.status);
      metrics.step = Math.max(metrics.step || 0, job.step || 0);
    }
    if (msg.type === "events" && Array.isArray(msg.events)) {
      for (const e of msg.events) {
        if (e.seq <= lastSeq) continue;
        apply(e);
        lastSeq = e.seq;
      }
      renderSamples();
    }
    renderAnswers();
    render();
    if (finished) socket.stop();
  },
  onState(state) {
    live.dataset.state = state;
    live.textContent = { open: "live", connecting: "connecting…", closed: "disconnected", done: "" }[state] ?? "";
    live.hidden = state === "done";
  },
}).start();

render();

// For tests: how far the page has got.
window.finetunePage = {
  get lastSeq() { return lastSeq; },
  get points() { return lossChart.points; },
  get finished() { return finished; },
  get answers() { return { before: !!answers.before, after: !!answers.after }; },
};
