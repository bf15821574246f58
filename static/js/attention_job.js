// An attention job's page: a pretrained model on one text. Progress while the worker runs it; then
// from its "attention_heads" event the layer × head grid (each head's map pooled, or coloured by a
// statistic), the statistics by layer, and for the chosen head its whole map at full resolution,
// fetched as raw bytes (/api/v1/jobs/{id}/attention/head), drawn on a canvas (charts/headmap.js)
// with the head view beside it following the map's zoom (charts/headview.js).
import { followJob, renderHead, wireCancel } from "./components/job_page.js";
import { KIND } from "./events.js";
import * as fmt from "./format.js";
import { CONFIG, THEME } from "./charts/theme.js";
import { HeadMap, maxOf, palette, ramp } from "./charts/headmap.js";
import { HeadView } from "./charts/headview.js";

const $ = (id) => document.getElementById(id);
let job = JSON.parse($("job-data").textContent);
const settings = JSON.parse($("attention-data").textContent);
const state = { fraction: (job.step || 0) / 100, eta: null, detail: "", maps: null, heads: null, layer: 0,
                head: 0, colour: "pattern", request: null };

const STAT_INFO = {
  first_token: { label: "first-token share", fmt: (v) => fmt.percent(v), help: "the share of a query's weight on position 0 (an attention sink)" },
  entropy_norm: { label: "normalised entropy", fmt: (v) => v.toFixed(3), help: "entropy ÷ ln(keys seen): 0 = one key, 1 = uniform" },
  entropy: { label: "entropy", fmt: (v) => `${v.toFixed(2)} nats`, help: "−Σ w ln w of a query's row, averaged over queries" },
  distance: { label: "mean distance", fmt: (v) => `${v.toFixed(1)} tokens`, help: "how far back the weight sits, on average" },
  self_token: { label: "own-token share", fmt: (v) => fmt.percent(v), help: "the share of a query's weight on itself" },
};
const CHARTS = ["first_token", "entropy_norm", "distance"];

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
}

// ---------------------------------------------------------------------------- the grid
const CELL = 30, GAP = 3, AXIS_L = 30, AXIS_T = 16;

function decode(b64) {
  const raw = atob(b64);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

function statRange(name) {
  const rows = state.heads.stats[name];
  let lo = Infinity, hi = -Infinity;
  for (const row of rows) for (const v of row) { if (v < lo) lo = v; if (v > hi) hi = v; }
  return [lo, hi];
}

function drawGrid() {
  const d = state.heads;
  const canvas = $("head-grid");
  const L = d.n_layer, H = d.n_head;
  const w = AXIS_L + H * (CELL + GAP), h = AXIS_T + L * (CELL + GAP);
  const dpr = window.devicePixelRatio || 1;
  canvas.width = w * dpr; canvas.height = h * dpr;
  canvas.style.width = `${w}px`; canvas.style.height = `${h}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = "10px ui-monospace, SFMono-Regular, Menlo, monospace";
  ctx.fillStyle = "#71717a";
  ctx.textAlign = "center"; ctx.textBaseline = "bottom";
  for (let hd = 0; hd < H; hd++) ctx.fillText(`H${hd}`, AXIS_L + hd * (CELL + GAP) + CELL / 2, AXIS_T - 3);
  ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (let l = 0; l < L; l++) ctx.fillText(`L${l}`, AXIS_L - 5, AXIS_T + l * (CELL + GAP) + CELL / 2);
  const [, , N] = d.overview.shape;
  if (state.colour === "pattern") {
    if (!state.thumbs) state.thumbs = decode(d.overview.maps);
    const tile = document.createElement("canvas");
    const n = N * N;
    for (let l = 0; l < L; l++) for (let hd = 0; hd < H; hd++) {
      const bytes = state.thumbs.subarray((l * H + hd) * n, (l * H + hd + 1) * n);
      paintTile(tile, bytes, N);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(tile, AXIS_L + hd * (CELL + GAP), AXIS_T + l * (CELL + GAP), CELL, CELL);
    }
  } else {
    const [lo, hi] = statRange(state.colour);
    const rows = d.stats[state.colour];
    for (let l = 0; l < L; l++) for (let hd = 0; hd < H; hd++) {
      const [r, g, b] = ramp((rows[l][hd] - lo) / (hi - lo || 1));
      ctx.fillStyle = `rgb(${r},${g},${b})`;
      ctx.fillRect(AXIS_L + hd * (CELL + GAP), AXIS_T + l * (CELL + GAP), CELL, CELL);
    }
  }
  ctx.strokeStyle = "#db2777"; ctx.lineWidth = 2;
  ctx.strokeRect(AXIS_L + state.head * (CELL + GAP) - 1.5, AXIS_T + state.layer * (CELL + GAP) - 1.5, CELL + 3, CELL + 3);
  const legend = $("grid-legend");
  if (state.colour === "pattern") {
    legend.textContent = `Each head's whole map pooled into ${N} × ${N} cells of ${d.overview.block} × ${d.overview.block} tokens, coloured on a log scale over four decades below its largest cell.`;
  } else {
    const [lo, hi] = statRange(state.colour), info = STAT_INFO[state.colour];
    legend.replaceChildren(Object.assign(document.createElement("span"), { textContent: `${info.fmt(lo)}` }),
      Object.assign(document.createElement("i"), { className: "ramp" }),
      Object.assign(document.createElement("span"), { textContent: `${info.fmt(hi)} · ${info.help}` }));
  }
}

