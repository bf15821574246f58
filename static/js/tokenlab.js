// Tokenization lab controller: train/import/delete tokenizers, compare up to four on one text
// (token chips, offsets highlighted in the source, metrics and the cost sentence), replay BPE merges.
// Which tokenizers are compared lives in the URL (`?t=byte,12`), so a comparison is a link.
import { ApiError, LiveSocket, csrfToken, getJSON, postJSON } from "./api.js";
import { ChipColumn, chipText, el, firstEndingAfter } from "./components/token_chips.js";
import * as fmt from "./format.js";

const $ = (id) => document.getElementById(id);
const OPTIONS = JSON.parse($("lab-options").textContent);
const DATASETS = JSON.parse($("lab-datasets").textContent);
const REPLAY_CHARS = 2000;
const REPLAY_POINTS = 48;

export const SAMPLES = {
  prose: "The quick brown fox jumps over the lazy dog. Tokenizers split text into pieces a model can count:\n"
    + "common words become one token, rare ones several. Unbelievably, \"tokenization\" is often 2–3 tokens.",
  code: "def fibonacci(n: int) -> list[int]:\n    \"\"\"The first n Fibonacci numbers.\"\"\"\n    a, b = 0, 1\n"
    + "    out = []\n    for _ in range(n):\n        out.append(a)\n        a, b = b, a + b\n    return out\n",
  multilingual: "English: Good morning!\nFrançais : Bonjour à tous, ça va ?\nDeutsch: Grüße aus München.\n"
    + "Русский: Доброе утро!\nΕλληνικά: Καλημέρα σε όλους.\n中文：早上好，世界。\n日本語：おはようございます。\n"
    + "हिन्दी: सुप्रभात दुनिया।\nالعربية: صباح الخير يا عالم.",
  emoji: "Launch day 🚀🎉! Family: 👨‍👩‍👧‍👦, flags: 🇫🇷🇯🇵, skin tones: 👋🏽👍🏿, and a ♥️ from me 😊.",
};

let catalogue = { builtins: [], tokenizers: [] };
let picks = [];
let results = [];
let columns = [];            // per result: { el, rendered, chips: Map(index -> element) }
let runController = null;
let runTimer = null;
const watched = new Map();   // job id -> LiveSocket

// ------------------------------------------------------------------ helpers
function setState(state, text) {
  const s = $("lab-state");
  s.dataset.state = state;
  s.textContent = text;
}

function errorText(err) {
  if (err instanceof ApiError) {
    const errors = err.body?.errors || {};
    const first = Object.values(errors)[0];
    return first && first !== err.message ? `${err.message}` : err.message;
  }
  return String(err?.message || err);
}

function allTokenizers() {
  return [
    ...catalogue.builtins.map((b) => ({ ...b, id: String(b.id) })),
    ...catalogue.tokenizers.filter((t) => t.status === "ready").map((t) => ({ ...t, id: String(t.id) })),
  ];
}

function labelOf(id) {
  const t = allTokenizers().find((x) => x.id === String(id));
  if (!t) return String(id);
  return t.builtin ? `${t.name} (built-in)` : `${t.name} · ${t.kind} ${fmt.int(t.vocab_size)}`;
}

// ------------------------------------------------------------------ URL state
function readURL() {
  const t = new URLSearchParams(location.search).get("t");
  return t ? t.split(",").filter(Boolean).slice(0, OPTIONS.max_compared) : null;
}

function writeURL() {
  const params = new URLSearchParams(location.search);
  params.set("t", picks.join(","));
  const url = `${location.pathname}?${params.toString().replaceAll("%2C", ",")}`;
  if (url !== location.pathname + location.search) history.replaceState(null, "", url);
}

