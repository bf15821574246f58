// The inference form: builds the job's payload, posts it to /api/v1/inference and opens the job's
// page; a 400's errors are shown at their fields. Sampling and quantisation apply to decoders only.
import { ApiError, postJSON } from "./api.js";

const $ = (id) => document.getElementById(id);
const form = $("inference-form");
const options = JSON.parse($("inference-options").textContent);

/** "a\nb" typed as backslash-n becomes a line break (a textarea line cannot hold one). */
const unescape = (s) => s.replace(/\\n/g, "\n").replace(/\\t/g, "\t");
const lines = (text) => text.split("\n").filter((l) => l.trim() !== "").map(unescape);

function selected() {
  return $("f-source").selectedOptions[0] || null;
}

function source() {
  const opt = selected();
  if (!opt) return {};
  const [kind, a, b] = opt.value.split(":");
  return kind === "job" ? { job: Number(a), step: Number(b) } : { pretrained: a };
}

function numberOrNull(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function payload() {
  return {
    name: $("f-name").value.trim(),
    source: source(),
    prompts: lines($("f-prompts").value),
    max_new_tokens: numberOrNull("f-max_new_tokens"),
    temperature: numberOrNull("f-temperature"),
    top_k: numberOrNull("f-top_k"),
    top_p: numberOrNull("f-top_p"),
    stop: lines($("f-stop").value),
    seed: numberOrNull("f-seed") ?? 0,
    compare_cache: $("f-compare_cache").checked,
    chat: !$("chat-field").hidden && $("f-chat").checked,
    quantization: [...form.querySelectorAll("input[name=quantization]:checked")].map((c) => c.value),
    group_size: numberOrNull("f-group_size") ?? options.defaults.group_size,
  };
}

function clearErrors() {
  form.querySelectorAll("[data-errors-for]").forEach((n) => { n.textContent = ""; });
  form.querySelectorAll(".has-error").forEach((n) => n.classList.remove("has-error"));
  $("form-error").hidden = true;
}

function showErrors(errors, detail) {
  const loose = [];
  for (const [key, message] of Object.entries(errors || {})) {
    const field = key.split(".")[0];
    const box = form.querySelector(`[data-errors-for="${field}"]`);
    if (box) {
      box.textContent = message;
      box.closest("[data-field-wrap]")?.classList.add("has-error");
    } else {
      loose.push(`${key}: ${message}`);
    }
  }
  if (loose.length || !Object.keys(errors || {}).length) {
    $("form-error").textContent = loose.length ? loose.join("; ") : detail || "The job was refused.";
    $("form-error").hidden = false;
  }
  form.querySelector(".has-error textarea, .has-error input, .has-error select")?.focus();
}

/** Decoder-only settings dim for an encoder; the form says what the model is. */
function updateFamily() {
  const opt = selected();
  const family = opt?.dataset.family || "decoder";
  const encoder = family === "encoder";
  for (const id of ["sampling-card", "quant-card"]) {
    $(id).setAttribute("aria-disabled", encoder ? "true" : "false");
    $(id).querySelectorAll("input, textarea").forEach((n) => { n.disabled = encoder; });
  }
  // a chat model offers its chat template (and is then chatted with by default)
  const chat = opt?.dataset.chat === "1";
  if ($("chat-field").hidden === chat) $("f-chat").checked = chat;
  $("chat-field").hidden = !chat;
  $("model-family").textContent = encoder
    ? "An encoder: each prompt is embedded (mean-pooled last hidden state) and the page shows their cosine similarities."
    : family === "encoder_decoder"
      ? "An encoder-decoder: each prompt is the encoder's input; the decoder writes the output token by token."
      : "A decoder: each prompt is continued token by token.";
}

function updateCount() {
  const n = lines($("f-prompts").value).length;
  $("prompt-count").textContent = `${n} / ${options.limits.prompts}`;
}

$("f-source").addEventListener("change", updateFamily);
$("f-prompts").addEventListener("input", updateCount);

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  clearErrors();
  const button = $("run-btn");
  button.disabled = true;
  button.textContent = "Submitting…";
  try {
    const job = await postJSON("/api/v1/inference", payload());
    window.location.assign(job.url);
  } catch (err) {
    if (err instanceof ApiError && err.body) showErrors(err.body.errors, err.body.detail);
    else showErrors({}, `Could not submit: ${err.message}`);
    button.disabled = false;
    button.textContent = "Run inference";
  }
});

// a starting point: prompts the selected model can read are the user's to write, but an empty
// box for the pretrained encoder gets three sentences to compare
if (!$("f-prompts").value && selected()?.dataset.family === "encoder") {
  $("f-prompts").value = "A cat sits on the mat.\nA kitten is resting on a rug.\nThe stock market fell sharply today.";
}
updateFamily();
updateCount();
