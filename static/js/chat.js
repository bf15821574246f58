// The chat page: the user's conversations, the open one's messages, the composer and the sampling
// settings. A message goes to /api/v1/chat/messages, which queues a "chat" job to answer it; the
// answer streams in from that job's websocket (/ws/jobs/<id>/), a "token" event per token as the
// worker samples it, then "reply". While the job waits, its place in line is shown (from the job's
// brief, refreshed every few seconds). Each token is shaded by its probability; hover or click one
// for the likeliest alternatives, as on an inference job's page.
import { api, ApiError, getJSON, LiveSocket, postJSON, csrfToken } from "./api.js";
import { KIND } from "./events.js";
import * as fmt from "./format.js";
import { el, visible } from "./components/token_text.js";

const $ = (id) => document.getElementById(id);
const data = JSON.parse($("chat-data").textContent);
const options = data.options;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const SETTINGS_KEY = "chat.settings";

const state = {
  conversation: data.conversation, // {id, title, messages, pending} or null (a new one)
  live: null, // {message, job, socket, lastSeq, poll}
};

/** The token's shade: the accent colour, deeper as the probability rises (lighter than the inference page's chips, for reading). */
function shade(p) {
  return `background: rgba(79, 70, 229, ${(0.04 + 0.34 * p).toFixed(3)})`;
}

// ---------------------------------------------------------------------------- messages
const box = $("chat-messages");
const scroller = $("chat-scroll");
const nearBottom = () => scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
const toBottom = () => { scroller.scrollTop = scroller.scrollHeight; };

function tokenSpan(message, t, i) {
  if (t.end_of_turn) { // the model's end-of-turn token: not part of the text
    return el("span", { class: "ctok eot", tabindex: "0", "data-message": message.id, "data-token": i,
      title: `${t.text}: the end of the assistant's turn` }, "end of turn");
  }
  return el("span", { class: "ctok", style: shade(t.prob), tabindex: "0", "data-message": message.id, "data-token": i }, t.text);
}

function metaLine(m) {
  const parts = [];
  const n = (m.tokens || []).length;
  if (m.status === "succeeded" || m.stopped_by) {
    if (n) parts.push(el("span", { text: `${n} token${n === 1 ? "" : "s"}` }));
    const why = { end_of_turn: "ended its turn", max_tokens: "max new tokens reached", stop: "stop string",
      cancelled: "stopped", failed: "failed" }[m.stopped_by];
    if (why) parts.push(el("span", { text: why }));
  }
  const s = m.settings || {};
  if (s.greedy || s.temperature === 0) parts.push(el("span", { text: "greedy" }));
  else if (s.temperature !== undefined) {
    parts.push(el("span", { text: [`T ${s.temperature}`, s.top_k ? `top-k ${s.top_k}` : "", s.top_p ? `top-p ${s.top_p}` : "",
      `seed ${s.seed}`].filter(Boolean).join(" · ") }));
  }
  if (m.tokens_per_s) parts.push(el("span", { text: `${fmt.int(m.tokens_per_s)} tokens/s` }));
  if (m.job) parts.push(el("a", { href: `/jobs/${m.job}/`, text: `job #${m.job}` }));
  return el("div", { class: "msg-meta" }, ...parts);
}

function renderMessage(m) {
  const user = m.role === "user";
  const body = el("div", { class: "msg-body" });
  const bubble = el("div", { class: "bubble" });
  if (user) {
    bubble.textContent = m.content;
  } else {
    (m.tokens || []).forEach((t, i) => bubble.append(tokenSpan(m, t, i)));
    if (!(m.tokens || []).length && m.content) bubble.textContent = m.content;
  }
  body.append(bubble);
  const node = el("div", { class: `msg ${m.role}${m.status === "failed" ? " failed" : ""}`, "data-message": m.id },
    el("div", { class: "msg-avatar", "aria-hidden": "true", text: user ? (document.querySelector(".avatar")?.textContent || "you") : "AI" }),
    body);
  if (!user) {
    if (!TERMINAL.has(m.status)) {
      if ((m.tokens || []).length) bubble.append(el("span", { class: "cursor", "aria-hidden": "true" }));
      else bubble.append(waitingLine(m));
    }
    if (m.status === "failed" && m.error) body.append(el("div", { class: "msg-error", text: m.error }));
    if (m.status === "cancelled" && !(m.tokens || []).length) bubble.prepend(el("span", { class: "muted", text: "(stopped before the first token)" }));
    body.append(metaLine(m));
  }
  return node;
}

