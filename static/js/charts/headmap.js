// One head's whole attention map on a <canvas>: every query × key cell at full resolution (2,048 ×
// 2,048 = 4 M cells is one 4 MB image, not a 4 M-cell Plotly heatmap), zoomable and pannable in the
// browser without asking the server again. Bytes come from /api/v1/jobs/{id}/attention/head on a log
// scale (engine/introspect/attention_stats.py, encode_log): 0 for a weight under 1e-5, else
// w = 10^((byte − 1)/254·5 − 5). A 256-entry colour table turns bytes into pixels, so switching the
// scale (log over the top four decades, log over all five, linear) repaints without decoding anything.
//
// Nothing here spreads a big array into a call (Math.max(...a), push(...a)): every reduction is a loop.

const RAMP = [[0, [255, 255, 255]], [0.15, [224, 231, 255]], [0.45, [129, 140, 248]], [0.75, [79, 70, 229]], [1, [30, 27, 75]]];
export const FLOOR_DECADES = 5;

export function ramp(t) {
  t = Math.max(0, Math.min(1, t));
  for (let i = 1; i < RAMP.length; i++) {
    const [t1, c1] = RAMP[i];
    const [t0, c0] = RAMP[i - 1];
    if (t <= t1) {
      const f = (t - t0) / (t1 - t0 || 1);
      return c0.map((v, k) => Math.round(v + f * (c1[k] - v)));
    }
  }
  return RAMP[RAMP.length - 1][1];
}

/** The weight a byte stands for (0 for byte 0). */
export function weightOf(b) {
  return b === 0 ? 0 : 10 ** ((b - 1) / 254 * FLOOR_DECADES - FLOOR_DECADES);
}

export const DECADES_SHOWN = 4;  // "log": the map's largest weight down to 1/10,000 of it
const CODES_A_DECADE = 254 / FLOOR_DECADES;

/** 256 colours packed as little-endian RGBA words, for a map whose largest byte is ``maxByte``:
 * "log" (four decades below the largest weight; the rest white), "log5" (every byte, 1e-5 … 1)
 * or "linear" (weight / the largest). */
export function palette(scale, maxByte = 255) {
  const out = new Uint32Array(256);
  const top = weightOf(maxByte) || 1;
  const lo = Math.max(1, maxByte - DECADES_SHOWN * CODES_A_DECADE);
  for (let b = 0; b < 256; b++) {
    let t;
    if (scale === "linear") t = weightOf(b) / top;
    else if (scale === "log5") t = b / 255;
    else t = b === 0 ? 0 : (b - lo) / Math.max(1, maxByte - lo);
    const [r, g, bl] = ramp(t);
    out[b] = (255 << 24) | (bl << 16) | (g << 8) | r;
  }
  return out;
}

export function maxOf(bytes) {
  let m = 0;
  for (let i = 0; i < bytes.length; i++) if (bytes[i] > m) m = bytes[i];
  return m;
}

/** Paint ``bytes`` (rows × cols) through ``lut`` into a canvas of that many pixels. */
export function paintBytes(canvas, bytes, rows, cols, lut) {
  canvas.width = cols;
  canvas.height = rows;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(cols, rows);
  const px = new Uint32Array(img.data.buffer);
  for (let i = 0; i < bytes.length; i++) px[i] = lut[bytes[i]];
  ctx.putImageData(img, 0, 0);
}

const MARGIN = { left: 64, top: 52, right: 8, bottom: 6 };
const LABELS_BELOW = 48;  // token labels on an axis once at most this many positions show

export class HeadMap {
  /**
   * canvas: the visible canvas (sized by CSS; drawn at the device's pixel ratio).
   * onView({q0, q1, k0, k1}): the visible region changed (the head view follows it).
   * onHover(text): what the pointer is over.
   */
  constructor(canvas, { onView = () => {}, onHover = () => {}, fetchDetail = null } = {}) {
    this.canvas = canvas;
    this.onView = onView;
    this.onHover = onHover;
    this.fetchDetail = fetchDetail;  // (region, {signal}) -> {bytes, meta}: a pooled map's region at full resolution
    this.image = document.createElement("canvas");  // the map at one pixel a cell
    this.data = null;
    this.detail = null;             // {bytes, meta, max, image}: a region of a pooled map at full resolution
    this.scale = "log";
    this.drag = null;
    this.bind();
  }

  /** A new map: bytes (Uint8Array nq·nk), meta {q: [q0, q1], k: [k0, k1], block: [bq, bk], shape: [nq, nk]},
   * queries/keys: every token's label. */
  show(bytes, meta, tokens) {
    this.cancelDetail();
    this.detail = null;
    this.data = { bytes, meta, tokens, max: maxOf(bytes), image: this.image };
    this.pooled = null;  // drawn from another map
    this.repaint();
    this.reset();
  }

