// Compare page controller: two to four models (a preset, a composer link or a JSON config), one
// shared settings row, and their analyses overlaid. The URL holds everything:
// ?a=preset:llama-2-7b&b=preset:mistral-7b&c=link:preset=gpt2&model.n_layer=6&s.dtype=fp16
import { ApiError } from "./api.js";
import * as fmt from "./format.js";
import { FIT_FORMULA, analyze, buildSettings, deviceOptions, fitTable, footnote, formulas, inferenceMemory, renderMemory,
  renderModelCurves, renderParams, settingsFromQuery, settingsPayload, settingsToQuery } from "./report.js";
import { MODEL_COLORS } from "./charts/analysis_common.js";

const SLOTS = ["a", "b", "c", "d"];
const root = document.getElementById("compare-root");
const presets = JSON.parse(document.getElementById("compare-presets").textContent);
const options = JSON.parse(document.getElementById("analysis-options").textContent);
const $ = (sel) => root.querySelector(sel);

const query = new URLSearchParams(location.search);
let refs = SLOTS.map((k) => query.get(k)).filter(Boolean);
if (refs.length === 0) refs = ["preset:llama-2-7b", "preset:mistral-7b"];
if (refs.length === 1) refs.push("preset:llama-2-7b");
refs = refs.slice(0, 4);
let settings = settingsFromQuery(location.search);
let timer = null;
let requestNo = 0;
let results = [];

// ------------------------------------------------------------------ references <-> models
/** A composer link (or just its query string) -> {preset?, ...model fields}. */
export function parseLink(text) {
  const s = String(text).trim();
  const search = s.includes("?") ? s.slice(s.indexOf("?") + 1) : s;
  const q = new URLSearchParams(search.split("#")[0]);
  const model = {};
  for (const [k, v] of q) {
    if (k === "preset" && v) model.preset = v;
    else if (k.startsWith("model.")) model[k.slice(6)] = v === "" || v === "false" ? false : v === "true" ? true : v;
  }
  return model;
}

function refToModel(ref) {
  if (ref.startsWith("preset:")) return { preset: ref.slice(7) };
  if (ref.startsWith("link:")) return parseLink(ref.slice(5));
  if (ref.startsWith("json:")) return JSON.parse(ref.slice(5));
  throw new Error(`unknown model reference ${ref}`);
}

/** What a user typed into a custom slot -> a reference (a composer link or a JSON object). */
function textToRef(text) {
  const s = text.trim();
  if (s.startsWith("{")) return `json:${JSON.stringify(JSON.parse(s))}`;
  const m = parseLink(s);
  if (!Object.keys(m).length) throw new Error("paste a composer link (…/compose/?model.n_layer=…) or a JSON config");
  const q = new URLSearchParams(s.includes("?") ? s.slice(s.indexOf("?") + 1) : s);
  const kept = new URLSearchParams([...q].filter(([k]) => k === "preset" || k.startsWith("model.")));
  return `link:${kept.toString()}`;
}

function refText(ref) {
  if (ref.startsWith("link:")) return `/compose/?${ref.slice(5)}`;
  if (ref.startsWith("json:")) return JSON.stringify(JSON.parse(ref.slice(5)), null, 1);
  return "";
}

function labels() {
  const names = refs.map((ref, i) => {
    if (ref.startsWith("preset:")) {
      try { const m = refToModel(ref); return m.preset; } catch { return SLOTS[i].toUpperCase(); }
    }
    try {
      const m = refToModel(ref);
      return m.preset ? `${m.preset} (edited)` : `custom ${SLOTS[i].toUpperCase()}`;
    } catch { return `custom ${SLOTS[i].toUpperCase()}`; }
  });
  return names.map((n, i) => (names.indexOf(n) !== i ? `${n} (${SLOTS[i].toUpperCase()})` : n));
}

// ------------------------------------------------------------------ URL
function syncURL() {
  const q = new URLSearchParams();
  refs.forEach((ref, i) => q.set(SLOTS[i], ref));
  for (const [k, v] of settingsToQuery(settings)) q.set(k, v);
  const url = `${location.pathname}?${q.toString().replaceAll("%3A", ":").replaceAll("%2F", "/")}`;
  if (url !== location.pathname + location.search) history.replaceState(null, "", url);
}