function waitingLine(m) {
  const line = el("span", { class: "waiting", "data-waiting": m.id }, el("span", { class: "spinner" }), el("span", { class: "waiting-text" }));
  updateWaiting(line, m);
  return line;
}

function updateWaiting(line, m) {
  const text = line.querySelector(".waiting-text");
  const job = m.jobInfo || {};
  if (job.status === "queued" || m.status === "queued") {
    const place = job.position;
    text.replaceChildren(
      "Queued on the worker",
      ...(place ? [": ", el("span", { class: "place", "data-place": place, text: `place ${place} in line` })] : []),
      job.starts_in_s != null && job.starts_in_s > 0 ? ` · starts in about ${fmt.duration(job.starts_in_s)}` : "",
      "…");
  } else {
    text.textContent = "Loading the model and reading the conversation…";
  }
}

function contextUsed() {
  const msgs = state.conversation?.messages || [];
  for (let i = msgs.length - 1; i >= 0; i--) {
    const m = msgs[i];
    if (m.role === "assistant" && m.n_prompt_tokens) return m.n_prompt_tokens + (m.tokens || []).length;
  }
  return 0;
}

function renderContext() {
  const used = contextUsed();
  const total = options.model.context;
  $("context-used").textContent = fmt.int(used);
  $("context-bar").style.width = `${Math.min(100, (100 * used) / total).toFixed(1)}%`;
  $("context-meter").classList.toggle("full", used > 0.9 * total);
}

function renderConversation() {
  const c = state.conversation;
  $("chat-empty").hidden = Boolean(c && c.messages.length);
  $("chat-title").textContent = c ? c.title : "New conversation";
  box.replaceChildren(...(c ? c.messages.map(renderMessage) : []));
  renderContext();
  toBottom();
}

function rerender(m) {
  const old = box.querySelector(`.msg[data-message="${m.id}"]`);
  const stick = nearBottom();
  const node = renderMessage(m);
  if (old) old.replaceWith(node); else box.append(node);
  renderContext();
  if (stick) toBottom();
}

// ---------------------------------------------------------------------------- the conversation list
function upsertConversation(c) {
  $("conv-empty").hidden = true;
  let li = document.querySelector(`.conv[data-conversation="${c.id}"]`);
  if (!li) {
    li = el("li", { class: "conv", "data-conversation": c.id },
      el("a", { class: "conv-link", href: c.url, title: c.title },
        el("span", { class: "conv-title", text: c.title }),
        el("time", { class: "conv-time", datetime: c.updated_at, text: "just now" })),
      el("button", { class: "conv-delete", type: "button", "data-delete": c.id, title: "Delete this conversation",
        "aria-label": `Delete ${c.title}`, text: "×" }));
  }
  $("conv-list").prepend(li);
  document.querySelectorAll(".conv.active").forEach((n) => n.classList.remove("active"));
  li.classList.add("active");
}

