// Workers page controller: the table is drawn from /api/v1/workers, polled every few seconds
// (heartbeats arrive every 5 s, so a websocket would add little); Drain / Undrain post to the API.
import { ApiError, getJSON, postJSON } from "./api.js";
import * as fmt from "./format.js";

const POLL_MS = 2500;
const card = document.getElementById("workers-card");
const body = document.getElementById("workers-body");
const template = document.getElementById("worker-row-template");
const live = document.getElementById("live");

const role = (tr, name) => tr.querySelector(`[data-role="${name}"]`);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

// ------------------------------------------------------------------ cells
function describeDevice(w) {
  const d = w.device;
  if (w.queues.some((q) => q.startsWith("serve:"))) return [`${d.cpu_count} CPU cores · ${fmt.bytes(d.memory_bytes)} RAM`, d.name || "CPU"];
  if (d.kind === "cuda") {
    return [`${d.name || "GPU"} · ${fmt.bytes(d.memory_bytes)}`, `${d.cpu_count} CPU cores · ${fmt.bytes(d.usable_bytes)} usable per job`];
  }
  return [`${d.cpu_count} CPU cores · ${fmt.bytes(d.memory_bytes)} RAM`,
    `${d.name || "CPU"} · ${fmt.bytes(d.usable_bytes)} usable per job${d.concurrency > 1 ? ` × ${d.concurrency}` : ""}`];
}

function queueCell(td, w) {
  const list = el("div", "queue-list");
  const served = w.queues.filter((q) => q.startsWith("serve:"));
  if (served.length) { // a serving process (manage.py serve): the model it serves, no job queue
    for (const q of served) {
      const a = el("a", "badge queue-tag serving", `serves ${q.slice("serve:".length)}`);
      a.href = "/serving/";
      list.append(a);
    }
    td.replaceChildren(list);
    return;
  }
  for (const q of w.queues) list.append(el("span", "badge queue-tag plain", q));
  // tiers are "<queue>.<n>g", consumed for every n up to the worker's usable memory
  const gib = w.tiers.map((t) => parseInt(t.split(".").pop(), 10));
  const tiers = el("span", "tiers", gib.length ? `tiers ${gib[0]}–${gib[gib.length - 1]} GiB` : "no memory tier");
  tiers.title = w.tiers.join(", ") || "less than 1 GiB usable: only jobs every worker can hold";
  list.append(tiers);
  td.replaceChildren(list);
}

function jobCell(td, w) {
  const job = w.current_job;
  if (!job) {
    td.replaceChildren(el("span", "muted", w.status === "offline" ? "—" : "idle"));
  } else if (job.busy) {
    td.replaceChildren(el("span", "busy-other", "busy (another team)"));
  } else {
    const a = el("a", "job-link", job.name);
    a.href = job.url;
    const sub = el("div", "sub", job.total_steps ? `${job.team} · step ${fmt.int(job.step)} / ${fmt.int(job.total_steps)}` : job.team);
    td.replaceChildren(a, sub);
  }
}

function bar(label, frac, text) {
  const row = el("div", "util");
  const f = Math.max(0, Math.min(1, frac ?? 0));
  if (f >= 0.9) row.classList.add("hot"); else if (f >= 0.7) row.classList.add("warn");
  const progress = el("div", "progress");
  const fill = el("span");
  fill.style.width = `${f * 100}%`;
  progress.append(fill);
  row.append(el("span", "label", label), progress, el("span", "value", text));
  row.setAttribute("aria-label", `${label} ${text}`);
  return row;
}

function utilCell(td, w) {
  const u = w.utilisation;
  if (!u) { td.replaceChildren(el("span", "muted", "—")); return; }
  const bars = [];
  if (u.cpu_percent != null) bars.push(bar("CPU", u.cpu_percent / 100, `${u.cpu_percent.toFixed(0)}%`));
  if (u.memory_used_bytes != null && w.device.kind === "cuda") {
    // a GPU worker's memory_bytes is the GPU's: the host's RAM has no total to draw a bar against
    const line = el("div", "util plain");
    line.append(el("span", "label", "RAM"), el("span", "value", `${fmt.bytes(u.memory_used_bytes)} used`));
    bars.push(line);
  } else if (u.memory_used_bytes != null) {
    bars.push(bar("RAM", u.memory_used_bytes / w.device.memory_bytes,
      `${fmt.bytes(u.memory_used_bytes)} / ${fmt.bytes(w.device.memory_bytes)}`));
  }
  if (u.gpu_percent != null) bars.push(bar("GPU", u.gpu_percent / 100, `${u.gpu_percent.toFixed(0)}%`));
  if (u.gpu_memory_used_bytes != null) {
    bars.push(bar("VRAM", u.gpu_memory_used_bytes / w.device.memory_bytes,
      `${fmt.bytes(u.gpu_memory_used_bytes)} / ${fmt.bytes(w.device.memory_bytes)}`));
  }
  td.replaceChildren(...(bars.length ? bars : [el("span", "muted", "waiting for a heartbeat")]));
}