// ------------------------------------------------------------------ pickers
function renderPickers() {
  const known = allTokenizers();
  const wrap = $("lab-picks");
  wrap.replaceChildren(...picks.map((id, i) => {
    const select = el("select", { "aria-label": `Tokenizer ${String.fromCharCode(65 + i)}`, dataset: { slot: i } },
      el("optgroup", { label: "Built-in" }, ...known.filter((t) => t.builtin).map((t) => el("option", { value: t.id }, labelOf(t.id)))),
      known.some((t) => !t.builtin)
        ? el("optgroup", { label: "Your team's" }, ...known.filter((t) => !t.builtin).map((t) => el("option", { value: t.id }, labelOf(t.id))))
        : null);
    if (!known.some((t) => t.id === id)) select.append(el("option", { value: id }, `${id} (unavailable)`));
    select.value = id;
    select.addEventListener("change", () => { picks[i] = select.value; changed(); });
    const remove = el("button", { type: "button", className: "btn sm ghost", title: "Remove", "aria-label": "Remove",
      onclick: () => { picks.splice(i, 1); changed(); } }, "✕");
    remove.disabled = picks.length <= 1;
    return el("div", { className: "pick" }, el("span", { className: `pick-letter c${i}` }, String.fromCharCode(65 + i)), select, remove);
  }));
  $("lab-add").disabled = picks.length >= OPTIONS.max_compared;
}

function changed() {
  renderPickers();
  writeURL();
  scheduleRun(0);
}

// ------------------------------------------------------------------ tokenizing
function scheduleRun(delay = 350) {
  clearTimeout(runTimer);
  runTimer = setTimeout(run, delay);
}

async function run() {
  const text = $("lab-text").value;
  $("lab-count").textContent = fmt.int(text.length);
  if (!text) {
    results = [];
    renderResults();
    setState("idle", "type or pick a sample");
    return;
  }
  if (text.length > OPTIONS.max_text_chars) {
    setState("invalid", `the text is ${fmt.int(text.length)} characters; the limit is ${fmt.int(OPTIONS.max_text_chars)}`);
    return;
  }
  runController?.abort();
  runController = new AbortController();
  setState("busy", "tokenizing…");
  try {
    const data = await postJSON("/api/v1/tokenize", { tokenizers: picks, text }, { signal: runController.signal });
    results = data.results;
    renderResults(data.comparison, text);
    const n = results.map((r) => fmt.int(r.ids.length)).join(" / ");
    setState("ok", `${fmt.int(text.length)} characters → ${n} tokens`);
    if (replay && replay.text !== text.slice(0, REPLAY_CHARS)) loadReplay();
  } catch (err) {
    if (err.name === "AbortError") return;
    setState("invalid", errorText(err));
  }
}

// ------------------------------------------------------------------ results
const METRICS = [
  ["n_tokens", "Tokens", (v) => fmt.int(v)],
  ["tokens_per_word", "Tokens per word", (v) => num(v, 2)],
  ["tokens_per_char", "Tokens per character", (v) => num(v, 3)],
  ["tokens_per_byte", "Tokens per byte", (v) => num(v, 3)],
  ["compression", "Bytes per token", (v) => num(v, 2)],
  ["unk_rate", "Unknown tokens", (v) => fmt.percent(v, 1)],
  ["byte_fallback_rate", "Byte-fallback tokens", (v) => fmt.percent(v, 1)],
  ["vocab_used", "Share of the vocabulary used", (v) => fmt.percent(v, 2)],
  ["cost_ratio", "Cost vs. the cheapest", (v) => (Number.isFinite(v) ? `${num(v, 2)}×` : "—")],
  ["attention_ratio", "Attention compute vs. the cheapest", (v) => (Number.isFinite(v) ? `${num(v, 2)}×` : "—")],
];

function num(v, digits) {
  return Number.isFinite(v) ? v.toFixed(digits) : "—";
}

/** The comparison rows, one per result (the engine returns them in order), merged into metrics. */
function comparisonRows(comparison) {
  if (Array.isArray(comparison)) return comparison;
  if (comparison && Array.isArray(comparison.rows)) return comparison.rows;
  return [];
}

/** The engine's sentences ("this text costs 1.9× more tokens with A than with B"), most expensive first. */
function costSentences(rows) {
  const said = rows.filter((r) => typeof r.sentence === "string" && r.sentence);
  // A difference under 5% reads as "1.0× more": leave it to the table.
  let shown = said.filter((r) => r.cost_ratio >= 1.05).sort((a, b) => b.cost_ratio - a.cost_ratio);
  if (!shown.length) shown = said.filter((r) => r.cost_ratio === 1).slice(0, 1);
  return shown.map((r) => r.sentence.charAt(0).toUpperCase() + r.sentence.slice(1) + ".");
}