$("conv-list").addEventListener("click", async (e) => {
  const button = e.target.closest("[data-delete]");
  if (!button) return;
  const id = Number(button.dataset.delete);
  const title = button.closest(".conv").querySelector(".conv-title").textContent;
  if (!window.confirm(`Delete “${title}”? Its messages are removed for good.`)) return;
  try {
    const res = await fetch(`/api/v1/chat/conversations/${id}`, {
      method: "DELETE", credentials: "same-origin", headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" } });
    if (!res.ok && res.status !== 404) throw new Error(`HTTP ${res.status}`);
  } catch (err) {
    showFormError(`Could not delete the conversation: ${err.message}`);
    return;
  }
  button.closest(".conv").remove();
  $("conv-empty").hidden = Boolean(document.querySelector(".conv"));
  if (state.conversation?.id === id) window.location.assign("/chat/");
});

// ---------------------------------------------------------------------------- streaming an answer
function follow(message) {
  stopFollowing();
  const live = { message, lastSeq: 0, socket: null, poll: null };
  state.live = live;
  setBusy(true);
  live.socket = new LiveSocket({
    url: () => `/ws/jobs/${message.job}/?after=${live.lastSeq}`,
    onMessage(msg) {
      if (state.live !== live) return;
      if (msg.type === "job" && msg.job) applyJob(message, msg.job);
      if (msg.type === "events") {
        for (const e of msg.events) {
          if (e.seq <= live.lastSeq) continue;
          live.lastSeq = e.seq;
          applyEvent(message, e);
        }
      }
      document.body.dataset.streaming = TERMINAL.has(message.status) ? "no" : "yes";
      if (TERMINAL.has(message.status)) finish(live);
    },
  }).start();
  // places in line move as other jobs start and end (of any team): asked again every few seconds
  live.poll = setInterval(async () => {
    if (message.status !== "queued") return;
    try { applyJob(message, await getJSON(`/api/v1/jobs/${message.job}`)); } catch { /* the socket still tells */ }
  }, 3000);
}

function stopFollowing() {
  const live = state.live;
  if (!live) return;
  clearInterval(live.poll);
  live.socket?.stop();
  state.live = null;
}

function finish(live) {
  clearInterval(live.poll);
  live.socket.stop();
  if (state.live === live) state.live = null;
  setBusy(false);
  rerender(live.message);
}

function applyJob(m, job) {
  m.jobInfo = { status: job.status, position: job.position, starts_in_s: job.starts_in_s };
  // an ended job's brief can come before its events (a fast answer, a late socket): the answer is
  // over only once its "status" event has been applied, after every token before it
  if (job.status === "running" && m.status === "queued") {
    m.status = job.status;
    rerender(m);
  } else {
    const line = box.querySelector(`[data-waiting="${m.id}"]`);
    if (line) updateWaiting(line, m);
  }
}

function applyEvent(m, e) {
  const d = e.data || {};
  if (e.kind === KIND.token) {
    m.tokens = m.tokens || [];
    if (d.index !== m.tokens.length) return; // (replayed after a reconnect: already shown)
    const t = { id: d.id, text: d.text, prob: d.prob, alternatives: d.alternatives, end_of_turn: d.end_of_turn };
    m.tokens.push(t);
    if (m.status === "queued") m.status = "running";
    const node = box.querySelector(`.msg[data-message="${m.id}"] .bubble`);
    if (!node) return;
    const stick = nearBottom();
    node.querySelector(".waiting")?.remove();
    let cursor = node.querySelector(".cursor");
    if (!cursor) cursor = node.appendChild(el("span", { class: "cursor", "aria-hidden": "true" }));
    node.insertBefore(tokenSpan(m, t, m.tokens.length - 1), cursor);
    if (stick) toBottom();
  } else if (e.kind === KIND.reply) {
    m.content = d.text;
    m.stopped_by = d.stopped_by;
    m.n_prompt_tokens = d.n_prompt_tokens;
    m.tokens_per_s = d.tokens_per_s;
  } else if (e.kind === KIND.start) {
    if (m.status === "queued") m.status = "running";
    if (d.n_prompt_tokens) m.n_prompt_tokens = d.n_prompt_tokens;
    const line = box.querySelector(`[data-waiting="${m.id}"]`);
    if (line) updateWaiting(line, m);
  } else if (e.kind === KIND.status) {
    if (d.status === "running" && m.status === "queued") {
      m.status = "running";
      const line = box.querySelector(`[data-waiting="${m.id}"]`);
      if (line) updateWaiting(line, m);
    }
    if (TERMINAL.has(d.status)) {
      m.status = d.status;
      if (d.error) m.error = d.error;
      if (d.status !== "succeeded" && !m.stopped_by) m.stopped_by = d.status === "cancelled" ? "cancelled" : "failed";
    }
  }
}

// ---------------------------------------------------------------------------- sending
const form = $("composer");
const input = $("f-content");

function setBusy(busy) {
  $("send-btn").hidden = busy;
  $("stop-btn").hidden = !busy;
  $("stop-btn").disabled = false;
}

function clearErrors() {
  document.querySelectorAll("[data-errors-for]").forEach((n) => { n.textContent = ""; });
  document.querySelectorAll(".has-error").forEach((n) => n.classList.remove("has-error"));
  $("form-error").hidden = true;
}

function showFormError(text) {
  $("form-error").textContent = text;
  $("form-error").hidden = false;
}

function showErrors(err) {
  const errors = err.body?.errors || {};
  let shown = false;
  for (const [key, message] of Object.entries(errors)) {
    const target = document.querySelector(`[data-errors-for="${key.split(".")[0]}"]`);
    if (target) {
      target.textContent = message;
      target.closest(".field")?.classList.add("has-error");
      shown = true;
    }
  }
  if (!shown) showFormError(err.body?.detail || err.message);
}

function settings() {
  const num = (id) => { const v = $(id).value.trim(); return v === "" ? null : Number(v); };
  return {
    greedy: $("f-greedy").checked, temperature: num("f-temperature"), top_k: num("f-top_k"), top_p: num("f-top_p"),
    max_new_tokens: num("f-max_new_tokens"), seed: num("f-seed"),
  };
}

async function send(content) {
  clearErrors();
  if (!content.trim()) { input.focus(); return; }
  $("send-btn").disabled = true;
  let out;
  try {
    out = await postJSON("/api/v1/chat/messages", { conversation: state.conversation?.id ?? null, content, team: data.team, ...settings() });
  } catch (err) {
    $("send-btn").disabled = false;
    if (err instanceof ApiError) showErrors(err); else showFormError(`Could not send: ${err.message}`);
    return;
  }
  $("send-btn").disabled = false;
  input.value = "";
  autosize();
  if (!state.conversation || state.conversation.id !== out.conversation.id) {
    state.conversation = { ...out.conversation, messages: [], pending: null };
    window.history.replaceState({}, "", out.conversation.url);
    document.title = `${out.conversation.title} · Chat · LLM Architecture Explorer`;
  }
  upsertConversation(out.conversation);
  const reply = { ...out.reply, jobInfo: { status: out.job.status, position: out.job.position, starts_in_s: out.job.starts_in_s } };
  state.conversation.messages.push(out.message, reply);
  $("chat-empty").hidden = true;
  $("chat-title").textContent = state.conversation.title;
  box.append(renderMessage(out.message), renderMessage(reply));
  renderContext();
  toBottom();
  follow(reply);
}

form.addEventListener("submit", (e) => { e.preventDefault(); send(input.value); });
input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    if (!$("send-btn").hidden && !$("send-btn").disabled) send(input.value);
  }
});
function autosize() {
  input.style.height = "auto";
  input.style.height = `${Math.min(200, input.scrollHeight + 2)}px`;
}
input.addEventListener("input", autosize);
document.querySelectorAll(".suggestion").forEach((b) => b.addEventListener("click", () => {
  if (input.disabled) return;
  input.value = b.textContent;
  send(input.value);
}));

