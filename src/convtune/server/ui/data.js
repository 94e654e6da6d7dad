// 1. Data: a spreadsheet and prepare's options in; the report, the first examples and the
// token histogram out (POST /v1/convtune/prepare); Save uploads the files (`save: true`).

import * as api from "./api.js";
import { histogram } from "./charts.js";
import { $, clearErrors, counted, field, h, number, options as fill, showError, stats } from "./dom.js";

export function dataPage(description) {
  const spec = description.prepare;
  const controls = {};
  let file = null;
  let timer = null;
  let running = null;

  // every field from prepare's one definition (its label, help, type, range and default)
  const control = (o) => {
    if (o.kind === "bool") {
      const box = h("input", { type: "checkbox" });
      box.checked = o.default;
      return box;
    }
    if (o.choices.length) {
      const element = h("select");
      fill(element, o.choices);
      element.value = o.default;
      return element;
    }
    if (o.name === "delimiter") {
      const element = h("select");
      fill(element, [["", "detect"], ...o.suggestions.map((d) => [d, d === "\t" ? "tab" : d])]);
      return element;
    }
    if (o.name === "model") return h("select"); // its default follows the format: models()
    if (o.name === "system") return h("textarea", { rows: 2, maxlength: o.max_length });
    if (o.all) return h("input", { inputmode: "numeric", value: o.default, autocomplete: "off" });
    if (o.kind === "int" || o.kind === "float") {
      const step = o.kind === "int" ? 1 : o.below != null ? 0.05 : "any";
      const max = o.high ?? (o.below != null ? o.below - step : undefined);
      return h("input", { type: "number", min: o.low ?? undefined, max, step, value: o.default ?? "" });
    }
    return h("input", { value: o.default ?? "", maxlength: o.max_length, autocomplete: "off" });
  };
  for (const o of Object.values(spec)) {
    if (o.form === "main" || o.form === "more") controls[o.name] = control(o);
  }
  const add = (where, group) => {
    for (const o of Object.values(spec).filter((x) => x.form === group)) {
      $(where).append(field(`opt-${o.name.replaceAll("_", "-")}`, o.label, controls[o.name], o.help));
    }
  };
  add("#prepare-fields", "main");
  add("#prepare-more", "more");

  const models = () => {
    const fallback = spec.model.format_defaults[controls.format.value];
    fill(controls.model, [["", `${fallback} (default)`], ...spec.model.suggestions.filter((m) => m !== fallback)]);
  };
  models();
  const formatChanged = () => {
    const legacy = controls.format.value === "prompt-completion";
    controls.stop.closest(".field").hidden = !legacy;
    controls.system.closest(".field").hidden = legacy;
    models();
  };
  formatChanged();

  const form = $("#prepare-form");
  const input = $("#sheet-file");
  const sheetSelect = $("#opt-sheet");

  function controlFor(param) {
    if (!param) return null;
    const name = param.split(".").pop();
    if (name === "file") return input;
    if (name === "sheet") return sheetSelect;
    return controls[name] || null;
  }

  function controlOf(error) {
    // a form field past the upload's limit is named in the message only
    const named = error.message.match(/form field '(\w+)'/);
    return controlFor(error.param || (named && named[1])) || input;
  }

  function gather() {
    const values = {};
    const context = controls.context.value.trim().toLowerCase();
    if (context === "all") values.context = "all";
    else if (/^\d+$/.test(context)) values.context = Number(context);
    else throw [controls.context, "The context is a number of messages (0 or more), or all."];
    const ratio = Number(controls.valid_ratio.value);
    if (controls.valid_ratio.value === "" || !(ratio >= 0 && ratio < 1)) {
      throw [controls.valid_ratio, "The validation share is a number from 0 to below 1, such as 0.2."];
    }
    values.valid_ratio = ratio;
    for (const o of Object.values(spec)) {
      const control = controls[o.name];
      if (!control || o.name in values || o.name === "system") continue; // system: a part of its own
      // a chosen value as it is (a tab is a delimiter), a typed one without its blanks
      const value = control.tagName === "SELECT" ? control.value : control.value.trim();
      if (o.kind === "bool") values[o.name] = control.checked;
      else if (value === "") continue; // the library's default
      else if (o.kind === "int" || o.kind === "float") values[o.name] = Number(value);
      else values[o.name] = value;
    }
    if (!$("#sheet-field").hidden && sheetSelect.value) values.sheet = sheetSelect.value;
    return values;
  }

  async function run(save) {
    clearErrors(form);
    if (!file) {
      showError(input, "Choose a spreadsheet first.");
      input.focus();
      return;
    }
    let values;
    try {
      values = gather();
    } catch ([control, message]) {
      showError(control, message);
      control.focus();
      return;
    }
    values.save = save;
    const body = new FormData();
    body.append("file", file, file.name);
    body.append("options", JSON.stringify(values));
    const system = controls.system.value.trim();
    if (new TextEncoder().encode(system).length > spec.system.max_length) {
      showError(controls.system, `The system message is too long: at most ${spec.system.max_length} bytes.`);
      controls.system.focus();
      return;
    }
    if (system && values.format !== "prompt-completion") body.append("system", system);
    running?.abort();
    const controller = new AbortController();
    running = controller;
    $("#prepare-status").textContent = save ? "Saving…" : "Preparing…";
    try {
      const result = await api.call("POST", "/convtune/prepare", { form: body, signal: controller.signal });
      if (running !== controller) return;
      show(result);
      $("#prepare-status").textContent = "";
      $("#save-button").disabled = false;
      if (save) saved(result.files);
    } catch (error) {
      if (error.name === "AbortError") return;
      $("#prepare-status").textContent = "";
      $("#prepare-result").hidden = true;
      $("#save-button").disabled = true;
      showError(controlOf(error), error.message);
    } finally {
      if (running === controller) running = null;
    }
  }

  function saved(files) {
    const box = $("#saved");
    const train = files.train;
    const valid = files.valid;
    const link = h("a", { class: "button primary", href: `#train` }, "Train on them →");
    link.addEventListener("click", () => {
      sessionStorage.setItem("convtune.train-files", JSON.stringify({ train: train.id, valid: valid?.id || "" }));
    });
    box.replaceChildren(
      h("p", {}, "Saved: ", h("strong", {}, train.filename), ` (${train.id})`,
        valid ? [" and ", h("strong", {}, valid.filename), ` (${valid.id})`] : null, ". "),
      link,
    );
    box.hidden = false;
  }

  function show(result) {
    const report = result.report;
    const train = report.train;
    const sheets = result.sheets || [];
    $("#sheet-field").hidden = sheets.length < 2;
    if (sheets.length) fill(sheetSelect, sheets);
    $("#prepare-result").hidden = false;
    stats($("#prepare-stats"), [
      ["Actors", report.actors.join(" → ")],
      ["Conversations", number(report.conversations)],
      ["Replies", number(report.replies)],
      ["Examples", number(report.examples)],
      ["Training", `${counted(train?.examples, "example")}, ${counted(report.train_conversations, "conversation")}`],
      ["Validation", report.valid ? `${counted(report.valid.examples, "example")}, ${counted(report.valid_conversations, "conversation")}` : "none"],
      ["Dropped (too long)", number(report.dropped)],
      ["Truncated", number(report.truncated)],
    ]);
    const checks = Object.entries(result.check).map(([side, checked]) => {
      const errors = checked.errors;
      return h("p", { class: errors ? "bad" : "good" },
        `convtune check, ${checked.path}: ${errors ? `${errors} error${errors === 1 ? "" : "s"}` : "no error"}, ${checked.warnings} warning${checked.warnings === 1 ? "" : "s"}.`);
    });
    $("#prepare-checks").replaceChildren(...checks);
    findings($("#prepare-findings"), [
      ...report.findings,
      ...(train?.findings || []),
      ...(report.valid?.findings || []).map((f) => ({ ...f, message: `validation file: ${f.message}` })),
    ]);
    const tokens = train?.tokens;
    histogram($("#histogram"), train?.histogram, {
      limit: train?.context_limit,
      label: "Tokens per training example",
    });
    $("#histogram-caption").textContent = tokens
      ? `Training examples by length, counted with ${train.tokenizer} for ${train.model}: min ${number(tokens.min)}, mean ${number(tokens.mean, 1)}, 90% under ${number(tokens.p90)}, max ${number(tokens.max)} tokens (limit ${number(train.context_limit)}).`
      : "No token counts.";
    stats($("#prepare-cost"), [
      ["Model", train?.model],
      ["Epochs (auto)", number(train?.epochs)],
      ["Tokens billed", number(train?.billed_tokens)],
      ["Price per million", train?.price_per_1m != null ? `$${train.price_per_1m}` : "—"],
      ["Estimated cost", train?.cost != null ? `$${train.cost.toFixed(2)}` : "—"],
    ]);
    preview(result.preview);
  }

  function findings(box, list) {
    if (!list.length) {
      box.replaceChildren(h("p", { class: "good" }, "No warnings."));
      return;
    }
    const rows = list.map((f) =>
      h("tr", { class: f.level },
        h("td", {}, f.level),
        h("td", {}, f.message, f.example ? h("div", { class: "help" }, f.example) : null),
        h("td", { class: "num" }, number(f.count)),
        h("td", {}, f.lines.length ? `line${f.lines.length > 1 ? "s" : ""} ${f.lines.join(", ")}${f.count > f.lines.length ? ", …" : ""}` : "—")));
    box.replaceChildren(h("div", { class: "scroll" }, h("table", { id: "findings" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Level"), h("th", { scope: "col" }, "What"),
        h("th", { scope: "col" }, "Times"), h("th", { scope: "col" }, "Spreadsheet lines"))),
      h("tbody", {}, rows))));
  }

  function preview(items) {
    const list = $("#preview");
    list.replaceChildren();
    for (const item of items) {
      const messages = item.record.messages
        || (item.record.conversations || []).map((t) => ({ role: { human: "user", gpt: "assistant" }[t.from] || t.from, content: t.value }))
        || [];
      const bubbles = messages.length
        ? messages.map((m) => h("div", { class: `bubble ${m.role}${m.weight === 0 ? " context" : ""}` },
          h("span", { class: "role" }, m.weight === 0 ? `${m.role} (context, not trained)` : m.role), m.content))
        : [h("div", { class: "bubble user" }, h("span", { class: "role" }, "prompt"), item.record.prompt),
          h("div", { class: "bubble assistant" }, h("span", { class: "role" }, "completion"), item.record.completion)];
      list.append(h("li", {},
        h("p", { class: "help" }, item.line ? `The reply on spreadsheet line ${item.line}` : "Shortened to fit"),
        h("div", { class: "bubbles" }, bubbles),
        h("pre", { class: "jsonl", "aria-label": "As written in the file" }, item.text)));
    }
  }

  const later = () => {
    clearTimeout(timer);
    if (file) timer = setTimeout(() => run(false), 400);
  };
  const chosen = (picked) => {
    if (!picked) return;
    file = picked;
    $("#sheet-field").hidden = true;
    sheetSelect.replaceChildren();
    $("#saved").hidden = true;
    $("#sheet-file-help").textContent = `${picked.name}, ${number(picked.size)} bytes.`;
    run(false);
  };
  input.addEventListener("change", () => chosen(input.files[0]));
  const drop = $("#drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    chosen(event.dataTransfer.files[0]);
  });
  controls.format.addEventListener("change", formatChanged);
  for (const control of Object.values(controls)) control.addEventListener("change", later);
  sheetSelect.addEventListener("change", later);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run(false);
  });
  $("#save-button").addEventListener("click", () => run(true));
  return { enter() {} };
}
