// The analysis report: settings row, summary, charts and fit table, fed by POST /api/v1/analyze.
// Used by the composer (one model, every attention pattern for comparison) and by the compare
// page (two to four models overlaid). Settings live in the URL as `s.<name>=<value>` when they
// differ from the defaults, so an analysis is a shareable link.
import { ApiError, postJSON } from "./api.js";
import * as fmt from "./format.js";
import { formulas, footnote } from "./charts/analysis_common.js";
import { renderModelCurves, renderPatternCurves } from "./charts/context_curves.js";
import { renderMask, renderPosition } from "./charts/structure.js";
import { inferenceMemory, renderMemory } from "./charts/memory_bars.js";
import { renderParams } from "./charts/params_breakdown.js";

export const analyze = (payload, opts) => postJSON("/api/v1/analyze", payload, opts);

// name -> [label, kind, default, help]; choice lists come from the server's analysis options
export const SETTINGS = {
  dtype: ["Precision", "choice", "bf16", "Activation precision (mixed precision keeps fp32 master weights)."],
  optimizer: ["Optimizer", "choice", "adamw", "Optimizer state per parameter."],
  batch_size: ["Batch", "int", 1, "Sequences per step (training) or served together (inference)."],
  seq_len: ["Sequence", "int", null, "Tokens per sequence; empty = the model's context."],
  n_gpus: ["GPUs", "int", 1, "Devices the model is spread over."],
  sharding: ["Sharding", "choice", "none", "How weights, gradients and optimizer state are split over the GPUs."],
  activation_checkpointing: ["Checkpointing", "bool", false, "Recompute activations in the backward pass."],
  flash_attention: ["Flash attention", "bool", false, "Fused attention: no T×T score matrix kept."],
  quantization: ["Inference weights", "choice", null, "Weight precision when serving (empty = the training precision)."],
  hardware: ["Hardware", "choice", null, "Device to highlight in the fit table and draw in the memory chart."],
  mfu: ["MFU", "float", 0.4, "Model FLOPs utilisation assumed for training time."],
  price_per_gpu_hour: ["$ / GPU-hour", "float", null, "Price for the cost to train."],
  train_tokens: ["Train tokens", "float", null, "Tokens to train on; empty = 20 per parameter (Chinchilla)."],
  vocab_size: ["Vocabulary", "int", null, "Empty = the preset's, or the data's in the composer."],
};

export function defaultSettings() {
  return Object.fromEntries(Object.entries(SETTINGS).map(([k, [, , d]]) => [k, d]));
}

/** Settings from a query string's `s.*` keys (missing ones take the defaults). */
export function settingsFromQuery(search) {
  const q = new URLSearchParams(search);
  const out = defaultSettings();
  for (const [k, [, kind]] of Object.entries(SETTINGS)) {
    if (!q.has(`s.${k}`)) continue;
    const raw = q.get(`s.${k}`);
    if (kind === "bool") out[k] = raw === "true" || raw === "1";
    else if (kind === "int" || kind === "float") out[k] = raw === "" ? null : Number(raw);
    else out[k] = raw === "" ? null : raw;
  }
  return out;
}

/** `s.*` query parameters for the settings that differ from the defaults. */
export function settingsToQuery(settings) {
  const q = new URLSearchParams();
  for (const [k, [, , dflt]] of Object.entries(SETTINGS)) {
    const v = settings[k];
    if (v === dflt || (v == null && dflt == null) || (typeof v === "number" && Number.isNaN(v))) continue;
    q.set(`s.${k}`, v == null ? "" : String(v));
  }
  return q;
}

/** The payload's settings: nulls dropped, so the server's defaults apply. */
export function settingsPayload(settings) {
  return Object.fromEntries(Object.entries(settings).filter(([, v]) => v !== null && v !== "" && !(typeof v === "number" && Number.isNaN(v))));
}

