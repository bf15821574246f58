// Composer page controller: live cost estimate, live field errors, URL sync, presets, and
// hiding the fields that do not apply to the current settings.
import { api, ApiError } from "./api.js";
import * as fmt from "./format.js";
import * as state from "./state.js";
import { ReportPanel, settingsFromQuery, settingsToQuery } from "./report.js";

const PARTS = ["embedding", "position", "attention", "ffn", "norms", "head"];

// Which data fields apply to which data source (all are shown without JS). A field whose engine
// spec carries `show_if` (the widget's data-show-if) follows that instead.
const SHOWN_FOR_SOURCE = {
  "data.task": (source) => source === "synthetic",
  "data.task_length": (source) => source === "synthetic",
  "data.dataset": (source) => source === "text" || source === "jsonl",
  "data.tokenizer": (source) => source !== "synthetic",
};

const form = document.getElementById("compose-form");
const panel = document.getElementById("cost-panel");
const options = JSON.parse(document.getElementById("composer-options").textContent);
const dflts = state.defaults(options.fields);
const budgets = options.memory_budget_bytes || {};

// A real model's preset (?preset=llama-2-7b) stays in the URL while its fields are edited: the
// analysis takes what the form cannot hold from it (vocabulary, token types).
let preset = new URLSearchParams(location.search).get("preset") || null;
let lastVocab = null;

const report = new ReportPanel(
  document.getElementById("report-panel"),
  JSON.parse(document.getElementById("analysis-options").textContent),
  { settings: settingsFromQuery(location.search), onSettings: () => syncURL() },
);

/** The URL: the form's fields that differ from the defaults, the preset, and the report's settings. */
function syncURL() {
  const extra = new URLSearchParams();
  if (preset) extra.set("preset", preset);
  for (const [k, v] of settingsToQuery(report.settings)) extra.set(k, v);
  state.syncURL(form, dflts, extra);
  updateCompareLink();
}

/** What /api/v1/analyze gets: the form's architecture, on top of the preset when there is one. */
function reportModel(spec) {
  const model = { ...spec.model };
  if (preset) {
    model.preset = preset;
    // an optional field left empty means "derived", not "the preset's value"
    for (const [name, d] of Object.entries(dflts)) {
      const [section, key] = name.split(".");
      if (section === "model" && d === null && !(key in model)) model[key] = null;
    }
  } else if (lastVocab != null) {
    model.vocab_size = lastVocab;
  }
  return model;
}

/** "Compare…" opens the compare page with this architecture in slot A. */
function updateCompareLink() {
  const link = document.getElementById("report-compare");
  if (!link) return;
  const q = new URLSearchParams();
  if (preset) q.set("preset", preset);
  for (const [k, v] of state.toQuery(form, dflts)) if (k.startsWith("model.")) q.set(k, v);
  if (!preset && lastVocab != null) q.set("model.vocab_size", String(lastVocab));
  const page = new URLSearchParams({ a: `link:${q.toString()}` });
  for (const [k, v] of settingsToQuery(report.settings)) page.set(k, v);
  link.href = `/compare/?${page.toString()}`;
}

let timer = null;
let inflight = null;
let requestNo = 0;

// ------------------------------------------------------------------ output helpers
function out(key, text) {
  for (const el of panel.querySelectorAll(`[data-out="${key}"]`)) el.textContent = text;
}

function bar(key, fraction) {
  const el = panel.querySelector(`[data-bar="${key}"]`);
  if (el) el.style.width = `${Math.max(0, Math.min(1, fraction || 0)) * 100}%`;
}

function setEstimateState(kind, text) {
  const el = document.getElementById("est-state");
  el.dataset.state = kind;
  el.textContent = text;
}

// ------------------------------------------------------------------ rendering the estimate
function renderParams(params) {
  const big = panel.querySelector('[data-out="params.total"]');
  if (!params) {
    big.textContent = "—";
    out("params.note", "\u00a0");
    renderActive(null);
    for (const p of PARTS) { out(`params.${p}`, "—"); out(`pct.${p}`, ""); bar(p, 0); }
    return;
  }
  const [num, unit] = fmt.countParts(params.total);
  big.innerHTML = "";
  big.append(num);
  if (unit) {
    const u = document.createElement("span");
    u.className = "unit";
    u.textContent = unit;
    big.append(u);
  }
  const parts = [`${fmt.int(params.total)} parameters`];
  if (params.per_moe_layer != null) {
    // Layer i is an MoE layer when (i + 1) % moe_every == 0; the others stay dense.
    const v = state.values(form, dflts);
    const nMoe = Math.floor(Number(v["model.n_layer"]) / Math.max(1, Number(v["model.moe_every"]) || 1));
    if (params.per_layer != null && nMoe < Number(v["model.n_layer"])) parts.push(`${fmt.count(params.per_layer)} per dense layer`);
    parts.push(`${fmt.count(params.per_moe_layer)} per MoE layer`);
  } else if (params.per_layer != null) {
    parts.push(`${fmt.count(params.per_layer)} per layer`);
  }
  out("params.note", parts.join(" · "));
  renderActive(params);
  const total = PARTS.reduce((s, p) => s + (params[p] || 0), 0) || 1;
  const tied = form.querySelector('[data-field="model.tie_embeddings"]')?.checked;
  for (const p of PARTS) {
    const v = params[p] || 0;
    out(`params.${p}`, p === "head" && v === 0 && tied ? "tied" : fmt.count(v));
    out(`pct.${p}`, v ? fmt.percent(v / total, v / total < 0.1 ? 1 : 0) : "");
    bar(p, v / total);
  }
}