$("stop-btn").addEventListener("click", async () => {
  const live = state.live;
  if (!live) return;
  $("stop-btn").disabled = true;
  try {
    await api.cancel(live.message.job);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 409)) showFormError(`Could not stop: ${err.message}`);
  }
});

// ---------------------------------------------------------------------------- settings
function syncSettings() {
  const greedy = $("f-greedy").checked;
  for (const id of ["temperature", "top_k", "top_p", "seed"]) {
    const wrap = $(`f-${id}`).closest(".field");
    $(`f-${id}`).disabled = greedy;
    wrap.setAttribute("aria-disabled", greedy ? "true" : "false");
  }
  $("temperature-out").textContent = greedy ? "0 (greedy)" : Number($("f-temperature").value).toFixed(2);
  try { localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings())); } catch { /* private mode */ }
}

try {
  const saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) || "null");
  if (saved) {
    $("f-greedy").checked = Boolean(saved.greedy);
    for (const key of ["temperature", "top_k", "top_p", "max_new_tokens", "seed"]) {
      if (saved[key] !== undefined) $(`f-${key}`).value = saved[key] ?? "";
    }
  }
} catch { /* ignore a bad saved value */ }
document.querySelectorAll("#settings-form input").forEach((n) => n.addEventListener("input", syncSettings));
syncSettings();

