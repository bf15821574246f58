// A column of token chips for one tokenizer's encoding, rendered a page at a time (a 100k-token
// text must not put 100k elements in the page at once). Pure DOM, no fetching.
import * as fmt from "../format.js";

export const PAGE = 2000;   // chips rendered per page
const COLOURS = 6;

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "className") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

/** What a chip shows: the engine's readable form with spaces made visible. */
export function chipText(display) {
  return String(display ?? "").replaceAll(" ", "·");
}

/** First token index whose span ends after `pos` (offsets are in order). */
export function firstEndingAfter(offsets, pos) {
  let lo = 0;
  let hi = offsets.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (offsets[mid][1] <= pos) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * One tokenizer's chips: ids and raw pieces on hover, whitespace made visible, the pieces of one
 * character (bytes, byte fallback) boxed together, unknown tokens marked. `nodes[k]` is the chip
 * of token k once rendered; scrolling near the end, or the button, renders the next page.
 */
export class ChipColumn {
  constructor(result, index, letter) {
    const r = result;
    this.result = r;
    this.rendered = 0;
    this.nodes = [];
    this.chips = el("div", { className: "chips", dataset: { column: index } });
    this.more = el("button", { type: "button", className: "btn sm more-chips" });
    const body = el("div", { className: "chips-scroll" }, this.chips, this.more);
    const flags = [];
    const unk = r.unk.filter(Boolean).length;
    const fallback = r.byte_fallback.filter(Boolean).length;
    if (unk) flags.push(el("span", { className: "flag unk" }, `${fmt.int(unk)} unknown`));
    if (fallback) flags.push(el("span", { className: "flag fallback" }, `${fmt.int(fallback)} byte-fallback`));
    const head = el("div", { className: "col-head" },
      el("span", { className: `pick-letter c${index}` }, letter),
      el("b", {}, r.name), el("span", { className: "muted small", title: "kind · vocabulary size" }, `${r.kind} · ${fmt.int(r.vocab_size)}`),
      ...flags, el("span", { className: "col-count tabular" }, `${fmt.int(r.ids.length)} tokens`));
    this.el = el("div", { className: "lab-col", dataset: { tokenizer: r.tokenizer, tokens: r.ids.length } }, head, body);
    this.more.addEventListener("click", () => this.renderMore());
    body.addEventListener("scroll", () => {
      if (body.scrollTop + body.clientHeight > body.scrollHeight - 200) this.renderMore();
    });
    this.renderMore();
  }

  renderMore() {
    const r = this.result;
    const n = r.ids.length;
    if (this.rendered >= n) return;
    const end = Math.min(n, this.rendered + PAGE);
    const frag = document.createDocumentFragment();
    let group = null;
    let groupId = null;
    for (let k = this.rendered; k < end; k++) {
      const chip = el("span", {
        className: `chip c${k % COLOURS}${r.unk[k] ? " unk" : ""}${r.byte_fallback[k] ? " fb" : ""}`,
        dataset: { i: k },
        title: `id ${r.ids[k]} · ${JSON.stringify(r.tokens[k])}${r.unk[k] ? " · unknown" : ""}${r.byte_fallback[k] ? " · byte fallback" : ""}`,
      }, chipText(r.display[k]));
      this.nodes[k] = chip;
      // Pieces of one character share a char_group: one box for them.
      const g = r.char_group ? r.char_group[k] : null;
      const grouped = g !== null && g !== undefined
        && ((k + 1 < n && r.char_group[k + 1] === g) || (k > 0 && r.char_group[k - 1] === g));
      if (grouped) {
        if (groupId !== g || !group) {
          group = el("span", { className: "chip-group", title: "one character, several tokens" });
          groupId = g;
          frag.append(group);
        }
        group.append(chip);
      } else {
        group = null;
        groupId = null;
        frag.append(chip);
      }
      if (String(r.display[k]).endsWith("↵")) frag.append(el("br"));
    }
    this.chips.append(frag);
    this.rendered = end;
    this.more.hidden = end >= n;
    this.more.textContent = `Show the next ${fmt.int(Math.min(PAGE, n - end))} (${fmt.int(end)} of ${fmt.int(n)} shown)`;
    this.el.dataset.rendered = String(end);
  }
}