/** Build the settings row into `root`; `onChange(settings)` after each edit. */
export function buildSettings(root, options, values, onChange) {
  root.innerHTML = "";
  for (const [name, [label, kind, , help]] of Object.entries(SETTINGS)) {
    const wrap = document.createElement("label");
    wrap.className = `setting setting-${kind}`;
    wrap.title = help;
    const span = document.createElement("span");
    span.textContent = label;
    let input;
    if (kind === "choice") {
      input = document.createElement("select");
      let choices = options?.[name] || [values[name]];
      if (name === "hardware") choices = [null, ...(options?.devices || []).map((d) => d.key)];
      for (const c of choices) {
        const opt = document.createElement("option");
        opt.value = c ?? "";
        const device = name === "hardware" ? (options?.devices || []).find((d) => d.key === c) : null;
        opt.textContent = c == null ? (name === "hardware" ? "— none —" : "as trained") : device ? device.name.replace(/^NVIDIA /, "") : c;
        input.append(opt);
      }
    } else if (kind === "bool") {
      input = document.createElement("input");
      input.type = "checkbox";
    } else {
      input = document.createElement("input");
      input.type = "number";
      input.step = kind === "int" ? "1" : "any";
      input.min = kind === "int" ? "1" : "0";
      if (name === "seq_len" || name === "vocab_size" || name === "train_tokens" || name === "price_per_gpu_hour") input.placeholder = "auto";
    }
    input.dataset.setting = name;
    input.setAttribute("form", "no-form"); // never submitted with the composer's form
    writeSetting(input, values[name]);
    input.addEventListener(kind === "bool" || kind === "choice" ? "change" : "input", () => onChange(readSettings(root)));
    input.addEventListener("keydown", (e) => { if (e.key === "Enter") e.preventDefault(); });
    if (kind === "bool") wrap.append(input, span); else wrap.append(span, input);
    root.append(wrap);
  }
}

function writeSetting(el, v) {
  if (el.type === "checkbox") el.checked = Boolean(v);
  else el.value = v == null ? "" : String(v);
}

export function readSettings(root) {
  const out = defaultSettings();
  for (const el of root.querySelectorAll("[data-setting]")) {
    const [, kind] = SETTINGS[el.dataset.setting];
    if (kind === "bool") out[el.dataset.setting] = el.checked;
    else if (kind === "int" || kind === "float") out[el.dataset.setting] = el.value.trim() === "" ? null : Number(el.value);
    else out[el.dataset.setting] = el.value === "" ? null : el.value;
  }
  return out;
}

export function writeSettings(root, settings) {
  for (const el of root.querySelectorAll("[data-setting]")) writeSetting(el, settings[el.dataset.setting]);
}

// ------------------------------------------------------------------ numbers
export function longDuration(s) {
  if (s == null || !Number.isFinite(s)) return "—";
  if (s < 3600) return fmt.duration(s);
  const h = s / 3600;
  if (h < 48) return `${h.toFixed(h < 10 ? 1 : 0)} h`;
  const d = h / 24;
  if (d < 730) return `${d.toFixed(d < 10 ? 1 : 0)} days`;
  const y = d / 365.25;
  return y < 1e4 ? `${y.toFixed(y < 10 ? 1 : 0)} years` : `${fmt.count(y)} years`;
}

export function money(x) {
  if (x == null || !Number.isFinite(x)) return "—";
  if (x < 1000) return `$${x.toFixed(x < 10 ? 2 : 0)}`;
  return `$${fmt.count(x)}`;
}

function rate(x) {
  return x == null || !Number.isFinite(x) ? "—" : `${fmt.count(x)} tok/s`;
}

// ------------------------------------------------------------------ fit table
const td = (text, cls) => {
  const el = document.createElement("td");
  if (cls) el.className = cls;
  el.textContent = text;
  return el;
};

function verdictCell(part, extra) {
  const el = document.createElement("td");
  if (!part) { el.textContent = "—"; return el; }
  const badge = document.createElement("span");
  badge.className = `verdict ${part.fits ? "fits" : "nofit"}`;
  badge.textContent = part.fits ? "fits" : "does not fit";
  badge.title = part.verdict || "";
  const sub = document.createElement("div");
  sub.className = "sub";
  sub.textContent = [fmt.bytes(part.memory_needed), extra].filter(Boolean).join(" · ");
  el.append(badge, sub);
  return el;
}