function paintTile(canvas, bytes, n) {
  const tileLut = palette("log", maxOf(bytes));  // each thumbnail from its own largest cell
  canvas.width = n; canvas.height = n;
  const c = canvas.getContext("2d");
  const img = c.createImageData(n, n);
  const px = new Uint32Array(img.data.buffer);
  for (let i = 0; i < bytes.length; i++) px[i] = tileLut[bytes[i]];
  c.putImageData(img, 0, 0);
}

function gridCell(e) {
  const r = $("head-grid").getBoundingClientRect();
  const x = e.clientX - r.left - AXIS_L, y = e.clientY - r.top - AXIS_T;
  const hd = Math.floor(x / (CELL + GAP)), l = Math.floor(y / (CELL + GAP));
  if (x < 0 || y < 0 || hd >= state.heads.n_head || l >= state.heads.n_layer) return null;
  return { layer: l, head: hd };
}

function describeHead(l, hd) {
  const s = state.heads.stats;
  return `L${l} H${hd}: ` + ["first_token", "entropy_norm", "distance"].map((k) => `${STAT_INFO[k].label} ${STAT_INFO[k].fmt(s[k][l][hd])}`).join(" · ");
}

// ---------------------------------------------------------------------------- the chosen head
let map = null, view = null, pendingView = null;

function headStats() {
  const box = $("head-stats");
  if (!state.heads) {
    box.replaceChildren(Object.assign(document.createElement("div"), {
      className: "stat pending", textContent: "Statistics of every head's full map: being computed on the worker…" }));
    return;
  }
  const s = state.heads.stats, l = state.layer, hd = state.head;
  box.replaceChildren(...Object.entries(STAT_INFO).map(([k, info]) => {
    const row = s[k][l];
    let mean = 0;
    for (const v of row) mean += v / row.length;
    const div = document.createElement("div");
    div.className = "stat";
    div.dataset.stat = k;
    div.title = info.help;
    div.innerHTML = `<div class="k"></div><div class="v"></div><div class="m"></div>`;
    div.querySelector(".k").textContent = info.label;
    div.querySelector(".v").textContent = info.fmt(s[k][l][hd]);
    div.querySelector(".m").textContent = `layer mean ${info.fmt(mean)}`;
    return div;
  }));
}