/** Mixture of Experts: each token runs through top_k of n_expert expert FFNs, so fewer weights are used per token. */
function renderActive(params) {
  const pill = document.getElementById("params-active");
  const moe = params && params.active != null && params.active !== params.total;
  pill.hidden = !moe;
  if (!moe) return;
  out("params.active", fmt.count(params.active));
  const v = state.values(form, dflts);
  const experts = Number(v["model.n_expert"]) > 0 && v["model.top_k"] != null ? ` · top-${v["model.top_k"]} of ${v["model.n_expert"]} experts` : "";
  out("params.active_note", `${fmt.percent(params.active / params.total)} of the weights${experts}`);
}

/** Cached positions at full context (the engine's, from the attention kind's KV bound): the whole
 * block, or a window of the last positions when the kind bounds the cache (sliding attention). */
function cachedPositions(analysis) {
  const s = analysis?.settings || {};
  const n = s.kv_cache_tokens, block = s.seq_len;
  if (!Number.isFinite(n)) return { n: null, note: "" };
  return { n, note: n < block ? `window ${fmt.int(n)}` : `${fmt.int(n)} tokens` };
}

function renderAnalysis(analysis, queue) {
  renderParams(analysis?.params);
  const f = analysis?.flops || {};
  out("flops.per_token_forward", fmt.flops(f.per_token_forward));
  out("flops.per_token_train", fmt.flops(f.per_token_train));
  out("flops.per_step_train", fmt.flops(f.per_step_train));
  out("kv_cache_per_token", fmt.bytes(analysis?.kv_cache_per_token));
  const ctx = cachedPositions(analysis);
  const kv = analysis?.kv_cache_per_token;
  // The engine's own figure when it gives one (window-aware); else per token × cached positions.
  const full = analysis?.kv_cache ?? (kv != null && Number.isFinite(ctx.n) ? kv * ctx.n : null);
  out("kv_cache_full_context", fmt.bytes(full));
  out("kv_cache_context_note", full != null && ctx.note ? `(${ctx.note})` : "");
  const m = analysis?.memory || {};
  for (const k of ["weights", "gradients", "optimizer", "activations", "train_total"]) out(`memory.${k}`, fmt.bytes(m[k]));

  const budgetEl = document.getElementById("budget");
  const budget = budgets[queue];
  if (m.train_total != null && budget) {
    const frac = m.train_total / budget;
    bar("budget", frac);
    out("budget.pct", `${fmt.percent(frac, frac < 0.01 ? 2 : frac < 0.1 ? 1 : 0)} of the ${queue.toUpperCase()} budget`);
    out("budget.of", `limit ${fmt.bytes(budget)}`);
    budgetEl.classList.toggle("over", frac > 1);
    budgetEl.classList.toggle("warn", frac > 0.75 && frac <= 1);
  } else {
    bar("budget", 0);
    out("budget.pct", "—");
    out("budget.of", "of the queue's budget");
    budgetEl.classList.remove("over", "warn");
  }
}

function renderData(data, vocabSize) {
  out("data.name", data?.name || "—");
  out("vocab_size", fmt.int(vocabSize ?? data?.vocab_size));
  out("data.n_tokens", data?.n_tokens != null ? fmt.count(data.n_tokens) : "—");
  out("data.split", data?.train_tokens != null ? `${fmt.count(data.train_tokens)} / ${fmt.count(data.val_tokens)}` : "—");
  out("data.description", data?.description || "");
}

function renderErrors(errors) {
  const names = new Set(state.inputs(form).map((el) => el.dataset.field));
  // Under each field: set or clear.
  for (const box of form.querySelectorAll("[data-errors-for]")) {
    const name = box.dataset.errorsFor;
    if (name === "name") continue;  // the job name is checked on submit only
    const msg = isHidden(name) ? null : errors[name];
    box.textContent = msg || "";
    box.closest(".field")?.classList.toggle("has-error", Boolean(msg));
  }
  // In the panel: every error; those that match no visible field say which setting they concern.
  const list = document.getElementById("panel-errors");
  list.innerHTML = "";
  for (const [key, msg] of Object.entries(errors)) {
    const li = document.createElement("li");
    const wrap = form.querySelector(`[data-field-wrap="${CSS.escape(key)}"]`);
    const label = names.has(key) && wrap ? wrap.querySelector("label")?.textContent : null;
    const code = document.createElement("code");
    code.textContent = label ? `${label} (${key})` : key;
    li.append(code, msg);
    list.append(li);
  }
  document.getElementById("panel-checks").hidden = Object.keys(errors).length === 0;
}