function timeCell(time) {
  const el = td(longDuration(time?.seconds), "num");
  if (time?.cost != null) {
    const sub = document.createElement("div");
    sub.className = "sub";
    sub.textContent = money(time.cost);
    el.append(sub);
  }
  return el;
}

/** One table: a row per device; `selected` highlights the chosen hardware. */
export function renderFitTable(table, report, selected) {
  const body = table.tBodies[0] || table.createTBody();
  body.innerHTML = "";
  for (const row of report.fit_table || []) {
    const tr = document.createElement("tr");
    tr.dataset.device = row.key;
    if (row.key === selected) tr.className = "selected";
    const name = document.createElement("th");
    name.textContent = row.name;
    const mem = document.createElement("div");
    mem.className = "sub";
    mem.textContent = row.memory_available != null ? `${row.n_gpus > 1 ? row.n_gpus + " × " : ""}${fmt.bytes(row.memory_available / (row.n_gpus || 1))}` : "";
    name.append(mem);
    tr.append(name);
    if (row.error) {
      const cell = td(row.error, "muted");
      cell.colSpan = 5;
      tr.append(cell);
      body.append(tr);
      continue;
    }
    const lb = row.train?.largest_batch;
    const train = row.n_gpus > 1 && row.train?.memory_per_gpu != null ? { ...row.train, memory_needed: row.train.memory_per_gpu } : row.train;
    tr.append(
      verdictCell(train, `${row.n_gpus > 1 ? "per GPU · " : ""}${lb ? `batch ≤ ${lb >= 1048576 ? "1M+" : fmt.int(lb)}` : "no batch fits"}`),
      verdictCell(row.inference),
      td(rate(row.inference?.decode_tokens_per_s), "num"),
      td(rate(row.inference?.prefill_tokens_per_s), "num"),
      timeCell(row.time),
    );
    body.append(tr);
  }
}

export const FIT_FORMULA = "decode tok/s ≤ batch × bandwidth / (active params × bytes + KV cache); prefill tok/s ≤ peak FLOP/s / forward FLOPs per token; "
  + "time = train tokens × training FLOPs per token / (peak × MFU × GPUs), train tokens = 20 × params unless set";

/** The memory chart's device lines for a fit-table row (or none). */
export function deviceOptions(row) {
  if (!row) return {};
  const name = row.name.replace(/^NVIDIA /, "");
  return { deviceMemory: row.memory_available, perGpuMemory: row.n_gpus > 1 ? row.memory_available / row.n_gpus : null, deviceName: name };
}

// ------------------------------------------------------------------ one-model report (composer)
export class ReportPanel {
  /** root: the report card; options: analysis options (choices, devices). */
  constructor(root, options, { settings, onSettings } = {}) {
    this.root = root;
    this.options = options;
    this.settings = settings || defaultSettings();
    this.onSettings = onSettings || (() => {});
    this.timer = null;
    this.inflight = null;
    this.requestNo = 0;
    this.model = null;
    this.last = null;
    buildSettings(this.$("#report-settings"), options, this.settings, (s) => {
      this.settings = s;
      this.onSettings(s);
      this.schedule(this.model);
    });
  }

  $(sel) {
    return this.root.querySelector(sel);
  }

  setState(kind, text) {
    const el = this.$("#report-state");
    el.dataset.state = kind;
    el.textContent = text;
  }

