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


// Live lists ([data-poll], e.g. the online licenses) refetch themselves on a timer and when the
// tab comes back into view. Not while the tab is hidden (nobody is looking), and not while focus
// is inside the list (the swap would take a keyboard user's place, or a message being read).
document.addEventListener("htmx:beforeRequest", (event) => {
  const element = event.detail.elt;
  if (!element.hasAttribute || !element.hasAttribute("data-poll") || event.detail.requestConfig.verb !== "get") return;
  const active = document.activeElement;
  const focusInside = active && active !== element && element.contains(active);
  if (document.hidden || focusInside) event.preventDefault();
});

// Relative times (<time data-relative>, from the portal_time filter) stay current on a page left
// open: "Updated 12 s ago" counts up between refreshes. The same wording as the server's.
function relativeTime(then, now) {
  const seconds = Math.round((now - then) / 1000);
  const amount = Math.abs(seconds);
  if (amount >= 30 * 86400) return null;
  if (amount < 5) return "just now";
  let span;
  if (amount < 60) span = `${amount} s`;
  else if (amount < 3600) span = `${Math.floor(amount / 60)} min`;
  else if (amount < 86400) span = `${Math.floor(amount / 3600)} h`;
  else { const days = Math.floor(amount / 86400); span = `${days} day${days === 1 ? "" : "s"}`; }
  return seconds > 0 ? `${span} ago` : `in ${span}`;
}

function refreshRelativeTimes() {
  const now = Date.now();
  document.querySelectorAll("time[data-relative]").forEach((element) => {
    const text = relativeTime(Date.parse(element.getAttribute("datetime")), now);
    if (text && element.textContent !== text) element.textContent = text;
  });
}
document.addEventListener("DOMContentLoaded", refreshRelativeTimes);
document.addEventListener("htmx:afterSettle", refreshRelativeTimes);
setInterval(refreshRelativeTimes, 5000);