async function choose(layer, head) {
  state.layer = layer; state.head = head;
  history.replaceState(null, "", `#L${layer}H${head}`);
  if (state.heads) drawGrid();
  headStats();
  $("head-title").textContent = `Layer ${layer}, head ${head}`;
  const asked = performance.now();
  const root = $("head-card");
  root.dataset.state = "loading";
  const n = state.maps.n_tokens.toLocaleString("en");
  $("map-status").textContent = `loading the ${n} × ${n} map…`;
  state.request?.abort();
  const controller = state.request = new AbortController();
  let meta, bytes;
  try {
    ({ meta, bytes } = await fetchHead(layer, head, null, controller.signal));
  } catch (err) {
    if (err.name === "AbortError") return;
    if (err.status === 409) {  // the forward has not reached that layer yet: ask again shortly
      root.dataset.state = "waiting";
      $("map-status").textContent = `${err.message} (${fmt.percent(state.fraction)} done)…`;
      setTimeout(() => { if (state.layer === layer && state.head === head && state.request === controller) choose(layer, head); }, 700);
      return;
    }
    root.dataset.state = "error";
    $("map-status").textContent = `could not load the map: ${err.message}`;
    return;
  }
  if (controller.signal.aborted) return;
  const fetched = performance.now();
  map.show(bytes, meta, state.maps.tokens);
  // on screen: the frame after the draw
  requestAnimationFrame(() => {
    const now = performance.now();
    root.dataset.state = "shown";
    root.dataset.head = `${layer},${head}`;
    root.dataset.mapMs = (now - asked).toFixed(1);
    root.dataset.fetchMs = (fetched - asked).toFixed(1);
    root.dataset.serverMs = String(meta.ms);
    root.dataset.bytes = String(bytes.length);
    const [bq, bk] = meta.block;
    $("map-legend").textContent = bq === 1 && bk === 1
      ? `${meta.shape[0].toLocaleString("en")} × ${meta.shape[1].toLocaleString("en")} cells, every weight at full resolution (zoomed out, a pixel shows the largest of its cells)`
      : `${meta.n_tokens.toLocaleString("en")} tokens pooled ${bq} × ${bk} (a cell: the mean mass over its queries); zoom to ${CELLS.toLocaleString("en")} positions or fewer for every weight`;
    $("map-status").textContent = `drawn in ${(now - asked).toFixed(0)} ms (${fmt.bytes(bytes.length)}, server ${meta.ms} ms) · hover for a weight`;
  });
}

function onView(v, source) {
  pendingView = [v, source];
  if (view) return;
  view = requestAnimationFrame(() => {
    view = null;
    const [region, d] = pendingView;
    if (d) headView.show(d.bytes, d.meta, d.tokens, region);
  });
}

// a head's map: the whole map (pooled to at most CELLS a side), or a region of it at full resolution
const CELLS = Number(new URLSearchParams(location.search).get("cells")) || 2048;

async function fetchHead(layer, head, region, signal) {
  const params = new URLSearchParams({ layer, head, cells: CELLS, ...(region || {}) });
  const res = await fetch(`/api/v1/jobs/${job.id}/attention/head?${params}`, { signal, credentials: "same-origin" });
  if (!res.ok) {
    let detail = `HTTP ${res.status}`;
    try { detail = (await res.json()).detail || detail; } catch { /* not JSON */ }
    throw Object.assign(new Error(detail), { status: res.status });
  }
  const meta = JSON.parse(res.headers.get("X-Attention"));
  return { meta, bytes: new Uint8Array(await res.arrayBuffer()) };
}

const headView = new HeadView($("head-view"), {
  onState: ({ lines, cut }) => {
    $("headview-note").textContent = `· ${fmt.count(lines)} lines (weights ≥ ${cut < 0.001 ? cut.toExponential(1) : cut.toFixed(3)}) · hover a token`;
  },
});

// ---------------------------------------------------------------------------- by layer
function layerCharts() {
  if (!window.Plotly) return;
  const d = state.heads, box = $("layer-charts");
  box.replaceChildren();
  for (const k of CHARTS) {
    const div = document.createElement("div");
    div.className = "layer-chart";
    div.dataset.stat = k;
    box.append(div);
    const rows = d.stats[k];
    const x = [], y = [], custom = [];
    rows.forEach((row, l) => row.forEach((v, hd) => { x.push(l); y.push(v); custom.push([l, hd]); }));
    const mean = rows.map((row) => row.reduce((a, b) => a + b, 0) / row.length);
    window.Plotly.newPlot(div, [
      { type: "scatter", mode: "markers", x, y, customdata: custom, marker: { size: 5, color: "rgba(79,70,229,0.45)" },
        hovertemplate: `L%{customdata[0]} H%{customdata[1]}: %{y:.3f}<extra></extra>`, name: "heads" },
      { type: "scatter", mode: "lines", x: mean.map((_, l) => l), y: mean, line: { color: "#db2777", width: 2 }, name: "layer mean", hoverinfo: "skip" },
    ], {
      ...THEME, height: 210, margin: { l: 46, r: 10, t: 28, b: 34 }, showlegend: false,
      title: { text: STAT_INFO[k].label, font: { size: 12 }, x: 0.02 },
      xaxis: { title: { text: "layer", font: { size: 11 } }, zeroline: false },
      yaxis: { zeroline: false, tickformat: k === "first_token" ? ".0%" : undefined },
    }, { ...CONFIG, displayModeBar: false });
    div.on("plotly_click", (e) => { const p = e.points[0]; if (p?.customdata) choose(p.customdata[0], p.customdata[1]); });
  }
}