// ---------------------------------------------------------------------------- the alternatives on hover
const pop = $("tok-pop");
let pinned = null;

function tokenOf(span) {
  const messages = state.conversation?.messages || [];
  const m = messages.find((x) => String(x.id) === span.dataset.message);
  return m?.tokens?.[Number(span.dataset.token)];
}

function showAlternatives(span) {
  const t = tokenOf(span);
  if (!t) return;
  const rows = (t.alternatives || []).map((a) => el("div", { class: `alt${a.id === t.id ? " chosen" : ""}` },
    el("span", { class: "alt-text", text: visible(a.text) }),
    el("span", { class: "alt-bar" }, el("i", { style: `width: ${(100 * a.prob).toFixed(1)}%` })),
    el("span", { class: "alt-p", text: fmt.percent(a.prob, 1) })));
  const inTop = (t.alternatives || []).some((a) => a.id === t.id);
  pop.replaceChildren(
    el("div", { class: "pop-head" }, el("b", { class: "mono", text: visible(t.text) }),
      el("span", { text: ` sampled with p = ${fmt.percent(t.prob, 1)}` })),
    el("div", { class: "pop-sub", text: inTop ? "The likeliest tokens at this step:" : "Not among the likeliest tokens at this step:" }),
    ...rows,
  );
  pop.hidden = false;
  const r = span.getBoundingClientRect();
  const width = pop.offsetWidth;
  const left = Math.min(window.scrollX + r.left, window.scrollX + document.documentElement.clientWidth - width - 12);
  pop.style.left = `${Math.max(8, left)}px`;
  pop.style.top = `${window.scrollY + r.bottom + 6}px`;
  document.querySelectorAll(".ctok.on").forEach((c) => c.classList.remove("on"));
  span.classList.add("on");
}

function hideAlternatives() {
  if (pinned) return;
  pop.hidden = true;
  document.querySelectorAll(".ctok.on").forEach((c) => c.classList.remove("on"));
}

box.addEventListener("mouseover", (e) => {
  const span = e.target.closest(".ctok");
  if (span && !pinned) showAlternatives(span);
});
box.addEventListener("mouseout", (e) => {
  if (e.target.closest(".ctok") && !e.relatedTarget?.closest?.(".ctok")) hideAlternatives();
});
box.addEventListener("focusin", (e) => {
  const span = e.target.closest(".ctok");
  if (span && !pinned) showAlternatives(span);
});
box.addEventListener("click", (e) => {
  const span = e.target.closest(".ctok");
  if (!span) return;
  pinned = pinned === span ? null : span;
  showAlternatives(span);
  if (!pinned) hideAlternatives();
});
document.addEventListener("click", (e) => {
  if (pinned && !e.target.closest(".ctok") && !e.target.closest("#tok-pop")) { pinned = null; hideAlternatives(); }
});
document.addEventListener("keydown", (e) => { if (e.key === "Escape") { pinned = null; hideAlternatives(); } });
scroller.addEventListener("scroll", () => { if (!pinned) hideAlternatives(); });

// ---------------------------------------------------------------------------- start
renderConversation();
const pendingMessage = state.conversation?.messages.find((m) => m.role === "assistant" && !TERMINAL.has(m.status));
if (pendingMessage) {
  pendingMessage.jobInfo = state.conversation.pending || {};
  pendingMessage.tokens = []; // replayed from the job's events
  rerender(pendingMessage);
  follow(pendingMessage);
}
document.body.dataset.chatReady = "yes";
window.chatPage = { state };
if (!input.disabled) input.focus();
