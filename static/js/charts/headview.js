// The head view (BertViz-style) of one head on a <canvas>: queries on the left, keys on the right, a
// line for each pair whose opacity is its weight. SVG with one element a line stalls and, built with
// spreads, overflowed the call stack from 512 tokens on; here a region of any size is one pass over
// its bytes, the strongest lines kept (at most MAX_LINES), drawn in a few strokes by opacity.
// Hovering a token keeps only its lines; tokens are labelled when the region is small enough to read.
import { weightOf } from "./headmap.js";

const MAX_LINES = 20000;
const BUCKETS = 12;             // opacity levels: one stroke each
const LABEL_ROWS = 80;          // tokens labelled when a side has at most this many
const LABEL_W = 78;

export class HeadView {
  constructor(canvas, { onState = () => {} } = {}) {
    this.canvas = canvas;
    this.onState = onState;
    this.region = null;
    this.hover = null;
    canvas.addEventListener("pointermove", (e) => this.pointer(e));
    canvas.addEventListener("pointerleave", () => { if (this.hover) { this.hover = null; this.draw(); } });
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  /**
   * The region of a map to show: bytes (the whole map, row-major, nq × nk cells of block bq × bk
   * from (q0, k0)), the map's meta, the tokens, and the visible part {q0, q1, k0, k1}.
   */
  show(bytes, meta, tokens, view) {
    this.region = { bytes, meta, tokens, view };
    this.hover = null;
    this.lines = this.pick();
    this.draw();
  }

  /** The lines worth drawing: cells of the visible part above a threshold that keeps ≤ MAX_LINES. */
  pick() {
    const { bytes, meta, view } = this.region;
    const [bq, bk] = meta.block, nk = meta.shape[1];
    const i0 = Math.floor((view.q0 - meta.q[0]) / bq), i1 = Math.ceil((view.q1 - meta.q[0]) / bq);
    const j0 = Math.floor((view.k0 - meta.k[0]) / bk), j1 = Math.ceil((view.k1 - meta.k[0]) / bk);
    const hist = new Uint32Array(256);
    let max = 0;
    for (let i = i0; i < i1; i++) {
      const row = i * nk;
      for (let j = j0; j < j1; j++) {
        const b = bytes[row + j];
        hist[b]++;
        if (b > max) max = b;
      }
    }
    // the lowest byte whose count from the top fits; never below 0.1% of the weight (byte 102 ≈ 0.001)
    let cut = 256, kept = 0;
    while (cut > 102 && kept + hist[cut - 1] <= MAX_LINES) { cut--; kept += hist[cut]; }
    cut = Math.min(cut, 255);  // the very strongest are drawn even when they alone are too many
    const q = [], k = [], w = [];
    const top = weightOf(max) || 1;
    for (let i = i0; i < i1; i++) {
      const row = i * nk;
      for (let j = j0; j < j1; j++) {
        const b = bytes[row + j];
        if (b >= cut && b > 0) { q.push(i); k.push(j); w.push(weightOf(b) / top); }
      }
    }
    this.onState({ lines: q.length, cut: weightOf(cut) });
    return { q, k, w, i0, i1, j0, j1, cut };
  }

  pointer(e) {
    if (!this.region) return;
    const r = this.canvas.getBoundingClientRect();
    const x = e.clientX - r.left, y = e.clientY - r.top;
    const g = this.geometry();
    const side = x < g.w / 2 ? "q" : "k";
    const n = side === "q" ? g.nq : g.nk;
    const i = Math.max(0, Math.min(n - 1, Math.floor((y - g.top) / g.h * n)));
    if (!this.hover || this.hover.side !== side || this.hover.i !== i) {
      this.hover = { side, i };
      this.draw();
    }
  }

  geometry() {
    const { i0, i1, j0, j1 } = this.lines;
    const w = this.canvas.clientWidth || 300, h = this.canvas.clientHeight || 400;
    const labels = Math.max(i1 - i0, j1 - j0) <= LABEL_ROWS;
    const pad = labels ? LABEL_W : 36;
    return { w, h: h - 12, top: 6, nq: i1 - i0, nk: j1 - j0, x0: pad, x1: w - pad, labels, full: h };
  }

  draw() {
    if (!this.region || !this.lines) return;
    const dpr = window.devicePixelRatio || 1;
    const g = this.geometry();
    const c = this.canvas;
    if (c.width !== Math.round(g.w * dpr) || c.height !== Math.round(g.full * dpr)) {
      c.width = Math.round(g.w * dpr); c.height = Math.round(g.full * dpr);
    }
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, g.w, g.full);
    const { q, k, w, i0, j0 } = this.lines;
    const yq = (i) => g.top + (i - i0 + 0.5) / g.nq * g.h;
    const yk = (j) => g.top + (j - j0 + 0.5) / g.nk * g.h;
    const hv = this.hover;
    const focus = hv ? (n) => (hv.side === "q" ? q[n] - i0 === hv.i : k[n] - j0 === hv.i) : null;
    // one path per opacity level
    const paths = Array.from({ length: BUCKETS }, () => new Path2D());
    const hot = new Path2D();
    const linked = new Set();
    for (let n = 0; n < q.length; n++) {
      if (focus && focus(n)) {
        hot.moveTo(g.x0, yq(q[n])); hot.lineTo(g.x1, yk(k[n]));
        linked.add(hv.side === "q" ? k[n] - j0 : q[n] - i0);
        continue;
      }
      const bucket = Math.min(BUCKETS - 1, Math.floor(w[n] * BUCKETS));
      paths[bucket].moveTo(g.x0, yq(q[n])); paths[bucket].lineTo(g.x1, yk(k[n]));
    }
    ctx.lineWidth = 1;
    // many rows a pixel: fainter lines, so that where they bunch up reads as density, not a fill
    const dense = Math.max(0.05, Math.min(1, g.h / Math.max(g.nq, g.nk) / 4));
    for (let b = 0; b < BUCKETS; b++) {
      ctx.strokeStyle = `rgba(79, 70, 229, ${((b + 0.5) / BUCKETS * (focus ? 0.12 : 0.85) * dense).toFixed(3)})`;
      ctx.stroke(paths[b]);
    }
    if (focus) {
      ctx.strokeStyle = "rgba(219, 39, 119, 0.85)";
      ctx.lineWidth = 1.5;
      ctx.stroke(hot);
    }
    // the two columns of tokens
    const { tokens, meta } = this.region;
    const [bq, bk] = meta.block;
    ctx.font = `${Math.max(8, Math.min(12, g.h / Math.max(g.nq, g.nk) - 1))}px ui-monospace, SFMono-Regular, Menlo, monospace`;
    ctx.textBaseline = "middle";
    const column = (n, y, x, align, side, first, block, origin) => {
      ctx.textAlign = align;
      const every = g.labels ? 1 : Math.ceil(n / (g.h / 14));
      for (let i = 0; i < n; i += every) {
        const p = origin + (first + i) * block;
        const on = hv && hv.side === side && hv.i === i;
        const near = hv && hv.side !== side && linked.has(i);
        ctx.fillStyle = on ? "#db2777" : near ? "#4f46e5" : "#3f3f46";
        const text = g.labels && block === 1 ? clip(tokens[p] ?? "", 10) : String(p);
        ctx.fillText(text, x, y(first + i));
      }
    };
    column(g.nq, yq, g.x0 - 4, "right", "q", i0, bq, meta.q[0]);
    column(g.nk, yk, g.x1 + 4, "left", "k", j0, bk, meta.k[0]);
    if (hv) {  // the hovered token's label, even where labels are thinned out
      const n = hv.side === "q" ? i0 + hv.i : j0 + hv.i;
      const p = (hv.side === "q" ? meta.q[0] + n * bq : meta.k[0] + n * bk);
      const y = hv.side === "q" ? yq(n) : yk(n);
      ctx.fillStyle = "#db2777";
      ctx.textAlign = hv.side === "q" ? "right" : "left";
      const label = `${p} ${tokens[p] ?? ""}`;
      ctx.fillText(clip(label, 14), hv.side === "q" ? g.x0 - 4 : g.x1 + 4, y);
    }
    c.dataset.lines = String(q.length);
    c.dataset.region = `${this.region.view.q0},${this.region.view.q1},${this.region.view.k0},${this.region.view.k1}`;
  }
}

function clip(s, n) {
  return s.length > n ? s.slice(0, n - 1) + "…" : s;
}