  /** What the view is drawn from: the detail when it covers the view, else the whole map. */
  source() {
    const d = this.detail, v = this.view;
    if (d && v && d.meta.q[0] <= v.q0 && v.q1 <= d.meta.q[1] && d.meta.k[0] <= v.k0 && v.k1 <= d.meta.k[1]) {
      return { ...d, tokens: this.data.tokens };
    }
    return this.data;
  }

  cancelDetail() {
    clearTimeout(this.detailTimer);
    this.detailController?.abort();
    this.detailController = null;
  }

  /** A pooled map zoomed to at most ``detailSide`` positions a side: fetch that region at full resolution. */
  maybeDetail() {
    const { meta } = this.data;
    if (!this.fetchDetail || (meta.block[0] === 1 && meta.block[1] === 1)) return;
    const v = this.view;
    const q0 = Math.floor(v.q0), q1 = Math.ceil(v.q1), k0 = Math.floor(v.k0), k1 = Math.ceil(v.k1);
    const side = this.detailSide || 2048;
    if (q1 - q0 > side || k1 - k0 > side || this.source() !== this.data) return;
    this.cancelDetail();
    const base = this.data;
    this.detailTimer = setTimeout(async () => {
      const controller = this.detailController = new AbortController();
      this.canvas.dataset.detail = "loading";
      let got;
      try {
        got = await this.fetchDetail({ q0, q1, k0, k1 }, { signal: controller.signal });
      } catch (err) {
        if (err.name !== "AbortError") this.canvas.dataset.detail = "error";
        return;
      }
      if (controller.signal.aborted || this.data !== base) return;
      const image = document.createElement("canvas");
      const max = maxOf(got.bytes);
      paintBytes(image, got.bytes, got.meta.shape[0], got.meta.shape[1], palette(this.scale, max));
      this.detail = { bytes: got.bytes, meta: got.meta, max, image };
      this.pooled = null;
      this.canvas.dataset.detail = `${q0},${q1},${k0},${k1}`;
      this.draw();
      this.notify();
    }, 150);
  }

  setScale(scale) {
    this.scale = scale;
    if (this.data) { this.repaint(); this.draw(); }
  }

  repaint() {
    this.pooled = null;
    for (const d of [this.data, this.detail]) {
      if (d) paintBytes(d.image, d.bytes, d.meta.shape[0], d.meta.shape[1], palette(this.scale, d.max));
    }
  }

  /** The whole map. */
  reset() {
    if (!this.data) return;
    const { meta } = this.data;
    this.zoomTo(meta.q[0], meta.q[1], meta.k[0], meta.k[1]);
  }

  /** Show queries q0..q1 × keys k0..k1 (token positions; clamped to the map). */
  zoomTo(q0, q1, k0, k1) {
    const { meta } = this.data;
    const clamp = (a, b, lo, hi) => {
      const span = Math.max(4, Math.min(hi - lo, b - a));
      let s = Math.max(lo, Math.min(a, hi - span));
      return [s, s + span];
    };
    [q0, q1] = clamp(q0, q1, meta.q[0], meta.q[1]);
    [k0, k1] = clamp(k0, k1, meta.k[0], meta.k[1]);
    this.view = { q0, q1, k0, k1 };
    this.draw();
    this.notify();
    this.maybeDetail();
  }

  notify() {
    const { q0, q1, k0, k1 } = this.view;
    const r = (v) => Math.round(v);
    this.onView({ q0: r(q0), q1: Math.max(r(q0) + 1, r(q1)), k0: r(k0), k1: Math.max(r(k0) + 1, r(k1)) }, this.source());
  }

  zoomBy(factor, cx = 0.5, cy = 0.5) {
    if (!this.data) return;
    const { q0, q1, k0, k1 } = this.view;
    const qs = (q1 - q0) * factor, ks = (k1 - k0) * factor;
    const qc = q0 + (q1 - q0) * cy, kc = k0 + (k1 - k0) * cx;
    this.zoomTo(qc - qs * cy, qc + qs * (1 - cy), kc - ks * cx, kc + ks * (1 - cx));
  }

  size() {
    const dpr = window.devicePixelRatio || 1;
    const w = this.canvas.clientWidth || 600, h = this.canvas.clientHeight || w;
    if (this.canvas.width !== Math.round(w * dpr) || this.canvas.height !== Math.round(h * dpr)) {
      this.canvas.width = Math.round(w * dpr);
      this.canvas.height = Math.round(h * dpr);
    }
    return { w, h, dpr };
  }

  /** The plot's box in CSS pixels. */
  box() {
    const { w, h } = this.size();
    return { x: MARGIN.left, y: MARGIN.top, w: w - MARGIN.left - MARGIN.right, h: h - MARGIN.top - MARGIN.bottom };
  }