function renderResults(comparison = null, text = "") {
  const rows = comparisonRows(comparison);
  const sentences = results.length > 1 ? costSentences(rows) : [];
  $("lab-cost").hidden = !sentences.length;
  $("lab-cost").replaceChildren(...sentences.map((s) => el("span", {}, s)));
  renderMetrics(rows);
  showSource(text, null);
  columns = results.map((r, i) => new ChipColumn(r, i, String.fromCharCode(65 + i)));
  $("lab-results").replaceChildren(...columns.map((c) => c.el));
  $("lab-results").dataset.count = String(results.length);
}

function renderMetrics(rows) {
  const table = $("lab-metrics");
  table.hidden = !results.length;
  if (!results.length) return;
  const merged = results.map((r, i) => ({ ...r.metrics, ...(rows[i] || {}) }));
  table.querySelector("thead").replaceChildren(el("tr", {}, el("th", {}, "Metric"),
    ...results.map((r, i) => el("th", { className: "num" }, el("span", { className: `pick-letter c${i}` }, String.fromCharCode(65 + i)), ` ${r.name}`))));
  table.querySelector("tbody").replaceChildren(...METRICS.filter(([key]) => merged.some((m) => m[key] !== undefined && m[key] !== null))
    .map(([key, label, f]) => el("tr", { dataset: { metric: key } }, el("th", {}, label),
      ...merged.map((m) => el("td", { className: "num" }, f(m[key]))))));
}

// ------------------------------------------------------------------ hover: offsets in the source
function showSource(text, span) {
  const pre = $("lab-source");
  text = text || $("lab-text").value;
  const note = $("lab-source-note");
  if (!span) {
    pre.textContent = text.length > 3000 ? text.slice(0, 3000) + "…" : text;
    note.textContent = text ? "hover a token" : "";
    return;
  }
  const [s, e] = span;
  const from = text.length > 3000 ? Math.max(0, s - 800) : 0;
  const to = text.length > 3000 ? Math.min(text.length, e + 800) : text.length;
  const mark = el("mark", {}, text.slice(s, e) || "∅");
  pre.replaceChildren(from > 0 ? "…" : "", text.slice(from, s), mark, text.slice(e, to), to < text.length ? "…" : "");
  note.textContent = `characters ${fmt.int(s)}–${fmt.int(e)}`;
  // Scroll the source box only, never the page under the pointer.
  pre.scrollTop = Math.max(0, mark.offsetTop - pre.clientHeight / 2);
}

let lit = [];
function hover(i, k) {
  for (const node of lit) node.classList.remove("lit");
  lit = [];
  if (i === null) return;
  const span = results[i].offsets[k];
  showSource(null, span);
  // The same characters in every column, where those chips are rendered.
  columns.forEach((col) => {
    const offs = col.result.offsets;
    for (let j = firstEndingAfter(offs, span[0]); j < offs.length && offs[j][0] < Math.max(span[1], span[0] + 1); j++) {
      const node = col.nodes[j];
      if (node) { node.classList.add("lit"); lit.push(node); }
    }
  });
}

$("lab-results").addEventListener("mouseover", (e) => {
  const chip = e.target.closest(".chip");
  const column = e.target.closest(".chips");
  if (!chip || !column) return;
  hover(Number(column.dataset.column), Number(chip.dataset.i));
});

// ------------------------------------------------------------------ team tokenizers
async function loadCatalogue() {
  catalogue = await getJSON("/api/v1/tokenizers");
  renderTeamTable();
  renderPickers();
  renderReplayOptions();
}

function statusCell(t) {
  const badge = el("span", { className: `badge status-${{ ready: "succeeded", training: "running", failed: "failed" }[t.status]}` }, t.status);
  if (t.status === "training") {
    const bar = el("div", { className: "progress", dataset: { progress: t.id } }, el("span", { style: "width: 0%" }));
    const eta = el("div", { className: "muted small tabular", dataset: { eta: t.id } }, "queued");
    return el("td", { className: "progress-cell" }, badge, bar, eta);
  }
  if (t.status === "failed") return el("td", {}, badge, el("div", { className: "muted small tok-error" }, t.error));
  return el("td", {}, badge);
}

