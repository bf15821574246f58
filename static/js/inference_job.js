// An inference job: progress with ETA, then per prompt the generated tokens as chips shaded by
// their probability (hover or click: the likeliest alternatives), the KV-cache measurements side
// by side, the quantisation table and, for encoders, the similarity heatmap. Everything comes from
// the job's events over its websocket, replayed from the start on each connect.
import { followJob, renderHead, wireCancel } from "./components/job_page.js";
import { KIND } from "./events.js";
import * as fmt from "./format.js";
import { el, visible } from "./components/token_text.js";
import { CONFIG, THEME } from "./charts/theme.js";

const $ = (id) => document.getElementById(id);
let job = JSON.parse($("job-data").textContent);
const settings = JSON.parse($("inference-data").textContent);
const state = { fraction: (job.step || 0) / 100, eta: null, detail: "", generation: null, quantization: null };

/** The chip's shade: the accent colour, deeper as the probability rises. */
function shade(p) {
  return `background: rgba(79, 70, 229, ${(0.07 + 0.6 * p).toFixed(3)}); color: ${p > 0.55 ? "#fff" : "var(--text)"}`;
}

const ms = (s) => (Number.isFinite(s) ? `${(1000 * s).toFixed(s < 0.01 ? 2 : 1)} ms` : "—");

// ---------------------------------------------------------------------------- progress
function renderStatus() {
  const status = job.status;
  renderHead(job);
  $("prog-bar").className = `progress lg status-${status}`;
  const shown = status === "succeeded" ? 1 : state.fraction;
  $("prog-bar").firstElementChild.style.width = `${shown * 100}%`;
  $("prog-pct").textContent = fmt.percent(shown);
  $("prog-detail").textContent = status === "running" ? state.detail : "";
  $("prog-eta").textContent = status === "running" ? (state.eta != null ? `ETA ${fmt.duration(state.eta)}` : "starting…") : status;
  $("progress-card").hidden = status === "succeeded";
  document.querySelectorAll("[data-count]").forEach((n) => { n.textContent = fmt.count(Number(job.params || n.dataset.count)); });
}

// ---------------------------------------------------------------------------- completions
function renderCompletions(gen) {
  const box = $("completions");
  box.replaceChildren();
  $("results-card").hidden = false;
  const encoder = gen.family === "encoder";
  if (encoder) {
    $("results-title").textContent = "Tokens";
    $("results-blurb").textContent = "How the encoder's WordPiece tokenizer reads each prompt ([CLS] and [SEP] added as BERT expects).";
    $("prob-legend").hidden = true;
  }
  gen.results.forEach((r, i) => {
    const text = el("div", { class: "completion-text" }, el("span", { class: "prompt-text", text: encoder ? "" : r.prompt }));
    if (encoder) {
      r.tokens.forEach((t) => text.append(el("span", { class: "chip tok plain", title: `id ${t.id}`, text: visible(t.text) })));
    } else {
      let at = 0;
      r.tokens.forEach((t, j) => {
        const cut = r.stopped_by === "stop" && at >= r.completion.length;
        at += t.text.length;
        text.append(el("span", {
          class: `chip tok${cut ? " cut" : ""}`, style: shade(t.prob), tabindex: "0",
          "data-prompt": i, "data-token": j, "aria-label": `${t.text} p ${t.prob}`,
        }, visible(t.text)));
      });
    }
    const meta = encoder
      ? [`${r.n_prompt_tokens} tokens`, `‖embedding‖ ${r.embedding_norm.toFixed(2)}`]
      : [`${r.n_prompt_tokens} prompt tokens`, `${r.n_new_tokens} generated`];
    const head = el("div", { class: "completion-head" },
      el("span", { class: "completion-n", text: `#${i + 1}` }),
      encoder ? el("span", { class: "mono prompt-line", text: r.prompt }) : null,
      el("span", { class: "muted", text: meta.join(" · ") }),
      encoder ? null : el("span", {
        class: `badge plain ${r.stopped_by === "max_tokens" ? "queue-tag" : "status-succeeded"}`,
        text: { stop: "stop string", end_of_turn: "end of turn" }[r.stopped_by] || "max tokens",
      }),
    );
    const row = el("div", { class: "completion", "data-prompt": i }, head, text);
    if (!encoder) row.append(el("div", { class: "completion-plain", title: "The completion as text, cut before the stop string" },
      el("span", { class: "muted", text: "→ " }), r.completion || "(empty)"));
    box.append(row);
  });
}

// the alternatives of one token, as a small bar list
const pop = $("tok-pop");
let pinned = null;

