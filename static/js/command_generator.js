// The command generator builds both commands here, as the person types, from the same rules as
// the server (sessions_app/forms.py: CommandForm.commands), so nothing waits on a request and a
// key created meanwhile cannot be lost to a late refresh. Without this script the form's
// "Update commands" button asks the server instead.
"use strict";

(() => {
  const form = document.getElementById("command-form");
  if (!form) return;
  const serverUrl = form.dataset.serverUrl;
  const placeholder = form.dataset.keyPlaceholder;
  const keyForm = document.getElementById("key-form");
  const problem = document.getElementById("command-problem");
  const box = document.getElementById("command-box");
  const newKeys = document.getElementById("new-keys");

  // Python's shlex.quote.
  function shlexQuote(value) {
    if (value === "") return "''";
    if (/^[\w@%+=:,./-]+$/.test(value)) return value;
    return "'" + value.replace(/'/g, "'\"'\"'") + "'";
  }

  // sessions_app.forms.shell_quote: the double quotes Katalon's docs show, single quotes when a
  // shell would expand something inside double quotes.
  function shellQuote(value) {
    return /["$`\\!\n]/.test(value) ? shlexQuote(value) : `"${value}"`;
  }

  function field(name) {
    return form.elements.namedItem(name);
  }

  function showProblem(input, message) {
    const error = document.getElementById(`${input.id}_error`);
    error.textContent = message;
    error.hidden = !message;
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }

  // Each field's own message (data-invalid-message) when the browser finds it invalid; the form
  // is novalidate so that these, not the browser's bubbles, are what a person sees.
  function validate() {
    const invalid = [];
    for (const input of form.elements) {
      if (!input.name || input.type === "submit") continue;
      const valid = input.checkValidity();
      showProblem(input, valid ? "" : input.dataset.invalidMessage || input.validationMessage);
      if (!valid) invalid.push(form.querySelector(`label[for="${input.id}"]`).textContent.trim());
    }
    return invalid;
  }

  // The newest key not yet dismissed that works for the chosen organization.
  function keyFor(orgId) {
    const panel = newKeys.querySelector(`.new-key[data-org="${CSS.escape(orgId)}"]`);
    return panel ? panel.dataset.rawKey : null;
  }

  function render() {
    const invalid = validate();
    // The create-a-key form carries the choices, so that without a reload its answer matches them.
    for (const hidden of keyForm.querySelectorAll("input[type=hidden]:not([name=csrfmiddlewaretoken])")) {
      const input = field(hidden.name);
      if (input) hidden.value = input.type === "checkbox" ? (input.checked ? "on" : "") : input.value;
    }
    if (invalid.length) {
      problem.textContent = `Fix ${invalid.join(", ")} to see the commands.`;
      problem.hidden = false;
      box.hidden = true;
      return;
    }
    problem.hidden = true;
    box.hidden = false;
    const orgId = field("org").value;
    const apiKey = keyFor(orgId) || shlexQuote(placeholder);
    const run = [
      "katalonc",
      "-noSplash",
      "-runMode=console",
      `-projectPath=${shellQuote(field("project_path").value)}`,
      `-retry=${parseInt(field("retry").value, 10)}`,
      `-testSuitePath=${shellQuote(field("test_suite_path").value)}`,
      `-browserType=${shellQuote(field("browser").value)}`,
    ];
    const releasePrevious = field("release_previous").checked;
    const plain = [...run, `-apiKey=${apiKey}`, `-orgID=${orgId}`, `-serverUrl=${shellQuote(serverUrl)}`];
    if (releasePrevious) plain.push("-licenseRelease=true");
    const wrapper = ["katalon-license", "run", "--org", orgId];
    if (field("ephemeral").checked) wrapper.push("--ephemeral");
    if (releasePrevious) wrapper.push("--release-previous");
    if (field("wait").value) wrapper.push("--wait", field("wait").value);
    document.getElementById("katalonc-command").value = plain.join(" ");
    document.getElementById("wrapped-command").value = [
      `export KATALON_ADMIN_URL=${shellQuote(serverUrl)}`,
      `export KATALON_API_KEY=${apiKey}`,
      [...wrapper, "--", ...run].join(" "),
    ].join("\n");
  }

  form.addEventListener("input", render);
  form.addEventListener("change", render);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    render();
  });
  document.querySelectorAll("[data-without-script]").forEach((element) => { element.hidden = true; });

  // A new key stays until its Dismiss is pressed; the link reloads the page without a script.
  newKeys.addEventListener("click", (event) => {
    const dismiss = event.target.closest("[data-dismiss-key]");
    if (!dismiss) return;
    event.preventDefault();
    dismiss.closest(".new-key").remove();
    render();
    document.getElementById("katalonc-command").focus();
  });

  // app.js then moves focus to the new panel (a status) and announces it.
  document.body.addEventListener("htmx:afterSwap", (event) => {
    if (event.detail.target === newKeys) render();
  });

  render();
})();
