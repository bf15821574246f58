// The composer's state: the form's data-field inputs <-> a {model, data, train} spec <-> the URL.
// Every experiment is a shareable link: the query string holds the fields that differ from the
// engine's defaults (`?model.n_layer=2&train.steps=100`) and the server pre-fills the form from it.

export const SECTIONS = ["model", "data", "train"];

export function inputs(root) {
  return [...root.querySelectorAll("[data-field]")];
}

/** One input's value by its data-type; `error` is set when the text cannot be that type. */
export function readInput(el) {
  const type = el.dataset.type;
  if (type === "bool" || el.type === "checkbox") return { value: el.checked };
  const raw = el.value.trim();
  if (el.dataset.field === "data.dataset") return { value: raw === "" ? null : Number(raw) };
  if (type === "int" || type === "float") {
    if (raw === "") return { value: null, error: "This field is required." };
    const n = Number(raw);
    if (!Number.isFinite(n)) return { value: null, error: "Enter a number." };
    if (type === "int" && !Number.isInteger(n)) return { value: null, error: "Enter a whole number." };
    return { value: n };
  }
  return { value: raw };
}

export function writeInput(el, value) {
  if (el.type === "checkbox") {
    el.checked = value === true || value === "true" || value === "1" || value === "on";
  } else {
    el.value = value === null || value === undefined ? "" : String(value);
  }
}

/**
 * The spec to send to /api/v1/estimate, and the errors found in the browser. A number left empty
 * is an error unless its default is None (`n_kv_head`, `ffn_hidden`: empty = derived), when it is
 * simply left out, as the server's form does.
 */
export function readSpec(root, dflts = {}) {
  const spec = { model: {}, data: {}, train: {} };
  const errors = {};
  for (const el of inputs(root)) {
    const name = el.dataset.field;
    const [section, ...rest] = name.split(".");
    if (!(section in spec)) continue;
    if (el.value.trim() === "" && el.type !== "checkbox" && name in dflts && dflts[name] === null) continue;
    const { value, error } = readInput(el);
    if (error) errors[name] = error;
    else if (value !== null && value !== "") spec[section][rest.join(".")] = value;
  }
  return { spec, errors };
}

/** name -> default value, from the engine's field specs. */
export function defaults(fieldSpecs) {
  return Object.fromEntries((fieldSpecs || []).map((f) => [f.name, f.default]));
}

function sameAsDefault(el, dflt) {
  if (dflt === undefined || dflt === null) {
    return el.type === "checkbox" ? !el.checked : el.value.trim() === "";
  }
  if (el.type === "checkbox") return el.checked === Boolean(dflt);
  const type = el.dataset.type;
  if (type === "int" || type === "float") return el.value.trim() !== "" && Number(el.value) === Number(dflt);
  return el.value === String(dflt);
}

/** Query parameters for the fields that differ from their defaults. */
export function toQuery(root, dflts) {
  const q = new URLSearchParams();
  for (const el of inputs(root)) {
    const name = el.dataset.field;
    if (sameAsDefault(el, dflts[name])) continue;
    // A false checkbox is written empty: Django's CheckboxInput treats any non-empty initial as checked.
    q.set(name, el.type === "checkbox" ? (el.checked ? "true" : "") : el.value.trim());
  }
  return q;
}

/** Replace the address with the form's state; `extra` (URLSearchParams: a preset, the analysis
 * settings `s.*`) goes first, so a shared link restores the report too. */
export function syncURL(root, dflts, extra = null) {
  const params = new URLSearchParams(extra || undefined);
  for (const [k, v] of toQuery(root, dflts)) params.set(k, v);
  const q = params.toString().replaceAll("%2F", "/");
  const url = `${location.pathname}${q ? "?" + q : ""}`;
  if (url !== location.pathname + location.search) history.replaceState(null, "", url);
}

/** Set every field to its default, then the given ones (a preset or a query string). */
export function apply(root, dflts, values) {
  for (const el of inputs(root)) {
    const name = el.dataset.field;
    if (name in values) writeInput(el, values[name]);
    else if (name in dflts) writeInput(el, dflts[name]);
    else writeInput(el, el.type === "checkbox" ? false : "");
  }
}

export function queryValues(search) {
  return Object.fromEntries(new URLSearchParams(search));
}

/** name -> current value of every input (checkbox: boolean; others: text, or the default when empty). */
export function values(root, dflts = {}) {
  const out = {};
  for (const el of inputs(root)) {
    const name = el.dataset.field;
    if (el.type === "checkbox") out[name] = el.checked;
    else out[name] = el.value.trim() === "" && name in dflts ? dflts[name] : el.value.trim();
  }
  return out;
}

/**
 * Whether a field spec's `show_if` holds for the current values. Each key names another field and
 * gives either the values that make this field relevant (["sliding"]) or bounds ({"min": 1});
 * every key must hold. A key naming a field the form lacks is ignored (the field stays shown).
 */
export function showIfHolds(showIf, current) {
  for (const [name, cond] of Object.entries(showIf || {})) {
    if (!(name in current)) continue;
    const v = current[name];
    if (Array.isArray(cond)) {
      if (!cond.some((c) => String(c) === String(v))) return false;
    } else if (cond && typeof cond === "object") {
      const n = Number(v);  // true -> 1; an empty field whose default is None -> 0
      if (!Number.isFinite(n)) return false;
      if (cond.min != null && n < cond.min) return false;
      if (cond.max != null && n > cond.max) return false;
    } else if (String(cond) !== String(v)) {
      return false;
    }
  }
  return true;
}