function showAlternatives(chip) {
  const r = state.generation.results[Number(chip.dataset.prompt)];
  const t = r.tokens[Number(chip.dataset.token)];
  const rows = t.alternatives.map((a) => el("div", { class: `alt${a.id === t.id ? " chosen" : ""}` },
    el("span", { class: "alt-text", text: visible(a.text) }),
    el("span", { class: "alt-bar" }, el("i", { style: `width: ${(100 * a.prob).toFixed(1)}%` })),
    el("span", { class: "alt-p", text: fmt.percent(a.prob, 1) })));
  const inTop = t.alternatives.some((a) => a.id === t.id);
  pop.replaceChildren(
    el("div", { class: "pop-head" }, el("b", { class: "mono", text: visible(t.text) }),
      el("span", { text: ` sampled with p = ${fmt.percent(t.prob, 1)}` })),
    el("div", { class: "pop-sub", text: inTop ? "The likeliest tokens at this step:" : "Not among the likeliest tokens at this step:" }),
    ...rows,
  );
  pop.hidden = false;
  const box = chip.getBoundingClientRect();
  const width = pop.offsetWidth;
  const left = Math.min(window.scrollX + box.left, window.scrollX + document.documentElement.clientWidth - width - 12);
  pop.style.left = `${Math.max(8, left)}px`;
  pop.style.top = `${window.scrollY + box.bottom + 6}px`;
  document.querySelectorAll(".chip.tok.on").forEach((c) => c.classList.remove("on"));
  chip.classList.add("on");
}

function hideAlternatives() {
  if (pinned) return;
  pop.hidden = true;
  document.querySelectorAll(".chip.tok.on").forEach((c) => c.classList.remove("on"));
}

$("completions").addEventListener("mouseover", (e) => {
  const chip = e.target.closest(".chip.tok[data-token]");
  if (chip && !pinned) showAlternatives(chip);
});
$("completions").addEventListener("mouseout", (e) => {
  if (e.target.closest(".chip.tok[data-token]") && !e.relatedTarget?.closest?.(".chip.tok[data-token]")) hideAlternatives();
});
$("completions").addEventListener("focusin", (e) => {
  const chip = e.target.closest(".chip.tok[data-token]");
  if (chip && !pinned) showAlternatives(chip);
});
$("completions").addEventListener("click", (e) => {
  const chip = e.target.closest(".chip.tok[data-token]");
  if (!chip) return;
  pinned = pinned === chip ? null : chip;
  showAlternatives(chip);
  if (!pinned) hideAlternatives();
});
document.addEventListener("click", (e) => {
  if (pinned && !e.target.closest(".chip.tok[data-token]") && !e.target.closest("#tok-pop")) {
    pinned = null;
    hideAlternatives();
  }
});
document.addEventListener("keydown", (e) => { if (e.key === "Escape") { pinned = null; hideAlternatives(); } });