  /** Analyse `model` (engine config fields, or {preset, ...}) after the debounce. */
  schedule(model, delay = 250) {
    if (!model) return;
    this.model = model;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.run(), delay);
  }

  async run() {
    const mine = ++this.requestNo;
    this.inflight?.abort();
    this.inflight = new AbortController();
    this.root.classList.add("stale");
    this.setState("busy", "analysing…");
    let report;
    try {
      report = await analyze({ model: this.model, settings: settingsPayload(this.settings) }, { signal: this.inflight.signal });
    } catch (err) {
      if (err.name === "AbortError" || mine !== this.requestNo) return;
      this.root.classList.remove("stale");
      const errors = err instanceof ApiError ? err.body?.errors : null;
      this.setState("invalid", errors ? Object.entries(errors).map(([k, v]) => `${k}: ${v}`).join("; ") : "analysis unavailable");
      return;
    }
    if (mine !== this.requestNo) return;
    this.root.classList.remove("stale");
    this.last = report;
    this.render(report);
    const vocab = report.settings.vocab_size ?? report.config?.vocab_size;
    this.setState("ok", `${fmt.count(report.params.total)} parameters · vocabulary ${fmt.int(vocab)}${this.model?.preset ? ` (${this.model.preset})` : ""} · ${report.settings.dtype} · batch ${report.settings.batch_size} × ${fmt.int(report.settings.seq_len)} tokens`);
  }

  render(r) {
    const out = (key, text) => { for (const el of this.root.querySelectorAll(`[data-out="${key}"]`)) el.textContent = text; };
    const inf = inferenceMemory(r);
    out("report.params_total", fmt.count(r.params.total));
    out("report.params_exact", `${fmt.int(r.params.total)} parameters`);
    out("report.params_active", r.params.active < r.params.total ? `${fmt.count(r.params.active)} active per token` : "dense");
    out("report.flops_train", fmt.flops(r.flops.per_token_train));
    out("report.flops_forward", `${fmt.flops(r.flops.per_token_forward)} forward`);
    const perGpu = r.memory.train_per_gpu;
    out("report.train_memory", fmt.bytes(perGpu && r.settings.n_gpus > 1 ? perGpu.total : r.memory.train_total));
    out("report.train_memory_note", perGpu && r.settings.n_gpus > 1 ? `per GPU (${fmt.bytes(r.memory.train_total)} in all)` : `batch ${r.settings.batch_size}, ${r.settings.optimizer}`);
    out("report.infer_memory", fmt.bytes(inf?.total));
    out("report.infer_memory_note", `weights ${fmt.bytes(inf?.weights)} + KV ${fmt.bytes(inf?.kv_cache)}`);
    out("report.kv_token", fmt.bytes(r.kv_cache_per_token));
    out("report.kv_context", `${fmt.bytes(r.kv_cache)} at ${fmt.int(r.settings.seq_len)} tokens`);
    const device = (r.fit_table || []).find((row) => row.key === r.settings.hardware);
    const models = [{ label: "this model", report: r }];
    renderParams(this.$("#chart-params"), models);
    renderMemory(this.$("#chart-memory"), models, deviceOptions(device));
    renderPatternCurves(this.$("#chart-kv"), r, "kv_cache");
    renderPatternCurves(this.$("#chart-attn"), r, "attention_flops");
    renderFitTable(this.$("#fit-table"), r, r.settings.hardware);
    if (r.structure) {
      this.$("#note-mask").textContent = renderMask(this.$("#chart-mask"), r.structure);
      this.$("#note-position").textContent = renderPosition(this.$("#chart-position"), r.structure);
    }
    const pick = (...keys) => keys.map((k) => [k, r.formulas?.[k]]);
    footnote(this.$("#fn-params"), [...pick("params.total", "params.active"), ...formulas(r, ["params"]).filter(([k]) => k !== "params.total" && k !== "params.active")]);
    footnote(this.$("#fn-memory"), [...pick("memory.train_total", "memory.inference.total"),
      ...formulas(r, ["memory"]).filter(([k]) => !["memory.train_total", "memory.inference.total"].includes(k) && !k.includes("kv_cache"))]);
    footnote(this.$("#fn-kv"), [["curve", r.curves.formulas?.kv_cache], ...pick("memory.kv_cache_per_token", "memory.kv_cache", "memory.inference.kv_cache")]);
    footnote(this.$("#fn-attn"), [["curve", r.curves.formulas?.attention_flops], ["", r.curves.note], ...formulas(r, ["flops"])]);
    footnote(this.$("#fn-fit"), [["fit", FIT_FORMULA], ...formulas(r, ["fit", "time"])]);
    this.root.dataset.params = String(r.params.total);
  }
}

export { renderFitTable as fitTable, renderModelCurves, renderMemory, renderParams, formulas, footnote, inferenceMemory };