function actionCell(td, w, canManage) {
  if (!canManage || w.status === "offline") { td.replaceChildren(); return; }
  const draining = w.status === "draining";
  const btn = el("button", `btn sm${draining ? "" : " danger"}`, draining ? "Undrain" : "Drain");
  btn.type = "button";
  btn.dataset.action = draining ? "undrain" : "drain";
  btn.title = draining ? "Take jobs from its queues again" : "Finish the current job, then take no new one";
  btn.addEventListener("click", () => setDraining(w.name, !draining, btn));
  td.replaceChildren(btn);
}

/** Write one worker dict into its row. */
function fillRow(tr, w, canManage) {
  tr.dataset.worker = w.name;
  tr.dataset.status = w.status;
  tr.classList.toggle("is-offline", w.status === "offline");
  role(tr, "name").textContent = w.name;
  role(tr, "version").textContent = w.version;
  const badge = role(tr, "status");
  badge.className = `badge worker-${w.status}`;
  badge.textContent = w.status;
  const [device, sub] = describeDevice(w);
  role(tr, "device").textContent = device;
  role(tr, "device-sub").textContent = sub;
  queueCell(role(tr, "queues"), w);
  jobCell(role(tr, "job"), w);
  utilCell(role(tr, "util"), w);
  const beat = role(tr, "heartbeat");
  beat.setAttribute("datetime", w.heartbeat_at);
  beat.textContent = heartbeatText(w.heartbeat_at);
  beat.title = fmt.datetime(w.heartbeat_at);
  role(tr, "uptime").textContent = w.uptime_s != null ? `up ${fmt.duration(w.uptime_s)}` : `started ${fmt.datetime(w.started_at)}`;
  actionCell(role(tr, "actions"), w, canManage);
}

/** Heartbeats are seconds apart: "3 s ago" says more than "just now". */
function heartbeatText(iso) {
  const s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
  return s < 90 ? `${s} s ago` : fmt.relative(iso);
}

// ------------------------------------------------------------------ the table
function render({ workers, can_manage: canManage }) {
  card.dataset.canManage = canManage ? "1" : "0";
  const rows = workers.map((w) => {
    const tr = body.querySelector(`tr[data-worker="${CSS.escape(w.name)}"]`) || template.content.firstElementChild.cloneNode(true);
    fillRow(tr, w, canManage);
    return tr;
  });
  body.replaceChildren(...rows);
  document.getElementById("workers-table").hidden = rows.length === 0;
  document.getElementById("workers-empty").hidden = rows.length > 0;
  const count = (pred) => String(workers.filter(pred).length);
  for (const status of ["online", "draining", "offline"]) {
    document.querySelector(`[data-count="${status}"]`).textContent = count((w) => w.status === status);
  }
  document.querySelector('[data-count="busy"]').textContent = count((w) => w.current_job);
}

let timer = null;

async function refresh() {
  clearTimeout(timer);
  try {
    render(await getJSON("/api/v1/workers"));
    live.dataset.state = "open";
    live.textContent = "live";
  } catch (err) {
    live.dataset.state = "closed";
    live.textContent = err instanceof ApiError && err.status === 401 ? "logged out" : "offline";
  }
  timer = setTimeout(refresh, POLL_MS);
}

async function setDraining(name, draining, btn) {
  btn.disabled = true;
  btn.textContent = draining ? "Draining…" : "Undraining…";
  try {
    await postJSON(`/api/v1/workers/${encodeURIComponent(name)}/${draining ? "drain" : "undrain"}`);
  } catch (err) {
    alert(err.message);  // eslint-disable-line no-alert
  }
  await refresh();
}

// ------------------------------------------------------------------ start
render(JSON.parse(document.getElementById("workers-initial").textContent));
timer = setTimeout(refresh, POLL_MS);
window.workersPage = { refresh };
