// Numbers for people: 1.21 M parameters, 3.4 MiB, 2m 05s, "3 minutes ago". Pure functions, no DOM.

const isNum = (v) => typeof v === "number" && Number.isFinite(v);

/** 1234567 -> "1.23 M" (SI: K, M, B, T), three significant digits. */
export function count(n, { unit = "" } = {}) {
  if (!isNum(n)) return "—";
  const abs = Math.abs(n);
  const steps = [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "K"]];
  for (const [size, suffix] of steps) {
    if (abs >= size) return `${sig3(n / size)} ${suffix}${unit}`;
  }
  return `${Number.isInteger(n) ? n : sig3(n)}${unit ? " " + unit : ""}`;
}

/** Split count() into [number, unit] for a big display. */
export function countParts(n) {
  const s = count(n);
  const i = s.indexOf(" ");
  return i < 0 ? [s, ""] : [s.slice(0, i), s.slice(i + 1)];
}

function sig3(x) {
  const abs = Math.abs(x);
  const digits = abs >= 100 ? 0 : abs >= 10 ? 1 : 2;
  return x.toFixed(digits);
}

/** FLOPs with SI prefixes: 2.4e9 -> "2.40 GFLOP". */
export function flops(n) {
  if (!isNum(n)) return "—";
  const steps = [[1e15, "P"], [1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "K"]];
  for (const [size, p] of steps) if (Math.abs(n) >= size) return `${sig3(n / size)} ${p}FLOP`;
  return `${Math.round(n)} FLOP`;
}

/** Bytes in binary units: 1536 -> "1.5 KiB". */
export function bytes(n) {
  if (!isNum(n)) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${Math.round(v)} B` : `${sig3(v)} ${units[i]}`;
}

/** Plain integer with thousands separators. */
export function int(n) {
  return isNum(n) ? Math.round(n).toLocaleString("en-US") : "—";
}

/** A loss or similar: 4 significant digits. */
export function loss(x) {
  if (!isNum(x)) return "—";
  return Math.abs(x) >= 100 ? x.toFixed(1) : x.toPrecision(4);
}

/** Learning rate: 3.0e-4 style. */
export function lr(x) {
  if (!isNum(x)) return "—";
  if (x === 0) return "0";
  return Math.abs(x) >= 0.01 ? x.toPrecision(3) : x.toExponential(2).replace("e-", "e−");
}

export function percent(x, digits = 0) {
  return isNum(x) ? `${(x * 100).toFixed(digits)}%` : "—";
}

/** Seconds -> "1h 02m", "2m 05s", "12.3s". */
export function duration(s) {
  if (!isNum(s) || s < 0) return "—";
  if (s < 10) return `${s.toFixed(1)}s`;
  if (s < 60) return `${Math.round(s)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(Math.round(s % 60)).padStart(2, "0")}s`;
  const h = Math.floor(m / 60);
  return `${h}h ${String(m % 60).padStart(2, "0")}m`;
}

/** ISO time -> "just now", "3 min ago", "2 h ago", "Nov 28". */
export function relative(iso, now = Date.now()) {
  if (!iso) return "—";
  const t = new Date(iso).getTime();
  if (!Number.isFinite(t)) return "—";
  const s = Math.round((now - t) / 1000);
  if (s < 45) return "just now";
  if (s < 90) return "1 min ago";
  const m = Math.round(s / 60);
  if (m < 60) return `${m} min ago`;
  const h = Math.round(m / 60);
  if (h < 24) return `${h} h ago`;
  const d = Math.round(h / 24);
  if (d < 7) return `${d} d ago`;
  return new Date(t).toLocaleDateString(undefined, { month: "short", day: "numeric", year: d > 300 ? "numeric" : undefined });
}

/** ISO time -> local "Nov 28, 14:20:05". */
export function datetime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "—";
  return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
}