// ---------------------------------------------------------------------------- measurements
function renderSpeed(gen) {
  const m = gen.measurements;
  $("speed-card").hidden = false;
  const table = $("speed-table");
  const tile = (name, text) => { document.querySelector(`[data-tile=${name}]`).textContent = text; };
  if (m.forward) {
    const f = m.forward;
    table.replaceChildren(
      el("thead", {}, el("tr", {}, el("th", { text: "Measurement" }), el("th", { class: "num", text: "Forward pass" }))),
      el("tbody", {},
        el("tr", {}, el("td", { text: "Wall time (all prompts)" }), el("td", { class: "num", text: ms(f.wall_s) })),
        el("tr", {}, el("td", { text: "Tokens / s" }), el("td", { class: "num", text: fmt.int(f.tokens_per_s) })),
        el("tr", {}, el("td", { text: "Peak memory" }), el("td", { class: "num", text: fmt.bytes(f.peak_memory_bytes) }))));
    $("speed-blurb").textContent = "One forward pass per batch of prompts (no generation).";
    $("speed-note").textContent = `Memory: ${f.memory_measured}.`;
    document.querySelector("[data-tile=ttft]").previousElementSibling.textContent = "Forward pass";
    tile("ttft", ms(f.wall_s));
    tile("tps", fmt.int(f.tokens_per_s));
    tile("mem", fmt.bytes(f.peak_memory_bytes));
    return;
  }
  const a = m.with_cache, b = m.without_cache;
  // [label, key, format, lower is better]
  const rows = [
    ["Time to first token", "ttft_s", ms, true],
    ["Tokens / s", "tokens_per_s", (v) => fmt.int(v), false],
    ["Decode time per step", "decode_ms_per_token", (v) => (Number.isFinite(v) ? `${v.toFixed(2)} ms` : "—"), true],
    ["Peak memory", "peak_memory_bytes", fmt.bytes, true],
    ["Wall time", "wall_s", ms, true],
    ["New tokens", "n_new_tokens", fmt.int, null],
  ];
  const head = el("tr", {}, el("th", { text: "Measurement" }), el("th", { class: "num", text: "With KV cache" }));
  if (b) head.append(el("th", { class: "num", text: "Without KV cache" }), el("th", { class: "num", text: "Cache gives" }));
  const body = el("tbody");
  for (const [label, key, f, lower] of rows) {
    const tr = el("tr", { "data-metric": key }, el("td", { text: label }), el("td", { class: "num", text: f(a[key]) }));
    if (b) {
      tr.append(el("td", { class: "num", text: f(b[key]) }));
      let gain = "";
      if (lower !== null && a[key] > 0 && b[key] > 0) {
        const x = lower ? b[key] / a[key] : a[key] / b[key];
        gain = key === "peak_memory_bytes" ? `${(a[key] / b[key]).toFixed(2)}× the memory`
          : x >= 1 ? `${x.toFixed(2)}× faster` : `${(1 / x).toFixed(1 / x >= 10 ? 0 : 2)}× slower`;
        tr.lastChild.after(el("td", { class: `num gain ${key === "peak_memory_bytes" ? "" : x >= 1 ? "up" : "down"}`, text: gain }));
      } else {
        tr.append(el("td", { class: "num", text: "" }));
      }
    }
    body.append(tr);
  }
  table.replaceChildren(el("thead", {}, head), body);
  const same = gen.same_tokens;
  $("speed-note").textContent = [
    b ? (same ? "Both paths sampled the same tokens (same seed): the cache changes the speed, not the text."
      : "The two paths sampled different tokens (floating-point differences can flip a close sample).") : "",
    `Batches: ${gen.batches.map((g) => `[${g.map((i) => `#${i + 1}`).join(", ")}]`).join(" ")} (prompts of one token length run together).`,
    `Memory: ${a.memory_measured}.`,
  ].filter(Boolean).join(" ");
  tile("ttft", ms(a.ttft_s));
  tile("tps", fmt.int(a.tokens_per_s));
  tile("mem", fmt.bytes(a.peak_memory_bytes));
}

function deltaClass(pct) {
  const x = Math.abs(pct);
  return x < 1 ? "good" : x <= 5 ? "ok" : "bad";
}

function renderQuantization(q) {
  $("quant-card").hidden = false;
  if (q.error) {
    $("quant-blurb").textContent = `The table could not be measured: ${q.error}`;
    $("quant-table").replaceChildren();
    return;
  }
  $("quant-blurb").textContent = `Block linears quantised after training; perplexity on ${fmt.int(q.eval_tokens)} held-out tokens of ${q.data}, `
    + `greedy decoding speed over ${q.decode_tokens} tokens at batch 1. Embeddings, the LM head and norms stay fp32.`;
  const gens = Object.fromEntries((q.generations || []).map((g) => [g.method, g]));
  const cols = ["Method", "Bits", "Weights", "Size", "Perplexity", "Δ perplexity", "Tokens / s", "Speed", "Top-1 agreement",
    "Max |Δ logit|", "Same tokens"];
  const head = el("tr", {}, ...cols.map((c, i) => el("th", { class: i ? "num" : "", text: c })));
  const body = el("tbody");
  for (const r of q.rows) {
    const name = r.method === "none" ? "fp32 (none)" : r.method + (r.group_size ? ` · g${r.group_size}` : "");
    if (r.error) {
      body.append(el("tr", { "data-method": r.method }, el("td", { class: "mono", text: name }), el("td", { class: "num", text: r.bits }),
        el("td", { colspan: cols.length - 2, class: "muted", text: r.error })));
      continue;
    }
    const ref = r.method === "none";
    const delta = r.perplexity_change_pct;
    body.append(el("tr", { "data-method": r.method, class: ref ? "ref-row" : "" },
      el("td", { class: "mono", text: name }),
      el("td", { class: "num", text: r.bits }),
      el("td", { class: "num", text: fmt.bytes(r.weight_bytes) }),
      el("td", { class: "num" }, el("span", { class: "ratio-bar" }, el("i", { style: `width: ${Math.min(100, 100 * r.weight_bytes_ratio)}%` })),
        ` ${ref ? "1.00×" : `${r.weight_bytes_ratio.toFixed(2)}×`}`),
      el("td", { class: "num", text: r.perplexity.toFixed(3) }),
      el("td", { class: "num" }, ref ? el("span", { class: "muted", text: "reference" })
        : el("span", { class: `delta ${deltaClass(delta)}`, text: `${delta >= 0 ? "+" : "−"}${Math.abs(delta).toFixed(2)} %` })),
      el("td", { class: "num", text: fmt.int(r.tokens_per_s) }),
      el("td", { class: `num gain ${ref ? "" : r.speedup >= 1 ? "up" : "down"}`, text: `${r.speedup.toFixed(2)}×` }),
      el("td", { class: "num", text: fmt.percent(r.top1_agreement, 1) }),
      el("td", { class: "num", title: `reference logits' std ${r.logit_std}`, text: r.max_abs_logit_diff.toFixed(3) }),
      el("td", { class: "num", title: "Of the tokens sampled for your prompts (same seed), the share equal to fp32's",
        text: ref ? "—" : gens[r.method]?.error ? "n/a" : fmt.percent(gens[r.method]?.same_tokens_fraction, 0) })));
  }
  $("quant-table").replaceChildren(el("thead", {}, head), body);
  renderQuantizedCompletions(q.generations || []);
}

