// A tokenization-lab job: a progress bar with ETA from the job's "progress" events, live over its
// websocket (replayed from the start on each connect, so a reload shows the same state).
import { api, ApiError, LiveSocket } from "./api.js";
import { KIND } from "./events.js";
import * as fmt from "./format.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const $ = (id) => document.getElementById(id);
let job = JSON.parse($("job-data").textContent);
let lastSeq = 0;
let fraction = (job.step || 0) / 100;
let eta = null;

function render() {
  const status = job.status;
  const badge = $("job-status");
  badge.className = `badge status-${status}`;
  badge.dataset.status = status;
  badge.textContent = status;
  $("prog-bar").className = `progress lg status-${status}`;
  const shown = status === "succeeded" ? 1 : fraction;
  $("prog-bar").firstElementChild.style.width = `${shown * 100}%`;
  $("prog-pct").textContent = fmt.percent(shown);
  $("prog-eta").textContent = status === "running" ? (eta != null ? `ETA ${fmt.duration(eta)}` : "starting…") : status;
  $("cancel-form").hidden = TERMINAL.has(status);
  $("error-box").hidden = status !== "failed";
  if (job.error) $("error-text").textContent = job.error;
  $("open-in-lab").hidden = status !== "succeeded";
}

function apply(e) {
  const d = e.data || {};
  if (e.kind === KIND.progress) {
    fraction = d.fraction ?? fraction;
    eta = d.eta ?? null;
  } else if (e.kind === KIND.status) {
    job.status = d.status;
    if (d.error) job.error = d.error;
  }
}

$("cancel-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("cancel-btn").disabled = true;
  $("cancel-btn").textContent = "Cancelling…";
  try {
    job = { ...job, ...(await api.cancel(job.id)) };
    render();
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 409)) alert(`Could not cancel: ${err.message}`);
  }
});

const live = $("live");
const socket = new LiveSocket({
  url: () => `/ws/jobs/${job.id}/?after=${lastSeq}`,
  onMessage(msg) {
    if (msg.type === "job" && msg.job) job = { ...job, ...msg.job };
    if (msg.type === "events") {
      for (const e of msg.events) {
        if (e.seq <= lastSeq) continue;
        apply(e);
        lastSeq = e.seq;
      }
    }
    render();
    if (TERMINAL.has(job.status)) socket.stop();
  },
  onState(state) {
    live.dataset.state = state;
    live.textContent = { open: "live", connecting: "connecting…", closed: "disconnected", done: "" }[state] ?? "";
    live.hidden = state === "done";
  },
}).start();

render();
