// What every job page does with its job, in one place: the head (status badge, the cancel form,
// the failure box; templates/explorer/_job_base.html), cancelling, and following the job's
// events over its websocket (the log replayed from the last event seen on each connect, each
// event applied once, in order; the socket closed for good once the log's final status event is
// in, never before: a finished job's brief comes ahead of its replay).
import { api, ApiError, LiveSocket } from "../api.js";
import { KIND } from "../events.js";

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const $ = (id) => document.getElementById(id);

/** The job's status badge, whether its cancel form shows, and its failure box. */
export function renderHead(job) {
  const badge = $("job-status");
  badge.className = `badge status-${job.status}`;
  badge.dataset.status = job.status;
  badge.textContent = job.status;
  $("cancel-form").hidden = TERMINAL.has(job.status);
  $("error-box").hidden = job.status !== "failed";
  if (job.error) $("error-text").textContent = job.error;
}

/** The cancel form posts to the API; ``onJob(fields)`` gets the job as it answers. */
export function wireCancel(jobId, onJob) {
  $("cancel-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("cancel-btn").disabled = true;
    $("cancel-btn").textContent = "Cancelling…";
    try {
      onJob(await api.cancel(jobId));
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 409)) alert(`Could not cancel: ${err.message}`);
    }
  });
}

/**
 * Follow job ``jobId``'s events: ``onEvent(e)`` once per event in order (status events included),
 * ``onJob(fields)`` with the job's brief when it comes, ``onBatch()`` after each message. The
 * page's live dot (#live) shows the connection; ``body[data-loaded]`` says whether the log has come
 * as far as the job's brief knew it. Returns the LiveSocket.
 */
export function followJob(jobId, { onEvent, onJob = () => {}, onBatch = () => {} }) {
  let lastSeq = 0;
  let known = 0; // the log's last event when the brief was read
  let ended = false; // the final status event is in: nothing follows it
  const live = $("live");
  const socket = new LiveSocket({
    url: () => `/ws/jobs/${jobId}/?after=${lastSeq}`,
    onMessage(msg) {
      if (msg.type === "job" && msg.job) {
        known = Math.max(known, msg.job.last_seq || 0);
        onJob(msg.job);
      }
      if (msg.type === "events") {
        for (const e of msg.events) {
          if (e.seq <= lastSeq) continue;
          lastSeq = e.seq;
          if (e.kind === KIND.status && TERMINAL.has(e.data?.status)) ended = true;
          onEvent(e);
        }
      }
      onBatch();
      document.body.dataset.loaded = lastSeq >= known ? "yes" : "no"; // the log as far as the brief knew it
      if (ended) socket.stop();
    },
    onState(state) {
      live.dataset.state = state;
      live.textContent = { open: "live", connecting: "connecting…", closed: "disconnected", done: "" }[state] ?? "";
      live.hidden = state === "done";
    },
  });
  return socket.start();
}
