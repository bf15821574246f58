// A Plotly line chart fed point by point: points are buffered and drawn in passes (at most ten a
// second, see scheduleFlush; Plotly.extendTraces), so a replay of thousands of events costs one
// redraw, not thousands.

import { AXIS, CONFIG, THEME } from "./theme.js";

const MAX_DRAWN = 20000; // beyond this many points a trace is drawn thinned (every k-th point)

export function baseLayout(extra = {}) {
  return {
    ...THEME,
    margin: { l: 48, r: 12, t: 8, b: 34 },
    hovermode: "x unified",
    showlegend: false,
    xaxis: { ...AXIS, title: { text: "step", font: { size: 11 } }, rangemode: "tozero" },
    yaxis: { ...AXIS },
    ...extra,
  };
}

// Live charts share one drawing budget: every chart with new points is drawn in the same pass,
// at most every DRAW_MIN_INTERVAL_MS, and after a pass the page waits four times as long as it
// took (drawing takes at most a fifth of the time: a 60 ms pass waits 240 ms; the browser's own
// painting comes on top). Events may come 40 times a second; redrawing thousands of points that
// often would take a core from a page (and from a worker training on the same machine: a tiny
// job's retry in the e2e test took 158 s drawing every frame, 113 s waiting twice a pass's time,
// 43 s waiting four times).
const DRAW_MIN_INTERVAL_MS = 100;
const DRAW_WAIT_FACTOR = 4;
const queued = new Set();
let passPending = false;
let nextPassAt = 0;

function drawPass() {
  passPending = false;
  const t0 = performance.now();
  const charts = [...queued];
  queued.clear();
  for (const chart of charts) {
    try {
      chart.flush();
    } catch (err) {
      console.error(err); // one broken chart must not stop the others
    }
  }
  const now = performance.now();
  nextPassAt = now + Math.max(DRAW_MIN_INTERVAL_MS, DRAW_WAIT_FACTOR * (now - t0));
}

/** Whether every chart has drawn all it was given (the e2e tests wait for it before screenshots). */
export function chartsIdle() {
  return !passPending && queued.size === 0;
}
window.chartsIdle = chartsIdle;

/** Call ``chart.flush()`` once in the next drawing pass, however many updates arrive first
 * (``chart.flush`` must reset ``chart.scheduled``). */
export function scheduleFlush(chart) {
  if (chart.scheduled) return;
  chart.scheduled = true;
  queued.add(chart);
  if (passPending) return;
  passPending = true;
  let done = false;
  const run = () => {
    if (done) return;
    done = true;
    drawPass();
  };
  setTimeout(() => {
    requestAnimationFrame(run);
    setTimeout(run, 300); // a hidden tab gets no animation frames; draw anyway
  }, Math.max(0, nextPassAt - performance.now()));
}

export class SeriesChart {
  /** traces: Plotly trace objects without x/y. */
  constructor(el, traces, layout, { emptyText = "Waiting for data…", text = false } = {}) {
    this.el = el;
    this.traces = traces;
    this.layout = layout;
    this.xs = traces.map(() => []);
    this.ys = traces.map(() => []);
    this.withText = text; // every point also carries a hover text (trace.text)
    this.texts = traces.map(() => []);
    this.pending = traces.map(() => ({ x: [], y: [], text: [] }));
    this.drawn = false;
    this.scheduled = false;
    this.thinned = false;
    this.onDraw = () => {};
    el.classList.add("chart-empty");
    el.textContent = window.Plotly ? emptyText : "Charts are unavailable (plotly.js did not load).";
  }

  /** Add one point to trace `i`; drawing happens on the next frame. */
  addDataPoint(i, x, y, text = "") {
    if (y === null || y === undefined || !Number.isFinite(y)) return;
    this.xs[i].push(x);
    this.ys[i].push(y);
    this.texts[i].push(text);
    this.pending[i].x.push(x);
    this.pending[i].y.push(y);
    this.pending[i].text.push(text);
    this.schedule();
  }

  count(i) {
    return this.xs[i].length;
  }

  schedule() {
    scheduleFlush(this);
  }

  flush() {
    if (!this.scheduled) return;
    this.scheduled = false;
    if (!window.Plotly) return;
    const needThinning = this.xs.some((x) => x.length > MAX_DRAWN);
    if (!this.drawn || needThinning || this.thinned) {
      this.redraw(needThinning);
    } else {
      const idx = [];
      const update = this.withText ? { x: [], y: [], text: [] } : { x: [], y: [] };
      this.pending.forEach((p, i) => {
        if (!p.x.length) return;
        idx.push(i);
        update.x.push(p.x);
        update.y.push(p.y);
        if (this.withText) update.text.push(p.text);
      });
      if (idx.length) window.Plotly.extendTraces(this.el, update, idx);
    }
    this.pending = this.traces.map(() => ({ x: [], y: [], text: [] }));
    this.onDraw();
  }

  redraw(thin) {
    const data = this.traces.map((t, i) => {
      let x = this.xs[i];
      let y = this.ys[i];
      let text = this.texts[i];
      if (thin && x.length > MAX_DRAWN) {
        const k = Math.ceil(x.length / MAX_DRAWN);
        x = x.filter((_, j) => j % k === 0 || j === x.length - 1);
        y = y.filter((_, j) => j % k === 0 || j === y.length - 1);
        text = text.filter((_, j) => j % k === 0 || j === text.length - 1);
      }
      return { ...t, x: x.slice(), y: y.slice(), ...(this.withText ? { text: text.slice() } : {}) };
    });
    if (!this.drawn) {
      this.el.classList.remove("chart-empty");
      this.el.textContent = "";
      window.Plotly.newPlot(this.el, data, this.layout, CONFIG);
      this.drawn = true;
    } else {
      window.Plotly.react(this.el, data, this.layout, CONFIG);
    }
    this.thinned = thin;
  }

  relayout(update) {
    Object.assign(this.layout, update);
    if (this.drawn && window.Plotly) window.Plotly.relayout(this.el, update);
  }
}