function renderTeamTable() {
  const rows = catalogue.tokenizers.map((t) => {
    const actions = el("div", { className: "row-actions" });
    if (t.status === "ready") {
      actions.append(
        el("button", { type: "button", className: "btn sm", onclick: () => usePick(String(t.id)) }, "Compare"),
        el("a", { className: "btn sm", href: t.download_url }, "Download"),
        el("a", { className: "btn sm", href: `/compose/?data.tokenizer=file&data.tokenizer_id=${t.id}` }, "Train a model"),
      );
    }
    if (t.job_url) actions.append(el("a", { className: "btn sm ghost", href: t.job_url }, "Job"));
    actions.append(el("button", { type: "button", className: "btn sm danger", onclick: () => remove(t) }, "Delete"));
    return el("tr", { dataset: { tokenizer: t.id, status: t.status } },
      el("td", { className: "name-cell" }, el("strong", {}, t.name), el("div", { className: "sub" }, `#${t.id} · ${t.owner || "—"}`)),
      el("td", {}, el("code", {}, t.kind)),
      el("td", { className: "num" }, t.vocab_size ? fmt.int(t.vocab_size) : "—"),
      el("td", { className: "corpus-cell" }, t.corpus),
      statusCell(t), el("td", { className: "actions-cell" }, actions));
  });
  $("tok-table").querySelector("tbody").replaceChildren(...rows);
  $("tok-table").hidden = !rows.length;
  $("tok-empty").hidden = rows.length > 0;
  for (const t of catalogue.tokenizers) if (t.status === "training" && t.job) watchJob(t.job, t.id);
}

function usePick(id) {
  if (picks.includes(id)) return;
  if (picks.length >= OPTIONS.max_compared) picks[picks.length - 1] = id;
  else picks.push(id);
  changed();
  $("lab").scrollIntoView({ behavior: "smooth", block: "start" });
}

async function remove(t) {
  if (!window.confirm(`Delete tokenizer “${t.name}”?`)) return;
  const res = await fetch(`/api/v1/tokenizers/${t.id}`, { method: "DELETE", headers: { "X-CSRFToken": csrfToken() }, credentials: "same-origin" });
  if (!res.ok && res.status !== 404) { alert(`Could not delete: HTTP ${res.status}`); return; }
  picks = picks.filter((p) => p !== String(t.id));
  if (!picks.length) picks = ["byte"];
  await loadCatalogue();
  changed();
}

/** A training job's progress, live from its websocket: "progress" events carry fraction and ETA. */
function watchJob(jobId, tokenizerId) {
  if (watched.has(jobId)) return;
  const socket = new LiveSocket({
    url: () => `/ws/jobs/${jobId}/?after=0`,
    onMessage(msg) {
      if (msg.type !== "events") return;
      for (const e of msg.events) {
        const bar = document.querySelector(`[data-progress="${tokenizerId}"] > span`);
        const eta = document.querySelector(`[data-eta="${tokenizerId}"]`);
        if (e.kind === "progress" && bar) {
          bar.style.width = `${(e.data.fraction || 0) * 100}%`;
          if (eta) eta.textContent = `${fmt.percent(e.data.fraction)} · ETA ${fmt.duration(e.data.eta)}`;
        } else if (e.kind === "status" && eta) {
          eta.textContent = e.data.status;
          if (["succeeded", "failed", "cancelled"].includes(e.data.status)) {
            socket.stop();
            watched.delete(jobId);
            loadCatalogue();
          }
        }
      }
    },
  }).start();
  watched.set(jobId, socket);
}

// ------------------------------------------------------------------ training and import
function fillSelect(select, entries, selected) {
  select.append(...entries.map(([value, label, title]) => el("option", { value, title }, label)));
  if (selected !== undefined) select.value = selected;
}