// ---------------------------------------------------------------------------- events
/** The forward is done: any head's map can be drawn (the statistics follow). */
function showMaps(d) {
  state.maps = d;
  $("attn-results").hidden = false;
  document.querySelector('[data-tile="heads"]').textContent = `${d.n_layer} × ${d.n_head}`;
  document.querySelector('[data-tile="tokens"]').textContent = d.n_tokens.toLocaleString("en");
  map ||= new HeadMap($("head-map"), {
    onView, onHover: (t) => { $("map-status").textContent = t || "\u00a0"; },
    fetchDetail: (region, { signal }) => fetchHead(state.layer, state.head, region, signal),
  });
  map.detailSide = CELLS;
  if (!state.heads) $("grid-blurb").textContent = "Every head's statistics and pooled map are being computed on the worker…";
  // the first layer is there first (the others follow as the forward reaches them)
  const m = /^#L(\d+)H(\d+)$/.exec(location.hash);
  let l = m ? Number(m[1]) : 0, hd = m ? Number(m[2]) : 0;
  if (l >= d.n_layer || hd >= d.n_head) { l = 0; hd = 0; }
  choose(l, hd);
}

/** Every head's statistics and pooled map. */
function showHeads(d) {
  state.heads = d;
  state.thumbs = null;
  document.querySelector('[data-tile="seconds"]').textContent = fmt.duration(d.seconds);
  let sink = 0;
  for (const row of d.stats.first_token) for (const v of row) sink += v / (d.n_layer * d.n_head);
  document.querySelector('[data-tile="sink"]').textContent = fmt.percent(sink);
  $("grid-blurb").textContent = `${d.n_layer} layers × ${d.n_head} heads (sharing ${d.n_kv_head} key-value heads) on ${d.n_tokens.toLocaleString("en")} tokens. Click a head to open its map; hover for its statistics.`;
  $("grid-card").dataset.ready = "yes";
  drawGrid();
  headStats();
  layerCharts();
}

function apply(e) {
  const d = e.data || {};
  if (e.kind === KIND.progress) {
    state.fraction = d.fraction ?? state.fraction;
    state.eta = d.eta ?? null;
    state.detail = d.detail || "";
  } else if (e.kind === KIND.attention_tokens) {
    showMaps(d);
  } else if (e.kind === KIND.attention_heads) {
    showHeads(d);
  } else if (e.kind === KIND.status) {
    job.status = d.status;
    if (d.error) job.error = d.error;
  }
}

$("head-grid").addEventListener("click", (e) => { const c = state.heads && gridCell(e); if (c) choose(c.layer, c.head); });
$("head-grid").addEventListener("mousemove", (e) => {
  const c = state.heads && gridCell(e);
  $("grid-hover").textContent = c ? describeHead(c.layer, c.head) : "\u00a0";
});
$("head-grid").addEventListener("mouseleave", () => { $("grid-hover").textContent = "\u00a0"; });
$("grid-colour").addEventListener("change", () => { state.colour = $("grid-colour").value; if (state.heads) drawGrid(); });
$("map-scale").addEventListener("change", () => map?.setScale($("map-scale").value));
$("zoom-in").addEventListener("click", () => map?.zoomBy(0.5));
$("zoom-out").addEventListener("click", () => map?.zoomBy(2));
$("zoom-reset").addEventListener("click", () => map?.reset());

const update = (fields) => { job = { ...job, ...fields }; renderStatus(); };
wireCancel(job.id, update);
followJob(job.id, { onEvent: apply, onJob: (fields) => { job = { ...job, ...fields }; }, onBatch: renderStatus });

window.attentionJob = { state, settings, choose, get map() { return map; }, headView, maxOf };
renderStatus();