// ------------------------------------------------------------------ estimating
async function estimate() {
  const { spec, errors: allLocal } = state.readSpec(form, dflts);
  // A hidden field does not apply; a half-typed value left in it must not block the estimate.
  const local = Object.fromEntries(Object.entries(allLocal).filter(([name]) => !isHidden(name)));
  const mine = ++requestNo;
  inflight?.abort();
  inflight = new AbortController();
  panel.classList.add("stale");
  setEstimateState("busy", "estimating…");
  let res;
  try {
    res = await api.estimate(spec, { signal: inflight.signal });
  } catch (err) {
    if (err.name === "AbortError" || mine !== requestNo) return;
    panel.classList.remove("stale");
    report.schedule(reportModel(spec), 0);
    if (err instanceof ApiError && err.body?.errors) {
      renderErrors({ ...err.body.errors, ...local });
      setEstimateState("invalid", "invalid settings");
    } else {
      setEstimateState("invalid", err instanceof ApiError ? `server error (${err.status})` : "offline: estimate unavailable");
    }
    return;
  }
  if (mine !== requestNo) return;
  panel.classList.remove("stale");
  if (res.vocab_size != null) lastVocab = res.vocab_size;
  report.schedule(reportModel(spec), 0);
  updateCompareLink();
  const errors = { ...(res.errors || {}), ...local };
  renderErrors(errors);
  renderAnalysis(res.analysis, res.queue || guessQueue());
  renderData(res.data, res.vocab_size);
  out("queue", (res.queue || guessQueue()).toUpperCase());
  const n = Object.keys(errors).length;
  setEstimateState(n ? "invalid" : "ok", n ? `${n} problem${n > 1 ? "s" : ""} to fix` : "valid");
}

function guessQueue() {
  const device = form.querySelector('[data-field="train.device"]');
  return device && device.value === "cuda" ? "gpu" : "cpu";
}

function scheduleEstimate(delay = 250) {
  clearTimeout(timer);
  timer = setTimeout(estimate, delay);
}

// ------------------------------------------------------------------ fields that apply
const showIfCache = new Map();

function showIfOf(el) {
  const raw = el.dataset.showIf;
  if (!raw) return null;
  if (!showIfCache.has(raw)) {
    try { showIfCache.set(raw, JSON.parse(raw)); } catch { showIfCache.set(raw, null); }
  }
  return showIfCache.get(raw);
}

function isHidden(name) {
  return Boolean(form.querySelector(`[data-field-wrap="${CSS.escape(name)}"]`)?.hidden);
}

/** Show the fields that apply to the current values, hide the rest (their values are still sent). */
function applyVisibility() {
  const current = state.values(form, dflts);
  const source = current["data.source"];
  for (const wrap of form.querySelectorAll("[data-field-wrap]")) {
    const el = wrap.querySelector("[data-field]");
    if (!el) continue;
    const name = el.dataset.field;
    const showIf = showIfOf(el);
    let shown = true;
    if (showIf) shown = state.showIfHolds(showIf, current);
    else if (name in SHOWN_FOR_SOURCE && source !== undefined) shown = SHOWN_FOR_SOURCE[name](source);
    wrap.hidden = !shown;
    if (!shown && wrap.classList.contains("has-error")) {
      // An error about a field that no longer applies is stale.
      wrap.classList.remove("has-error");
      const box = wrap.querySelector("[data-errors-for]");
      if (box) box.textContent = "";
    }
  }
  // A group whose fields are all hidden hides its heading too.
  for (const group of form.querySelectorAll(".field-group")) {
    const wraps = group.querySelectorAll("[data-field-wrap]");
    group.hidden = wraps.length > 0 && [...wraps].every((w) => w.hidden);
  }
}

// ------------------------------------------------------------------ events
function onChange(e) {
  if (!e.target.matches("[data-field]")) return;
  applyVisibility();
  syncURL();
  scheduleEstimate();
}

form.addEventListener("input", onChange);
form.addEventListener("change", onChange);

document.getElementById("presets").addEventListener("click", (e) => {
  const link = e.target.closest("a[data-preset]");
  if (!link) return;
  e.preventDefault();
  const values = state.queryValues(new URL(link.href).search);
  state.apply(form, dflts, values);  // values for fields this engine lacks are skipped
  preset = null;
  applyVisibility();
  syncURL();
  scheduleEstimate(0);
});

form.addEventListener("submit", () => {
  const btn = document.getElementById("launch");
  // Disable after the browser has captured the submission, so a double click queues one job.
  setTimeout(() => { btn.disabled = true; btn.textContent = "Launching…"; }, 0);
});

window.addEventListener("pageshow", () => {
  const btn = document.getElementById("launch");
  btn.disabled = false;
  btn.textContent = "Launch training";
});

document.getElementById("report-copy-link")?.addEventListener("click", async (e) => {
  const btn = e.currentTarget;
  try { await navigator.clipboard.writeText(location.href); btn.textContent = "Copied ✓"; } catch { btn.textContent = "Copy the address bar"; }
  setTimeout(() => { btn.textContent = "Copy link"; }, 1500);
});

applyVisibility();
syncURL();
scheduleEstimate(0);
