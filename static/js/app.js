// What every page shares: relative times, copy buttons, dismissible messages, auto-submitting selects.
import * as fmt from "./format.js";

export function refreshTimes(root = document) {
  for (const el of root.querySelectorAll("time[data-relative]")) {
    const iso = el.getAttribute("datetime");
    if (!iso) continue;
    el.textContent = fmt.relative(iso);
    el.title = fmt.datetime(iso);
  }
  for (const el of root.querySelectorAll("time[data-local]")) {
    const iso = el.getAttribute("datetime");
    if (!iso) continue;
    el.textContent = fmt.datetime(iso);
    el.title = fmt.relative(iso);
  }
}

async function copy(button) {
  const target = document.getElementById(button.dataset.copy);
  if (!target) return;
  const text = target.textContent.trim();
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const range = document.createRange();
    range.selectNodeContents(target);
    const sel = getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    document.execCommand("copy");
  }
  const label = button.textContent;
  button.textContent = "Copied ✓";
  setTimeout(() => { button.textContent = label; }, 1500);
}

document.addEventListener("click", (e) => {
  const copyBtn = e.target.closest("[data-copy]");
  if (copyBtn) copy(copyBtn);
  const dismiss = e.target.closest("[data-dismiss]");
  if (dismiss) dismiss.closest(".alert")?.remove();
  const confirmBtn = e.target.closest("[data-confirm]");
  if (confirmBtn && !window.confirm(confirmBtn.dataset.confirm)) e.preventDefault();
});

document.addEventListener("change", (e) => {
  if (e.target.matches("select[data-autosubmit]")) e.target.form.requestSubmit();
});

// Integers rendered raw by the server get thousands separators.
for (const el of document.querySelectorAll("[data-int]")) {
  const n = Number(el.textContent);
  if (Number.isFinite(n)) el.textContent = fmt.int(n);
}

refreshTimes();
setInterval(refreshTimes, 30000);

// The top bar's "Real LLMs" menu (a <details>): closed by a click elsewhere or Escape.
document.addEventListener("click", (e) => {
  document.querySelectorAll("details.nav-menu[open]").forEach((menu) => {
    if (!menu.contains(e.target)) menu.removeAttribute("open");
  });
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape") document.querySelectorAll("details.nav-menu[open]").forEach((menu) => menu.removeAttribute("open"));
});
