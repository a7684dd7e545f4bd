// The "Assign licenses" chooser (templates/licenses/assign.html). Progressive enhancement only:
// without this file the chooser is a page of its own, a GET search form and a POST form of
// checkboxes, and the server refuses a grant beyond the quota.
"use strict";

(() => {
  const plural = (n) => `${n} license${n === 1 ? "" : "s"}`;

  // "N licenses left" as boxes are ticked; beyond the quota it says how many to untick and the
  // button waits, instead of a round trip that can only be refused.
  function updateLeft() {
    const chooser = document.getElementById("chooser");
    if (!chooser) return;
    const available = Number(chooser.dataset.available);
    const ticked = chooser.querySelectorAll('input[name="users"]:checked').length;
    const left = available - ticked;
    const figure = chooser.querySelector("#chooser-left");
    const button = chooser.querySelector('#assign-form button[type="submit"]');
    if (left >= 0) {
      figure.textContent = `${plural(left)} left` + (ticked ? ` (${ticked} chosen)` : "");
    } else {
      figure.textContent = `${ticked} chosen but only ${plural(available)} left: untick ${-left}.`;
    }
    figure.classList.toggle("over", left < 0);
    button.disabled = left < 0;
  }

  // A search or another page replaces the results: the people ticked so far move to "Chosen"
  // first, so ticks survive searching for the next person.
  function keepTicked(results) {
    const chosen = document.getElementById("chooser-chosen");
    if (!chosen) return;
    results.querySelectorAll('input[name="users"]:checked').forEach((box) => {
      chosen.querySelector("ul").append(box.closest("li"));
    });
    chosen.hidden = !chosen.querySelector("li");
  }

  // And a chosen person who turns up again in the results is shown once, in "Chosen".
  function dropDuplicates() {
    const chosen = document.getElementById("chooser-chosen");
    const results = document.getElementById("chooser-results");
    if (!chosen || !results) return;
    const ids = new Set(Array.from(chosen.querySelectorAll('input[name="users"]'), (box) => box.value));
    results.querySelectorAll('input[name="users"]').forEach((box) => {
      if (ids.has(box.value)) box.closest("li").remove();
    });
  }

  document.addEventListener("change", (event) => {
    if (event.target.matches('#chooser input[name="users"]')) updateLeft();
  });

  document.addEventListener("htmx:beforeSwap", (event) => {
    if (event.detail.target.id === "chooser-results") keepTicked(event.detail.target);
  });

  // (An outerHTML swap's target is the element it replaced: the new one is looked up by id.)
  document.addEventListener("htmx:afterSwap", (event) => {
    const targetId = event.detail.target.id;
    const dialog = document.getElementById("assign-dialog");
    if (targetId === "chooser-results") {
      dropDuplicates();
    } else if (targetId === "assign-dialog-content" && dialog && !dialog.open) {
      dialog.showModal();
      document.getElementById("chooser-q")?.focus();
    } else if (targetId === "licensed-users" && dialog?.open) {
      // Granted: close the chooser and move focus to the notice in the renewed list behind it.
      dialog.close();
      document.getElementById("assign-dialog-content").replaceChildren();
      const notice = document.querySelector("#licensed-users [role=status]");
      if (notice) {
        notice.tabIndex = -1;
        notice.focus();
      }
    }
    updateLeft();
  });

  document.addEventListener("DOMContentLoaded", updateLeft);
})();