function setupTrainForm() {
  fillSelect($("t-kind"), Object.entries(OPTIONS.kinds).map(([k, d]) => [k, k, d]), "bpe");
  fillSelect($("t-norm"), OPTIONS.normalizations.map((n) => [n, n]), "nfc");
  fillSelect($("t-pre"), OPTIONS.pre_tokenizers.map((p) => [p, p]));
  fillSelect($("t-corpus"), [
    ...Object.entries(OPTIONS.corpora).map(([k, d]) => [k, `${k} (built-in)`, d]),
    ...DATASETS.map((d) => [`dataset:${d.id}`, `dataset: ${d.name} (${fmt.bytes(d.size_bytes)})`]),
    ["text", "pasted text"],
  ], "synthetic");
  fillSelect($("t-bytes"), OPTIONS.corpus_sizes.map((b) => [b, `${fmt.bytes(b)}${b > OPTIONS.sync_max_bytes ? " (as a job)" : ""}`]), 1000000);
  const sync = () => {
    const corpus = $("t-corpus").value;
    $("t-text-wrap").hidden = corpus !== "text";
    $("t-bytes-wrap").hidden = !(corpus in OPTIONS.corpora);
    $("t-corpus-help").textContent = OPTIONS.corpora[corpus] || (corpus === "text" ? "the text pasted below" : "one of your team's uploads");
    const kind = $("t-kind").value;
    $("t-kind-help").textContent = OPTIONS.kinds[kind] || "";
    $("t-vocab").disabled = kind === "char" || kind === "byte";
  };
  $("t-corpus").addEventListener("change", sync);
  $("t-kind").addEventListener("change", sync);
  sync();

  $("train-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = e.target;
    const body = {
      name: f.name.value.trim(), kind: f.kind.value, vocab_size: Number(f.vocab_size.value) || 0,
      normalization: f.normalization.value, lowercase: f.lowercase.checked, pre_tokenizer: f.pre_tokenizer.value || null,
      special_tokens: f.special_tokens.value, corpus: f.corpus.value, corpus_bytes: Number(f.corpus_bytes.value),
      text: f.corpus.value === "text" ? f.text.value : "", extra_text: f.extra_text.value,
    };
    const btn = $("train-btn");
    btn.disabled = true;
    btn.textContent = "Training…";
    $("train-error").textContent = "";
    $("train-note").textContent = "";
    try {
      const out = await postJSON("/api/v1/tokenizers", body);
      if (out.job) {
        $("train-note").textContent = `Training as job #${out.job.id} on the ${out.job.queue} queue.`;
      } else {
        $("train-note").textContent = `Trained ${out.name}: ${fmt.int(out.vocab_size)} tokens in its vocabulary.`;
        await loadCatalogue();
        usePick(String(out.id));
        return;
      }
      await loadCatalogue();
    } catch (err) {
      $("train-error").textContent = errorText(err);
    } finally {
      btn.disabled = false;
      btn.textContent = "Train";
    }
  });

  $("import-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = e.target;
    $("import-error").textContent = "";
    if (!form.file.files.length) { $("import-error").textContent = "Choose a tokenizer.json or .model file."; return; }
    const res = await fetch("/api/v1/tokenizers/import", {
      method: "POST", body: new FormData(form), headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" }, credentials: "same-origin",
    });
    const data = await res.json().catch(() => ({}));
    if (!res.ok) { $("import-error").textContent = data.detail || `HTTP ${res.status}`; return; }
    form.reset();
    await loadCatalogue();
    usePick(String(data.id));
  });
}

// ------------------------------------------------------------------ merge replay
function bpeTokenizers() {
  return catalogue.tokenizers.filter((t) => t.status === "ready" && /bpe/.test(t.kind));
}

let replay = null;  // { id, steps, data }

function renderReplayOptions() {
  const select = $("replay-tok");
  const bpe = bpeTokenizers();
  const current = select.value;
  select.replaceChildren(...bpe.map((t) => el("option", { value: t.id }, `${t.name} (${t.kind})`)));
  $("replay-empty").hidden = bpe.length > 0;
  $("replay-body").hidden = !bpe.length;
  select.disabled = !bpe.length;
  if (!bpe.length) return;
  select.value = bpe.some((t) => String(t.id) === current) ? current : String(bpe[0].id);
  if (!replay || String(replay.id) !== select.value) loadReplay();
}