/** Each prompt's completion from fp32 and from every quantised model, one under the other. */
function renderQuantizedCompletions(generations) {
  const box = $("quant-completions");
  box.replaceChildren();
  if (!generations.length || !state.generation) { box.hidden = true; return; }
  box.hidden = false;
  box.append(el("summary", { text: "Your prompts through each quantised model" }));
  state.generation.results.forEach((r, i) => {
    const list = el("div", { class: "qgen" }, el("div", { class: "qgen-prompt mono", text: `#${i + 1} ${r.prompt}` }),
      el("div", { class: "qgen-row" }, el("span", { class: "qgen-m mono", text: "fp32" }), el("span", { class: "mono", text: r.completion })));
    for (const g of generations) {
      list.append(el("div", { class: "qgen-row" }, el("span", { class: "qgen-m mono", text: g.method }),
        el("span", { class: g.error ? "muted" : "mono", text: g.error || g.completions[i] })));
    }
    box.append(list);
  });
}

function renderSimilarity(gen) {
  $("similarity-card").hidden = false;
  const chart = $("similarity-chart");
  if (!window.Plotly) { chart.textContent = "The heatmap is unavailable (plotly.js did not load)."; return; }
  const labels = gen.results.map((r, i) => `${i + 1}. ${r.prompt.length > 28 ? r.prompt.slice(0, 27) + "…" : r.prompt}`);
  const n = labels.length;
  chart.style.height = `${Math.max(260, 70 + 46 * n)}px`;
  window.Plotly.newPlot(chart, [{
    type: "heatmap", z: gen.similarity, x: labels, y: labels, zmin: Math.min(0, ...gen.similarity.flat()), zmax: 1,
    colorscale: [[0, "#f5f6ff"], [0.5, "#a5b4fc"], [1, "#3730a3"]], texttemplate: "%{z:.2f}",
    hovertemplate: "%{y}<br>%{x}<br>cosine %{z:.3f}<extra></extra>", colorbar: { thickness: 12 },
  }], {
    ...THEME, font: { ...THEME.font, size: 12 },
    margin: { l: 210, r: 20, t: 10, b: 120 }, yaxis: { autorange: "reversed", automargin: true },
    xaxis: { tickangle: -30, automargin: true },
  }, { ...CONFIG, displayModeBar: false });
}

// ---------------------------------------------------------------------------- events
function apply(e) {
  const d = e.data || {};
  if (e.kind === KIND.progress) {
    state.fraction = d.fraction ?? state.fraction;
    state.eta = d.eta ?? null;
    state.detail = d.detail || "";
  } else if (e.kind === KIND.start) {
    if (d.params) job.params = d.params;
  } else if (e.kind === KIND.generation) {
    state.generation = d;
    renderCompletions(d);
    renderSpeed(d);
    if (d.family === "encoder") renderSimilarity(d);
  } else if (e.kind === KIND.quantization) {
    state.quantization = d;
    renderQuantization(d);
  } else if (e.kind === KIND.status) {
    job.status = d.status;
    if (d.error) job.error = d.error;
  }
}

const update = (fields) => { job = { ...job, ...fields }; renderStatus(); };
wireCancel(job.id, update);
followJob(job.id, { onEvent: apply, onJob: (fields) => { job = { ...job, ...fields }; }, onBatch: renderStatus });

document.querySelectorAll("code.stop-str").forEach((n) => { n.textContent = visible(n.textContent); });
window.inferenceJob = { state, settings };
renderStatus();
