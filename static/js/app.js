// Progressive enhancement only: every page works without this file.
"use strict";

// Copy buttons: <button data-copy-target="#id">Copy</button> copies the target's text or value.
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-copy-target]");
  if (!button) return;
  const target = document.querySelector(button.dataset.copyTarget);
  if (!target) return;
  const text = "value" in target ? target.value : target.textContent.trim();
  const done = () => {
    const label = button.textContent;
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, 1500);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => { selectText(target); });
  } else {
    selectText(target);
    done();
  }
});

function selectText(element) {
  if (element.select) {
    element.select();
  } else {
    const range = document.createRange();
    range.selectNodeContents(element);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }
  try { document.execCommand("copy"); } catch (_) { /* the text stays selected for Ctrl+C */ }
}

// Copy buttons are useless without this script, so they start hidden and appear here.
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-copy-target][hidden]").forEach((b) => { b.hidden = false; });
});
document.addEventListener("htmx:afterSettle", () => {
  document.querySelectorAll("[data-copy-target][hidden]").forEach((b) => { b.hidden = false; });
});