  draw() {
    if (!this.data) return;
    const { dpr } = this.size();
    const b = this.box();
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    const src = this.source();
    const { meta } = src;
    const [bq, bk] = meta.block;
    const { q0, q1, k0, k1 } = this.view;
    const W = Math.round(b.w * dpr), H = Math.round(b.h * dpr);
    if ((q1 - q0) / bq > H || (k1 - k0) / bk > W) {
      // more cells than pixels: each pixel shows the largest of its cells, so that a thin diagonal
      // or a sparse column stays visible (averaging would wash it out)
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.drawImage(this.maxPooled(src, W, H), Math.round(b.x * dpr), Math.round(b.y * dpr));
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      this.canvas.dataset.pooled = "max";
    } else {
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(src.image, (k0 - meta.k[0]) / bk, (q0 - meta.q[0]) / bq, (k1 - k0) / bk, (q1 - q0) / bq, b.x, b.y, b.w, b.h);
      this.canvas.dataset.pooled = "";
    }
    ctx.strokeStyle = "#d4d4d8";
    ctx.lineWidth = 1;
    ctx.strokeRect(b.x - 0.5, b.y - 0.5, b.w + 1, b.h + 1);
    if (this.box_) {  // a box being dragged
      ctx.strokeStyle = "#4f46e5";
      ctx.setLineDash([4, 3]);
      ctx.strokeRect(this.box_.x, this.box_.y, this.box_.w, this.box_.h);
      ctx.setLineDash([]);
    }
    this.axes(ctx, b);
    this.canvas.dataset.view = `${Math.round(q0)},${Math.round(q1)},${Math.round(k0)},${Math.round(k1)}`;
  }

  /** The visible part, W × H device pixels, each the largest byte of the cells it covers (cached
   * for the last view). */
  maxPooled(src, W, H) {
    const { bytes, meta, max } = src;
    const [bq, bk] = meta.block, nk = meta.shape[1];
    const { q0, q1, k0, k1 } = this.view;
    const key = `${q0},${q1},${k0},${k1},${W},${H},${this.scale},${src === this.data}`;
    if (this.pooled?.key === key) return this.pooled.canvas;
    const i0 = Math.max(0, Math.floor((q0 - meta.q[0]) / bq)), i1 = Math.min(meta.shape[0], Math.ceil((q1 - meta.q[0]) / bq));
    const j0 = Math.max(0, Math.floor((k0 - meta.k[0]) / bk)), j1 = Math.min(nk, Math.ceil((k1 - meta.k[0]) / bk));
    const fi = H / ((q1 - q0) / bq), fj = W / ((k1 - k0) / bk);
    const oi = (q0 - meta.q[0]) / bq, oj = (k0 - meta.k[0]) / bk;
    const out = new Uint8Array(W * H);
    const xs = new Int32Array(j1 - j0);
    for (let j = j0; j < j1; j++) xs[j - j0] = Math.min(W - 1, Math.max(0, Math.floor((j - oj) * fj)));
    for (let i = i0; i < i1; i++) {
      const y = Math.min(H - 1, Math.max(0, Math.floor((i - oi) * fi)));
      const row = i * nk, line = y * W;
      for (let j = j0; j < j1; j++) {
        const v = bytes[row + j], at = line + xs[j - j0];
        if (v > out[at]) out[at] = v;
      }
    }
    const canvas = this.pooled?.canvas || document.createElement("canvas");
    paintBytes(canvas, out, H, W, palette(this.scale, max));
    this.pooled = { key, canvas };
    return canvas;
  }

  axes(ctx, b) {
    const { tokens } = this.data;
    const { q0, q1, k0, k1 } = this.view;
    ctx.fillStyle = "#52525b";
    ctx.font = "10px ui-monospace, SFMono-Regular, Menlo, monospace";
    const side = (a, z, len, at, vertical) => {
      const n = z - a;
      const labels = n <= LABELS_BELOW;
      const step = labels ? Math.max(1, Math.ceil(n / (len / 11))) : niceStep(n / (len / 70));
      const first = Math.ceil(a / step) * step;
      for (let p = first; p < z; p += step) {
        const f = (p + (labels ? 0.5 : 0) - a) / n;
        const text = labels ? clip(tokens[p] ?? "", vertical ? 9 : 7) : String(p);
        if (vertical) {
          ctx.textAlign = "right"; ctx.textBaseline = "middle";
          ctx.fillText(text, b.x - 4, b.y + f * b.h);
        } else {
          ctx.save();
          ctx.translate(b.x + f * b.w, b.y - 4);
          if (labels) { ctx.rotate(-Math.PI / 2); ctx.textAlign = "left"; ctx.textBaseline = "middle"; } else {
            ctx.textAlign = "center"; ctx.textBaseline = "bottom";
          }
          ctx.fillText(text, 0, 0);
          ctx.restore();
        }
      }
      return at;
    };
    side(q0, q1, b.h, 0, true);
    side(k0, k1, b.w, 0, false);
    ctx.fillStyle = "#a1a1aa";
    ctx.textAlign = "left"; ctx.textBaseline = "top";
    ctx.fillText("key →", 2, 2);
    ctx.fillText("query ↓", 2, 14);
  }

