// The attention form: a pretrained decoder and a text (or a chat turn), posted to /api/v1/attention;
// the job's page opens. A 400's errors (a text longer than the context names both numbers) show at
// their fields.
import { ApiError, postJSON } from "./api.js";

const $ = (id) => document.getElementById(id);
const form = $("attention-form");
const options = JSON.parse($("attention-options").textContent);

function clearErrors() {
  form.querySelectorAll("[data-errors-for]").forEach((n) => { n.textContent = ""; });
  form.querySelectorAll(".has-error").forEach((n) => n.classList.remove("has-error"));
  $("form-error").hidden = true;
}

function showErrors(errors, detail) {
  const loose = [];
  for (const [key, message] of Object.entries(errors || {})) {
    const box = form.querySelector(`[data-errors-for="${key.split(".")[0]}"]`);
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
}

function updateChat() {
  const chat = $("f-source").selectedOptions[0]?.dataset.chat === "1";
  $("chat-field").hidden = !chat;
  if (!chat) $("f-chat").checked = false;
}

function updateCount() {
  const n = $("f-text").value.length;
  $("char-count").textContent = `${n.toLocaleString()} / ${options.limits.text_chars.toLocaleString()} characters`;
}

$("f-source").addEventListener("change", updateChat);
$("f-text").addEventListener("input", updateCount);
form.addEventListener("submit", async (e) => {
  e.preventDefault();
  clearErrors();
  const button = $("run-btn");
  button.disabled = true;
  button.textContent = "Submitting…";
  try {
    const job = await postJSON("/api/v1/attention", {
      name: $("f-name").value.trim(), source: { pretrained: $("f-source").value },
      text: $("f-text").value, chat: !$("chat-field").hidden && $("f-chat").checked,
    });
    window.location.assign(job.url);
  } catch (err) {
    if (err instanceof ApiError && err.body) showErrors(err.body.errors, err.body.detail);
    else showErrors({}, `Could not submit: ${err.message}`);
    button.disabled = false;
    button.textContent = "Analyse attention";
  }
});
updateChat();
updateCount();
