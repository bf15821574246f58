// Queue page controller: rows update in place from the team's websocket. A status change comes
// with every queued job's place in line ("places"), so the list is refetched only where the
// server alone can tell which rows belong (a search, a status tab) or after a reconnect.
import { api, LiveSocket } from "./api.js";
import { refreshTimes } from "./app.js";
import * as fmt from "./format.js";

const card = document.getElementById("queue-card");
const teamId = card.dataset.teamId;
const statusFilter = card.dataset.statusFilter;
// the history search (owner, family, kind, name, dates) narrows what arrives live too
const filterQuery = new URLSearchParams(card.dataset.filterQuery || "");
const searching = [...filterQuery.keys()].some((k) => k !== "status");
const myRole = card.dataset.role;  // member, maintainer or admin of this team
const me = card.dataset.user;
const manager = myRole === "maintainer" || myRole === "admin";
const firstPage = card.dataset.page === "1";
const body = document.getElementById("jobs-body");
const template = document.getElementById("job-row-template");
const ACTIVE = new Set(["queued", "running"]);

const role = (tr, name) => tr.querySelector(`[data-role="${name}"]`);

// ------------------------------------------------------------------ "compare selected"
// The ticked jobs live here, not in the rows: a refetch that rebuilds rows keeps them ticked.
const picked = new Set();
const PICK_MAX = 8;
const compareBtn = document.getElementById("compare-selected");

function updatePicked() {
  compareBtn.disabled = picked.size < 2 || picked.size > PICK_MAX;
  document.getElementById("compare-count").textContent = picked.size
    ? `${picked.size} selected${picked.size > PICK_MAX ? ` (at most ${PICK_MAX})` : picked.size < 2 ? " (pick 2–8)" : ""}` : "";
}

/** The row's first cell: a checkbox for "compare selected" (training jobs only). */
function pickCell(tr, job) {
  let td = tr.querySelector("td.pick-cell");
  if (!td) {
    td = document.createElement("td");
    td.className = "pick-cell";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.dataset.role = "pick";
    box.addEventListener("change", () => {
      const id = Number(tr.dataset.jobId);
      if (box.checked) picked.add(id); else picked.delete(id);
      updatePicked();
    });
    td.append(box);
    tr.prepend(td);
  }
  const box = td.firstElementChild;
  box.checked = picked.has(job.id);
  box.setAttribute("aria-label", `Compare ${job.name}`);
}

compareBtn.addEventListener("click", () => {
  location.href = `${compareBtn.dataset.runsUrl}?jobs=${[...picked].join(",")}`;
});

/** Write one job dict into its row. */
function fillRow(tr, job) {
  tr.job = job;  // for applyPlaces
  pickCell(tr, job);
  tr.dataset.jobId = job.id;
  tr.dataset.status = job.status;
  const name = role(tr, "name");
  name.textContent = job.name;
  name.href = job.url;
  role(tr, "params").textContent = `${fmt.count(job.params)} params · #${job.id}`;

  const badge = role(tr, "status");
  badge.className = `badge status-${job.status}`;
  badge.textContent = job.status;
  role(tr, "place").textContent = placeText(job);
  const prio = role(tr, "priority");
  prio.hidden = !job.priority || job.priority === "normal";
  prio.className = `badge prio-${job.priority}`;
  prio.textContent = job.priority;
  // a queued job (training, inference, tokenizer): its owner picks low/normal; maintainers any priority and "top"
  const controls = role(tr, "queue-controls");
  const mine = job.owner === me;
  controls.hidden = !(job.status === "queued" && (mine || manager));
  const select = role(tr, "priority-select");
  select.value = job.priority || "normal";
  select.querySelector("option[value=high]").disabled = !manager;
  role(tr, "top").hidden = !manager;

  role(tr, "owner").textContent = job.owner;
  const device = role(tr, "device");
  device.innerHTML = "";
  if (job.device) device.textContent = job.device;
  else {
    const tag = document.createElement("span");
    tag.className = "badge queue-tag plain";
    tag.textContent = job.queue;
    device.append(tag);
  }
  role(tr, "worker").textContent = job.worker || "";

  const frac = job.total_steps ? Math.min(1, job.step / job.total_steps) : 0;
  role(tr, "progress").className = `progress status-${job.status}`;
  role(tr, "bar").style.width = `${frac * 100}%`;
  role(tr, "steps").textContent = job.total_steps ? `${fmt.int(job.step)} / ${fmt.int(job.total_steps)}` : "";
  const loss = job.summary?.loss;
  const val = job.summary?.val_loss;
  role(tr, "loss").textContent = loss != null ? `loss ${fmt.loss(loss)}` : val != null ? `val ${fmt.loss(val)}` : "";

  const created = role(tr, "created");
  created.setAttribute("datetime", job.created_at);

  const form = role(tr, "cancel-form");
  form.hidden = !ACTIVE.has(job.status);
  form.action = `${job.url}cancel/`;
  const btn = role(tr, "cancel");
  btn.disabled = Boolean(job.cancel_requested);
  btn.textContent = job.cancel_requested ? "Cancelling…" : "Cancel";
  refreshTimes(tr);
}

/** "#2 in cpu queue · starts in ~4m" for a queued job; "" otherwise. */
function placeText(job) {
  if (job.status !== "queued") return "";
  const parts = [job.position ? `#${job.position} in ${job.queue} queue` : `${job.queue} queue`];
  if (job.starts_in_s != null) parts.push(job.starts_in_s < 5 ? "starts next" : `starts in ~${fmt.duration(job.starts_in_s)}`);
  return parts.join(" · ");
}