  /** The cell under CSS pixel (x, y), or null. */
  cellAt(x, y) {
    const b = this.box();
    if (x < b.x || y < b.y || x >= b.x + b.w || y >= b.y + b.h) return null;
    const { q0, q1, k0, k1 } = this.view;
    return { q: Math.floor(q0 + (y - b.y) / b.h * (q1 - q0)), k: Math.floor(k0 + (x - b.x) / b.w * (k1 - k0)), fx: (x - b.x) / b.w, fy: (y - b.y) / b.h };
  }

  hoverText(c) {
    const { bytes, meta, tokens } = this.source();
    const [bq, bk] = meta.block;
    const i = Math.floor((c.q - meta.q[0]) / bq), j = Math.floor((c.k - meta.k[0]) / bk);
    if (i < 0 || j < 0 || i >= meta.shape[0] || j >= meta.shape[1]) return "";
    const w = weightOf(bytes[i * meta.shape[1] + j]);
    const show = (p) => `${p} “${tokens[p] ?? ""}”`;
    const value = c.k > c.q ? "masked (a later token)" : w === 0 ? "weight < 1e-5" : `weight ${w < 0.001 ? w.toExponential(2) : w.toFixed(4)}`;
    return bq === 1 && bk === 1 ? `query ${show(c.q)} → key ${show(c.k)} · ${value}` : `queries ${c.q}… → keys ${c.k}… · ${value} (pooled ${bq}×${bk})`;
  }

  bind() {
    const c = this.canvas;
    const pos = (e) => { const r = c.getBoundingClientRect(); return { x: e.clientX - r.left, y: e.clientY - r.top }; };
    c.addEventListener("wheel", (e) => {
      if (!this.data) return;
      const p = pos(e), cell = this.cellAt(p.x, p.y);
      if (!cell) return;
      e.preventDefault();
      this.zoomBy(e.deltaY > 0 ? 1.25 : 0.8, cell.fx, cell.fy);
    }, { passive: false });
    c.addEventListener("pointerdown", (e) => {
      if (!this.data) return;
      const p = pos(e);
      if (!this.cellAt(p.x, p.y)) return;
      c.setPointerCapture(e.pointerId);
      this.drag = { start: p, view: { ...this.view }, box: e.shiftKey };
    });
    c.addEventListener("pointermove", (e) => {
      if (!this.data) return;
      const p = pos(e);
      if (this.drag) {
        const d = this.drag, b = this.box();
        if (d.box) {
          this.box_ = { x: Math.min(d.start.x, p.x), y: Math.min(d.start.y, p.y), w: Math.abs(p.x - d.start.x), h: Math.abs(p.y - d.start.y) };
          this.draw();
        } else {
          const { q0, q1, k0, k1 } = d.view;
          const dq = (p.y - d.start.y) / b.h * (q1 - q0), dk = (p.x - d.start.x) / b.w * (k1 - k0);
          this.zoomTo(q0 - dq, q1 - dq, k0 - dk, k1 - dk);
        }
        return;
      }
      const cell = this.cellAt(p.x, p.y);
      this.onHover(cell ? this.hoverText(cell) : "");
    });
    const end = (e) => {
      const d = this.drag;
      this.drag = null;
      if (d?.box && this.box_) {
        const a = this.cellAt(this.box_.x, this.box_.y), z = this.cellAt(this.box_.x + this.box_.w, this.box_.y + this.box_.h);
        this.box_ = null;
        if (a && z && Math.abs(z.q - a.q) >= 2 && Math.abs(z.k - a.k) >= 2) this.zoomTo(a.q, z.q + 1, a.k, z.k + 1);
        else this.draw();
      }
    };
    c.addEventListener("pointerup", end);
    c.addEventListener("pointercancel", end);
    c.addEventListener("pointerleave", () => this.onHover(""));
    c.addEventListener("dblclick", () => this.reset());
    c.addEventListener("keydown", (e) => {
      if (e.key === "+" || e.key === "=") this.zoomBy(0.8);
      else if (e.key === "-") this.zoomBy(1.25);
      else if (e.key === "0") this.reset();
    });
    new ResizeObserver(() => this.draw()).observe(c);
  }
}

function niceStep(raw) {
  const p = 10 ** Math.floor(Math.log10(Math.max(1, raw)));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

function clip(s, n) {
  return s.length > n ? s.slice(0, n - 1) + "…" : s;
}
