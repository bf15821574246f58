// Token → expert on the sample input. A "routing" event (engine/moe_maps.py) gives, per MoE layer
// and per token of one held-out example, the top-k experts (best first), their gate weights and
// which of those choices the capacity limit dropped. Each token is a chip tinted with its top-1
// expert's colour; the strip under it splits among the top-k experts by gate weight; a dropped
// choice is hatched and its chip outlined in red. Hovering a chip gives the numbers. A slider
// picks the evaluation; it follows the newest one unless moved back.
import * as fmt from "../format.js";

// one colour per expert id; beyond these, golden-angle hues
const EXPERT_COLORS = ["#4f46e5", "#0d9488", "#d97706", "#db2777", "#2563eb", "#65a30d", "#9333ea", "#0891b2",
  "#b45309", "#e11d48", "#059669", "#7c3aed", "#ca8a04", "#475569", "#c026d3", "#ea580c"];

export function expertColor(e) {
  return e < EXPERT_COLORS.length ? EXPERT_COLORS[e] : `hsl(${(e * 137.508) % 360}, 60%, 45%)`;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

export class TokenRoutingView {
  /** root: the section, holding #moe-chips, #moe-legend, #moe-routing-note, #moe-routing-step(-label). */
  constructor(root) {
    this.root = root;
    this.chips = root.querySelector("#moe-chips");
    this.legend = root.querySelector("#moe-legend");
    this.note = root.querySelector("#moe-routing-note");
    this.slider = root.querySelector("#moe-routing-step");
    this.stepLabel = root.querySelector("#moe-routing-step-label");
    this.events = [];     // routing events, by step
    this.index = -1;
    this.follow = true;   // show the newest evaluation as it arrives
    this.layer = null;    // null: the event's first MoE layer
    this.slider.addEventListener("input", () => {
      this.index = Number(this.slider.value);
      this.follow = this.index === this.events.length - 1;
      this.render();
    });
  }

  /** The MoE layer numbers of the events so far. */
  get layers() {
    return [...new Set(this.events.flatMap((ev) => ev.layers.map((l) => l.layer)))].sort((a, b) => a - b);
  }

  /** One "routing" event's data: {step, tokens, window, top_k, n_expert, layers: [...]}. */
  addEvent(routing) {
    if (!Array.isArray(routing?.layers) || !routing.layers.length) return;
    const at = this.events.findIndex((ev) => ev.step >= routing.step);
    if (at >= 0 && this.events[at].step === routing.step) this.events[at] = routing;
    else if (at >= 0) {
      this.events.splice(at, 0, routing);
      if (at <= this.index) this.index++;
    } else this.events.push(routing);
    if (this.follow) this.index = this.events.length - 1;
    this.slider.max = String(this.events.length - 1);
    this.slider.value = String(this.index);
    this.slider.disabled = this.events.length < 2;
    this.render();
  }

  setLayer(layer) {
    this.layer = layer;
    this.render();
  }

  render() {
    const ev = this.events[this.index];
    if (!ev) return;
    const layer = ev.layers.find((l) => l.layer === this.layer) ?? ev.layers[0];
    const input = layer.input || "tokens";
    const tokens = ev[input] || [];
    const start = (ev[input === "tokens" ? "window" : "source_window"] || [0])[0];
    const nExpert = ev.n_expert || Math.max(0, ...layer.experts.flat()) + 1;
    const top1 = new Array(nExpert).fill(0);
    let nDropped = 0;
    let nChoices = 0;

    const chips = tokens.map((token, i) => {
      const experts = layer.experts[i] || [];
      const weights = layer.weights?.[i] || [];
      const dropped = layer.dropped?.[i] || [];
      const first = experts[0];
      top1[first] = (top1[first] || 0) + 1;
      nChoices += experts.length;
      const nd = dropped.filter(Boolean).length;
      nDropped += nd;

      const chip = el("span", "moe-chip");
      chip.dataset.i = String(i);
      chip.dataset.expert = String(first);
      chip.style.setProperty("--c", expertColor(first));
      if (nd) chip.classList.add(nd === experts.length ? "dropped-all" : "dropped");
      chip.append(el("span", "tok", token), el("span", "ex", experts.join(" ")));
      const strip = el("span", "strip");
      experts.forEach((e, j) => {
        const seg = el("i", dropped[j] ? "cut" : "");
        seg.style.flexGrow = String(Math.max(weights[j] ?? 0, 0.02));
        seg.style.setProperty("--c", expertColor(e));
        strip.append(seg);
      });
      chip.append(strip);
      const lines = experts.map((e, j) => `#${j + 1}  expert ${e} · gate ${(weights[j] ?? 0).toFixed(3)}`
        + (dropped[j] ? " · dropped: expert over capacity" : ""));
      chip.title = `“${token}” · position ${start + i}\n${lines.join("\n")}`;
      return chip;
    });
    this.chips.replaceChildren(...chips);

    const items = top1.map((n, e) => {
      const item = el("span", "moe-key");
      item.dataset.expert = String(e);
      const sw = el("i", "sw");
      sw.style.setProperty("--c", expertColor(e));
      item.append(sw, `expert ${e}`, el("span", "n", `· ${n} token${n === 1 ? "" : "s"}`));
      item.title = `${n} token${n === 1 ? "" : "s"} with expert ${e} first`;
      return item;
    });
    const cut = el("span", "moe-key");
    cut.append(el("i", "sw cut"), "dropped choice");
    cut.title = "the expert was over capacity: this choice contributed nothing";
    this.legend.replaceChildren(...items, cut);

    const stack = input === "source_tokens" ? " (encoder input)" : "";
    this.note.textContent = `· layer ${layer.layer}${stack} · ${tokens.length} tokens · top-${ev.top_k || layer.experts[0]?.length || 1}`
      + ` · ${fmt.int(nDropped)} of ${fmt.int(nChoices)} choices dropped`;
    this.stepLabel.textContent = `step ${fmt.int(ev.step)} · evaluation ${this.index + 1} of ${this.events.length}`;
    this.root.hidden = false;
    this.root.dataset.step = String(ev.step);
    this.root.dataset.layer = String(layer.layer);
  }
}