// ------------------------------------------------------------------ slots
function renderSlots() {
  const box = document.getElementById("compare-slots");
  box.innerHTML = "";
  const names = labels();
  refs.forEach((ref, i) => {
    const slot = document.createElement("div");
    slot.className = "slot";
    slot.dataset.slot = SLOTS[i];
    slot.style.setProperty("--slot-color", MODEL_COLORS[i]);
    const head = document.createElement("div");
    head.className = "slot-head";
    const title = document.createElement("b");
    title.textContent = `${SLOTS[i].toUpperCase()} · ${names[i]}`;
    head.append(title);
    if (refs.length > 2) {
      const rm = document.createElement("button");
      rm.type = "button";
      rm.className = "btn sm ghost";
      rm.textContent = "Remove";
      rm.addEventListener("click", () => { refs.splice(i, 1); changed(); });
      head.append(rm);
    }
    const select = document.createElement("select");
    select.setAttribute("aria-label", `Model ${SLOTS[i].toUpperCase()}`);
    for (const p of presets) {
      const opt = document.createElement("option");
      opt.value = `preset:${p.name}`;
      opt.textContent = `${p.name} · ${fmt.count(p.params)}`;
      select.append(opt);
    }
    const custom = document.createElement("option");
    custom.value = "custom";
    custom.textContent = "custom: composer link or JSON…";
    select.append(custom);
    const isPreset = ref.startsWith("preset:");
    select.value = isPreset ? ref : "custom";
    const text = document.createElement("textarea");
    text.placeholder = "Paste a composer link (…/compose/?model.n_layer=8&…) or a JSON config ({\"n_layer\": 8, …, \"vocab_size\": 32000})";
    text.hidden = isPreset;
    text.value = refText(ref);
    const err = document.createElement("div");
    err.className = "slot-error";
    const sub = document.createElement("div");
    sub.className = "sub";
    sub.dataset.slotSummary = "";
    select.addEventListener("change", () => {
      if (select.value === "custom") { text.hidden = false; text.focus(); return; }
      refs[i] = select.value;
      changed();
    });
    text.addEventListener("change", () => {
      try { refs[i] = textToRef(text.value); err.textContent = ""; changed(); } catch (e) { err.textContent = e.message; }
    });
    slot.append(head, select, text, sub, err);
    box.append(slot);
  });
  document.getElementById("compare-add").disabled = refs.length >= 4;
}

function changed() {
  syncURL();
  renderSlots();
  schedule();
}

// ------------------------------------------------------------------ analysing
function setState(kind, text) {
  const el = document.getElementById("compare-state");
  el.dataset.state = kind;
  el.textContent = text;
}

function schedule(delay = 250) {
  clearTimeout(timer);
  timer = setTimeout(run, delay);
}

async function run() {
  const mine = ++requestNo;
  root.classList.add("stale");
  setState("busy", "analysing…");
  const names = labels();
  const payloadSettings = settingsPayload(settings);
  results = await Promise.all(refs.map(async (ref, i) => {
    try {
      return { label: names[i], report: await analyze({ model: refToModel(ref), settings: payloadSettings }) };
    } catch (e) {
      const errors = e instanceof ApiError ? e.body?.errors : null;
      return { label: names[i], error: errors ? Object.entries(errors).map(([k, v]) => `${k}: ${v}`).join("; ") : e.message };
    }
  }));
  if (mine !== requestNo) return;
  root.classList.remove("stale");
  render();
}

function render() {
  const slots = document.querySelectorAll(".slot");
  results.forEach((r, i) => {
    const slot = slots[i];
    if (!slot) return;
    slot.querySelector(".slot-error").textContent = r.error || "";
    slot.querySelector("[data-slot-summary]").textContent = r.report
      ? `${fmt.count(r.report.params.total)} params${r.report.params.active < r.report.params.total ? ` · ${fmt.count(r.report.params.active)} active` : ""} · ${r.report.config.n_layer} layers · ${r.report.config.attention} attention`
      : "";
  });
  const models = results.filter((r) => r.report);
  const failed = results.length - models.length;
  if (!models.length) { setState("invalid", "no model could be analysed"); return; }
  setState(failed ? "invalid" : "ok", failed ? `${failed} model${failed > 1 ? "s" : ""} could not be analysed` : `${models.length} models · ${models[0].report.settings.dtype} · batch ${models[0].report.settings.batch_size}`);
  renderDiff(models);
  renderTiles(models);
  const hw = models[0].report.settings.hardware;
  const device = (models[0].report.fit_table || []).find((row) => row.key === hw);
  renderParams($("#chart-params"), models);
  renderMemory($("#chart-memory"), models, deviceOptions(device));
  renderModelCurves($("#chart-kv"), models, "kv_cache");
  renderModelCurves($("#chart-attn"), models, "attention_flops");
  const first = models[0].report;
  const note = models.length > 1 ? [["", `formulas with ${models[0].label}'s numbers; hover a bar for each model's`]] : [];
  footnote($("#fn-params"), formulas(first, ["params.total", "params.active"]), note);
  footnote($("#fn-memory"), formulas(first, ["memory.train_total", "memory.inference.total", "memory.kv_cache"]));
  footnote($("#fn-kv"), [], [["curve", first.curves.formulas?.kv_cache]]);
  footnote($("#fn-attn"), [], [["curve", first.curves.formulas?.attention_flops], ["note", first.curves.note]]);
  footnote($("#fn-fit"), [], [["fit", FIT_FORMULA]]);
  renderFits(models, hw);
  root.dataset.models = String(models.length);
}

const NA = "\u0000n/a";

function show(v) {
  if (v === null || v === undefined) return "auto";
  if (typeof v === "number") return Number.isInteger(v) ? fmt.int(v) : String(v);
  return String(v);
}

function swatch(i) {
  const s = document.createElement("i");
  s.className = "swatch";
  s.style.background = MODEL_COLORS[i % MODEL_COLORS.length];
  return s;
}

