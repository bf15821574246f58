// A tokenization-lab job (or a model import): a progress bar with ETA from the job's "progress"
// events, live over its websocket (replayed from the start on each connect, so a reload shows the
// same state).
import { followJob, renderHead, wireCancel } from "./components/job_page.js";
import { KIND } from "./events.js";
import * as fmt from "./format.js";

const $ = (id) => document.getElementById(id);
let job = JSON.parse($("job-data").textContent);
let fraction = (job.step || 0) / 100;
let eta = null;

function render() {
  const status = job.status;
  renderHead(job);
  $("prog-bar").className = `progress lg status-${status}`;
  const shown = status === "succeeded" ? 1 : fraction;
  $("prog-bar").firstElementChild.style.width = `${shown * 100}%`;
  $("prog-pct").textContent = fmt.percent(shown);
  $("prog-eta").textContent = status === "running" ? (eta != null ? `ETA ${fmt.duration(eta)}` : "starting…") : status;
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

const update = (fields) => { job = { ...job, ...fields }; render(); };
wireCancel(job.id, update);
followJob(job.id, { onEvent: apply, onJob: update, onBatch: render });
render();
