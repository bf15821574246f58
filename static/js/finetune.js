// The fine-tuning form: choices follow the objective and method, the trainable parameters follow
// the LoRA settings, and the form posts to /api/v1/finetune; errors appear under their fields.
import { ApiError, postJSON } from "./api.js";
import * as fmt from "./format.js";

const $ = (id) => document.getElementById(id);
const options = JSON.parse($("finetune-options").textContent);
const form = $("finetune-form");

// SmolLM2-135M-Instruct's projections (in, out) per layer, for the trainable-parameter count
const SHAPES = { q_proj: [576, 576], k_proj: [576, 192], v_proj: [576, 192], o_proj: [576, 576],
  gate_proj: [576, 1536], up_proj: [576, 1536], down_proj: [1536, 576] };
const LAYERS = 30;
const BASE = options.bases[0].parameters;

function fillSources() {
  const objective = $("f-objective").value;
  const sources = options.sources[objective];
  const select = $("f-source");
  const keep = select.value;
  select.replaceChildren(...Object.keys(sources).map((key) => new Option(
    { builtin: "Built-in instruction set", synthetic: "Synthetic task", jsonl: "Uploaded JSONL file" }[key] || key, key)));
  if (keep in sources) select.value = keep;
  updateSource();
  $("beta-field").hidden = objective !== "dpo";
}

function updateSource() {
  const source = $("f-source").value;
  const help = options.sources[$("f-objective").value][source] || "";
  $("source-help").textContent = help.charAt(0).toUpperCase() + help.slice(1);
  $("task-field").hidden = source !== "synthetic";
  $("dataset-field").hidden = source !== "jsonl";
}

function targets() {
  return [...form.querySelectorAll('input[name="lora.target_modules"]:checked')].map((el) => el.value);
}

function updateMethod() {
  const lora = $("f-method").value === "lora";
  $("lora-card").classList.toggle("disabled-card", !lora);
  for (const el of $("lora-card").querySelectorAll("input")) el.disabled = !lora;
  $("method-help").textContent = options.methods[$("f-method").value];
  if (!lora && Number($("f-lr").value) >= 1e-4) $("f-lr").value = "1e-5";
  if (lora && Number($("f-lr").value) < 1e-4) $("f-lr").value = String(options.defaults.train.lr);
  updateTrainable();
}

function updateTrainable() {
  const note = $("trainable-note");
  if ($("f-method").value !== "lora") { note.textContent = `all ${fmt.count(BASE)} weights train`; return; }
  const r = Number($("f-rank").value);
  if (!Number.isInteger(r) || r < 1) { note.textContent = ""; return; }
  const added = LAYERS * targets().reduce((sum, m) => sum + r * (SHAPES[m][0] + SHAPES[m][1]), 0);
  note.textContent = `${fmt.int(added)} trainable · ${fmt.percent(added / (BASE + added), 2)} of ${fmt.count(BASE + added)}`;
}

function num(name) {
  const value = form.elements[name]?.value;
  return value === "" || value == null ? undefined : Number(value);
}

function payload() {
  const objective = $("f-objective").value;
  const source = $("f-source").value;
  const data = { source, max_tokens: num("data.max_tokens") };
  if (source === "synthetic") data.task = $("f-task").value;
  if (source === "jsonl") data.dataset = $("f-dataset").value;
  const train = { steps: num("train.steps"), lr: num("train.lr"), batch_size: num("train.batch_size"),
    eval_interval: num("train.eval_interval") };
  if (objective === "dpo") train.dpo_beta = num("train.dpo_beta");
  const body = {
    name: $("f-name").value.trim(), objective, method: $("f-method").value, data, train,
    prompts: $("f-prompts").value.split("\n").map((p) => p.trim()).filter(Boolean),
    max_new_tokens: num("max_new_tokens"),
  };
  if (body.method === "lora") {
    body.lora = { rank: num("lora.rank"), alpha: num("lora.alpha"), dropout: num("lora.dropout"), target_modules: targets() };
  }
  return body;
}

function clearErrors() {
  for (const el of form.querySelectorAll("[data-errors-for]")) el.textContent = "";
  for (const el of form.querySelectorAll(".field.has-error")) el.classList.remove("has-error");
  $("form-error").hidden = true;
}

function showErrors(errors, detail) {
  const unplaced = [];
  for (const [key, message] of Object.entries(errors || {})) {
    const slot = form.querySelector(`[data-errors-for="${CSS.escape(key)}"]`);
    if (slot) {
      slot.textContent = message;
      slot.closest(".field")?.classList.add("has-error");
    } else unplaced.push(`${key}: ${message}`);
  }
  if (unplaced.length || !errors || !Object.keys(errors).length) {
    $("form-error").textContent = unplaced.length ? unplaced.join(" · ") : detail;
    $("form-error").hidden = false;
  }
}

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  clearErrors();
  const btn = $("run-btn");
  btn.disabled = true;
  try {
    const job = await postJSON("/api/v1/finetune", payload());
    location.href = `/jobs/${job.id}/`;
  } catch (err) {
    btn.disabled = false;
    if (err instanceof ApiError) showErrors(err.body?.errors, err.message);
    else showErrors(null, `Could not submit: ${err.message}`);
  }
});

function countPrompts() {
  const n = $("f-prompts").value.split("\n").filter((p) => p.trim()).length;
  $("prompt-count").textContent = `${n} / ${options.limits.prompts}`;
}

$("f-objective").addEventListener("change", fillSources);
$("f-source").addEventListener("change", updateSource);
$("f-method").addEventListener("change", updateMethod);
$("f-prompts").addEventListener("input", countPrompts);
for (const el of $("lora-card").querySelectorAll("input")) el.addEventListener("input", updateTrainable);
fillSources();
updateMethod();
countPrompts();