function renderDiff(models) {
  const table = document.getElementById("diff-table");
  const all = document.getElementById("diff-all").checked;
  const head = document.createElement("tr");
  const corner = document.createElement("th");
  corner.textContent = "field";
  head.append(corner);
  models.forEach((m, i) => { const th = document.createElement("th"); th.append(swatch(i), m.label); head.append(th); });
  table.tHead.innerHTML = "";
  table.tHead.append(head);
  const body = table.tBodies[0];
  body.innerHTML = "";
  const keys = [...new Set(models.flatMap((m) => Object.keys(m.report.config)))];
  let differing = 0;
  for (const key of keys) {
    // a value that does not apply (a window without sliding attention) shows as "n/a"
    const values = models.map((m) => (m.report.config_applies?.[key] === false ? NA : m.report.config[key]));
    const differs = values.some((v) => JSON.stringify(v) !== JSON.stringify(values[0]));
    if (differs) differing++;
    if (!differs && !all) continue;
    const tr = document.createElement("tr");
    if (differs) tr.className = "differs";
    const th = document.createElement("th");
    th.textContent = key;
    tr.append(th);
    for (const v of values) {
      const td = document.createElement("td");
      td.textContent = v === NA ? "n/a" : show(v);
      if (v === NA) td.className = "muted";
      tr.append(td);
    }
    body.append(tr);
  }
  if (!differing && !all) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = models.length + 1;
    td.className = "muted";
    td.textContent = "The configs are identical.";
    tr.append(td);
    body.append(tr);
  }
  table.dataset.differing = String(differing);
}

function renderTiles(models) {
  const box = document.getElementById("compare-tiles");
  box.innerHTML = "";
  const rows = [
    ["Parameters", (r) => fmt.count(r.params.total), (r) => (r.params.active < r.params.total ? `${fmt.count(r.params.active)} active` : "dense")],
    ["Training FLOPs / token", (r) => fmt.flops(r.flops.per_token_train), (r) => `${fmt.flops(r.flops.per_token_forward)} forward`],
    ["Training memory", (r) => fmt.bytes(r.memory.train_total), (r) => `batch ${r.settings.batch_size} × ${fmt.int(r.settings.seq_len)}`],
    ["Inference memory", (r) => fmt.bytes(inferenceMemory(r)?.total), (r) => `KV ${fmt.bytes(inferenceMemory(r)?.kv_cache)}`],
    ["KV cache / token", (r) => fmt.bytes(r.kv_cache_per_token), (r) => `${fmt.bytes(r.kv_cache)} at ${fmt.int(r.settings.seq_len)}`],
  ];
  for (const [title, value, sub] of rows) {
    const tile = document.createElement("div");
    tile.className = "tile";
    const k = document.createElement("div");
    k.className = "k";
    k.textContent = title;
    tile.append(k);
    models.forEach((m, i) => {
      const line = document.createElement("div");
      line.className = "cmp-line";
      const v = document.createElement("b");
      v.textContent = value(m.report);
      const s = document.createElement("span");
      s.className = "s";
      s.textContent = ` ${sub(m.report)}`;
      line.append(swatch(i), v, s);
      line.title = m.label;
      tile.append(line);
    });
    box.append(tile);
  }
}

function renderFits(models, hw) {
  const box = document.getElementById("fit-per-model");
  box.innerHTML = "";
  models.forEach((m, i) => {
    const wrap = document.createElement("div");
    const h = document.createElement("h4");
    h.append(swatch(i), m.label);
    const tableWrap = document.createElement("div");
    tableWrap.className = "table-wrap";
    const table = document.createElement("table");
    table.className = "table fit-table";
    table.innerHTML = "<thead><tr><th>Device</th><th>Training</th><th>Inference</th><th class=\"num\">Decode ≤</th><th class=\"num\">Prefill ≤</th><th class=\"num\">Time · cost to train</th></tr></thead><tbody></tbody>";
    fitTable(table, m.report, hw);
    tableWrap.append(table);
    wrap.append(h, tableWrap);
    box.append(wrap);
  });
}

// ------------------------------------------------------------------ wiring
buildSettings(document.getElementById("compare-settings"), options, settings, (s) => {
  settings = s;
  syncURL();
  schedule();
});
document.getElementById("diff-all").addEventListener("change", () => { const models = results.filter((r) => r.report); if (models.length) renderDiff(models); });
document.getElementById("compare-add").addEventListener("click", () => {
  if (refs.length >= 4) return;
  const used = new Set(refs);
  const next = presets.find((p) => !used.has(`preset:${p.name}`));
  refs.push(`preset:${(next || presets[0]).name}`);
  changed();
});
document.getElementById("compare-copy-link").addEventListener("click", async (e) => {
  const btn = e.currentTarget;
  try { await navigator.clipboard.writeText(location.href); btn.textContent = "Copied ✓"; } catch { btn.textContent = "Copy the address bar"; }
  setTimeout(() => { btn.textContent = "Copy link"; }, 1500);
});

syncURL();
renderSlots();
schedule(0);