async function loadReplay() {
  const id = $("replay-tok").value;
  const text = ($("lab-text").value || SAMPLES.prose).slice(0, REPLAY_CHARS);
  if (!id) return;
  try {
    const info = await getJSON(`/api/v1/tokenizers/${id}`);
    const n = info.n_merges || 0;
    const steps = [...new Set(Array.from({ length: REPLAY_POINTS }, (_, i) => Math.round((n * i) / (REPLAY_POINTS - 1))))];
    const data = await postJSON(`/api/v1/tokenizers/${id}/merges`, { text, steps });
    replay = { id, text, steps: data.replay.map((r) => r.step), data };
    const slider = $("replay-slider");
    slider.max = String(replay.steps.length - 1);
    slider.value = String(Math.min(replay.steps.length - 1, Math.round(replay.steps.length / 3)));
    showReplay();
  } catch (err) {
    $("replay-label").textContent = errorText(err);
  }
}

// GPT-2's byte-level alphabet (bytes shown as printable characters: ' ' is 'Ġ'), inverted, so a
// byte-level BPE merge reads as text: "Ġ" + "t" -> " t".
const BYTE_OF = (() => {
  const bs = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const map = new Map(bs.map((b) => [String.fromCharCode(b), b]));
  let n = 0;
  for (let b = 0; b < 256; b++) if (!bs.includes(b)) map.set(String.fromCharCode(256 + n++), b);
  return map;
})();

function readablePiece(piece, kind) {
  if (kind !== "bpe") return chipText(piece.replaceAll("▁", " "));
  const bytes = [...piece].map((c) => BYTE_OF.get(c));
  if (bytes.some((b) => b === undefined)) return chipText(piece);
  try {
    return chipText(new TextDecoder("utf-8", { fatal: true }).decode(new Uint8Array(bytes)));
  } catch {
    return bytes.map((b) => (b < 128 ? chipText(String.fromCharCode(b)) : `<${b.toString(16).toUpperCase()}>`)).join("");
  }
}

function showReplay() {
  if (!replay) return;
  const i = Number($("replay-slider").value);
  const r = replay.data.replay[i];
  if (!r) return;
  $("replay-label").textContent = `${fmt.int(r.step)} of ${fmt.int(replay.data.n_merges)} merges · ${fmt.int(r.n_tokens)} tokens`;
  const last = r.step > 0 ? replay.data.merges[r.step - 1] : null;
  const kind = catalogue.tokenizers.find((t) => String(t.id) === String(replay.id))?.kind;
  const show = (p) => readablePiece(p, kind);
  $("replay-merge").textContent = last ? `merge ${fmt.int(r.step)}: ${show(last[0])} + ${show(last[1])} → ${show(last[0] + last[1])}` : "no merges: the base alphabet";
  const shown = (r.display || r.tokens).slice(0, REPLAY_CHARS);
  $("replay-chips").replaceChildren(...shown.flatMap((d, k) => {
    const chip = el("span", { className: `chip c${k % 6}` }, chipText(d));
    return String(d).endsWith("↵") ? [chip, el("br")] : [chip];
  }));
}

$("replay-slider").addEventListener("input", showReplay);
$("replay-tok").addEventListener("change", loadReplay);

// ------------------------------------------------------------------ start
$("lab-text").addEventListener("input", () => {
  $("lab-count").textContent = fmt.int($("lab-text").value.length);
  scheduleRun();
});
$("lab-run").addEventListener("click", () => scheduleRun(0));
$("lab-add").addEventListener("click", () => {
  const next = allTokenizers().map((t) => t.id).find((id) => !picks.includes(id)) || "byte";
  picks.push(next);
  changed();
});
$("lab-samples").addEventListener("click", (e) => {
  const name = e.target.closest("[data-sample]")?.dataset.sample;
  if (!name) return;
  $("lab-text").value = SAMPLES[name];
  scheduleRun(0);
});

setupTrainForm();
picks = readURL() || ["byte", "minilm-wordpiece"];
$("lab-text").value = SAMPLES.prose;
loadCatalogue().then(() => { writeURL(); scheduleRun(0); }).catch((err) => setState("invalid", errorText(err)));

// For tests and the curious.
window.tokenLab = {
  get picks() { return [...picks]; },
  get results() { return results; },
  get columns() { return columns.map((c) => ({ rendered: c.rendered, tokens: c.result.ids.length })); },
};