/** Priority and "top" (queued jobs): the server checks the role again; errors show in an alert. */
body.addEventListener("change", async (e) => {
  if (e.target.dataset.role !== "priority-select") return;
  const tr = e.target.closest("tr");
  try {
    fillRow(tr, await api.setPriority(Number(tr.dataset.jobId), e.target.value));
    refetch();
  } catch (err) {
    alert(`Could not change the priority: ${err.message}`);
    refetch();
  }
});
body.addEventListener("click", async (e) => {
  if (e.target.dataset.role !== "top") return;
  const tr = e.target.closest("tr");
  try {
    fillRow(tr, await api.moveToTop(Number(tr.dataset.jobId)));
    refetch();
  } catch (err) {
    alert(`Could not move the job: ${err.message}`);
  }
});

function newRow(job) {
  const tr = template.content.firstElementChild.cloneNode(true);
  fillRow(tr, job);
  return tr;
}

function rowFor(id) {
  return body.querySelector(`tr[data-job-id="${id}"]`);
}

function showEmpty() {
  const empty = body.children.length === 0;
  document.getElementById("jobs-table").hidden = empty;
  document.getElementById("jobs-empty").hidden = !empty;
}

function matchesFilter(job) {
  // a live job of a search page: the refetch decides, the server knows the search
  return !searching && (!statusFilter || job.status === statusFilter);
}

function flash(tr) {
  tr.classList.remove("flash");
  void tr.offsetWidth;  // restart the animation
  tr.classList.add("flash");
}

// Last status seen of jobs without a row (older than the page): a running job's brief arrives
// every second; only a change of its status moves places in line.
const offPage = new Map();

/** A live update: returns whether the status changed, or the job is new ("new"). */
function upsert(job) {
  const tr = rowFor(job.id);
  if (tr) {
    const changed = tr.dataset.status !== job.status;
    fillRow(tr, job);
    if (changed) flash(tr);
    return changed;
  }
  const newest = body.firstElementChild?.dataset.jobId;
  if (newest && job.id < Number(newest)) {  // an older job, not on this page
    const before = offPage.get(job.id);
    offPage.set(job.id, job.status);
    return before !== undefined && before !== job.status;
  }
  if (firstPage && matchesFilter(job)) {
    const row = newRow(job);
    body.prepend(row);
    flash(row);
    while (body.children.length > PAGE_SIZE) body.lastElementChild.remove();
    showEmpty();
  }
  return "new";
}

const PAGE_SIZE = 50;
let jobCount = Number(document.getElementById("jobs-count").dataset.count || 0);

function showCount() {
  document.getElementById("jobs-count").textContent = `${fmt.int(jobCount)} job${jobCount === 1 ? "" : "s"}`;
}

/** Every queued row's place in line, from a status change's message: {id: {position, starts_in_s}}. */
function applyPlaces(places) {
  for (const tr of body.children) {
    if (tr.dataset.status !== "queued" || !tr.job) continue;
    const place = places[tr.dataset.jobId] || { position: null, starts_in_s: null };
    fillRow(tr, { ...tr.job, ...place });
  }
}

let refetching = null;
let refetchAgain = false;

/** Reload the newest jobs: places in line move when any job starts or ends. */
async function refetch() {
  if (refetching) { refetchAgain = true; return; }
  refetching = (async () => {
    try {
      const params = { ...Object.fromEntries(filterQuery), team: teamId, limit: 50 };
      const { count, jobs } = await api.jobs(params);
      jobCount = count;
      showCount();
      if (firstPage) {
        // Page one mirrors the list: same order, rows reused.
        const rows = jobs.map((job) => {
          const tr = rowFor(job.id);
          if (tr) { fillRow(tr, job); return tr; }
          return newRow(job);
        });
        body.replaceChildren(...rows);
        showEmpty();
      } else {
        for (const job of jobs) { const tr = rowFor(job.id); if (tr) fillRow(tr, job); }
      }
    } catch (err) {
      console.warn("could not refresh the queue", err);
    }
  })();
  await refetching;
  refetching = null;
  if (refetchAgain) { refetchAgain = false; refetch(); }
}

// ------------------------------------------------------------------ start
// The server sends this page's jobs as JSON (queue-jobs); their rows are made here.
body.replaceChildren(...JSON.parse(document.getElementById("queue-jobs").textContent).map(newRow));
showEmpty();

const live = document.getElementById("live");
const socket = new LiveSocket({
  url: () => `/ws/teams/${teamId}/`,
  onMessage(msg) {
    if (msg.type === "places" && msg.places && !searching && !statusFilter) {
      applyPlaces(msg.places); // another member's private job (a chat's answer) moved the line
      return;
    }
    if (msg.type !== "job" || !msg.job) return;
    const changed = upsert(msg.job);
    if (msg.places && !searching && !statusFilter) {
      // the server sent every place in line: nothing to ask it
      applyPlaces(msg.places);
      if (changed === "new") { jobCount += 1; showCount(); }
    } else if (changed) {
      refetch();
    }
  },
  onState(state) {
    live.dataset.state = state;
    live.textContent = { open: "live", connecting: "connecting…", closed: "offline", done: "offline" }[state] || "live updates";
    // After a reconnect, updates sent while we were away are lost: reload the list once.
    if (state === "open" && socket.connects > 1) refetch();
  },
}).start();

window.queuePage = { socket, refetch };
