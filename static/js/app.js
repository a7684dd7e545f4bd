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

// Confirmations (organizations/confirm.py). htmx puts one into the page's <dialog>; it opens as a
// modal, starts on Cancel (the safe choice), and gives focus back to the button that asked.
let confirmOpener = null;
const confirmDialog = () => document.getElementById("confirm-dialog");

document.addEventListener("htmx:afterSwap", (event) => {
  const dialog = confirmDialog();
  if (!dialog || event.detail.target.id !== "confirm-slot") return;
  if (!dialog.open) dialog.showModal();
  const field = dialog.querySelector("input:not([type=hidden]), select, textarea");
  (field || dialog.querySelector("[data-dialog-cancel]") || dialog).focus();
});

document.addEventListener("click", (event) => {
  const cancel = event.target.closest("#confirm-dialog [data-dialog-cancel]");
  if (!cancel) return;
  event.preventDefault();  // The link is the way back without JavaScript; here the dialog just closes.
  confirmDialog().close();
});

document.addEventListener("close", (event) => {
  if (event.target.id !== "confirm-dialog") return;
  if (confirmOpener && confirmOpener.isConnected) confirmOpener.focus();
  confirmOpener = null;
}, true);

// What each request was triggered by, to tell a person's click from a poll or typing in a filter.
const triggers = new WeakMap();

document.addEventListener("htmx:beforeRequest", (event) => {
  const config = event.detail.requestConfig || {};
  const trigger = config.triggeringEvent;
  triggers.set(event.detail.xhr, trigger ? trigger.type : null);
  const dialog = confirmDialog();
  if (dialog && !dialog.contains(event.detail.elt) && event.detail.target && event.detail.target.id === "confirm-slot") {
    confirmOpener = document.activeElement;
  }
});

document.addEventListener("htmx:beforeSwap", (event) => {
  // A confirmed action's answer replaces its section: the dialog's work is done.
  const dialog = confirmDialog();
  // Fired on the swap's target; the element that asked is the request's.
  const asker = (event.detail.requestConfig && event.detail.requestConfig.elt) || event.detail.elt;
  if (dialog && dialog.open && asker && dialog.contains(asker) && event.detail.target.id !== "confirm-slot") {
    confirmOpener = null;  // Focus goes to the result instead (below), not back to the button.
    dialog.close();
  }
});

// After an in-place update, focus moves to what it says (a refusal first, else its notice, else the
// updated section) and a live region repeats the words for screen readers. Only for a person's own
// click or submit: a poll or a filter that follows typing must not pull focus away.
const MESSAGE = ".refusal, [role=alert], .errorlist, .message, [role=status]";
let pendingSettle = null;

document.addEventListener("htmx:afterSettle", (event) => {
  if (event.target.id === "confirm-slot" || event.target.closest("#confirm-dialog")) return;
  const type = triggers.get(event.detail.xhr);
  if (!type) return;
  if (!pendingSettle) {
    pendingSettle = { type, elements: [] };
    setTimeout(settled, 0);
  }
  pendingSettle.elements.push(event.target);
});

function settled() {
  const { type, elements } = pendingSettle;
  pendingSettle = null;
  const found = elements.flatMap((element) => [
    ...(element.matches(MESSAGE) ? [element] : []),
    ...element.querySelectorAll(MESSAGE),
  ]).filter((element) => element.isConnected && element.id !== "announcer");
  const alert = found.find((element) => element.matches(".refusal, [role=alert], .errorlist"));
  const message = alert || found[0];
  if (message) announce(message.textContent);
  if (type !== "submit" && type !== "click") return;
  const focusTarget = message || elements.find((element) => element.isConnected);
  if (!focusTarget) return;
  if (!focusTarget.matches("a, button, input, select, textarea, [tabindex]")) focusTarget.setAttribute("tabindex", "-1");
  focusTarget.focus();
}

// The live region's words live in a closed shadow root: screen readers hear them (the accessibility
// tree is built from the flattened tree), but the page's text holds each message once, so finding
// it in the page (Ctrl+F, or a test looking for it) meets the visible message, not a hidden twin.
let announcerLine = null;

function announcerText() {
  if (announcerLine) return announcerLine;
  const announcer = document.getElementById("announcer");
  if (!announcer) return null;
  announcerLine = document.createElement("span");
  announcer.attachShadow({ mode: "closed" }).append(announcerLine);
  return announcerLine;
}

function announce(text) {
  const line = announcerText();
  if (!line) return;
  const words = text.replace(/\s+/g, " ").trim();
  line.textContent = "";
  // Filled a moment after emptying, so the same words twice are announced twice.
  setTimeout(() => {
    line.textContent = words;
    document.getElementById("announcer").lastAnnouncement = words;  // for a look from outside
  }, 50);
}

// Field limits (organizations/limits.py): the limit is data-maxlength, not maxlength, because a
// browser enforces maxlength by silently cutting a pasted value. Here a field past its limit says
// so beside itself and blocks its form's submit; nearing it, a count shows.
function checkLimit(field) {
  const limit = Number(field.dataset.maxlength);
  const length = field.value.length;
  let note = field.limitNote;
  if (!note && length > limit * 0.8) {
    note = document.createElement("p");
    note.className = "field-limit";
    note.setAttribute("aria-live", "polite");
    note.id = `${field.id || field.name}-limit`;
    field.insertAdjacentElement("afterend", note);
    field.limitNote = note;
    field.setAttribute("aria-describedby", `${field.getAttribute("aria-describedby") || ""} ${note.id}`.trim());
  }
  const over = length > limit;
  const message = over
    ? `Too long: ${length.toLocaleString("en")} characters, the limit is ${limit.toLocaleString("en")}. Nothing is cut; shorten it to send.`
    : "";
  field.setCustomValidity(message);
  if (!note) return;
  note.textContent = over ? message : `${length} of ${limit} characters`;
  note.classList.toggle("over", over);
}

document.addEventListener("input", (event) => {
  if (event.target.matches && event.target.matches("[data-maxlength]")) checkLimit(event.target);
});

function checkAllLimits(root) {
  root.querySelectorAll("[data-maxlength]").forEach((field) => { if (field.value) checkLimit(field); });
}
document.addEventListener("DOMContentLoaded", () => checkAllLimits(document));
document.addEventListener("htmx:load", (event) => checkAllLimits(event.target));
