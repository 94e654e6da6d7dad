// 2. Train: the job form, built from the options' description (GET /v1/convtune/options: each
// option's kind, range, "auto" and whether a request may set it), the jobs, and a job's page
// (status, progress, loss chart, checkpoints, events; pause, resume, cancel), polled live.

import * as api from "./api.js";
import { lineChart } from "./charts.js";
import { $, clearErrors, duration, field, h, number, options as fill, showError, stats, when } from "./dom.js";

const TERMINAL = ["succeeded", "failed", "cancelled"];

// "n_epochs" -> "Epochs", "lora_r" -> "LoRA r": the label; the help names the option itself.
function title(name) {
  const words = name.split("_").filter((word, i) => !(i === 0 && word === "n" && name.includes("_")));
  const text = words.map((word) => (word === "lora" ? "LoRA" : word)).join(" ");
  return text[0].toUpperCase() + text.slice(1);
}

// One option's control, from its spec: a checkbox, a list of choices, or a number whose empty
// value means "auto" (OpenAI's hyperparameters) or "no limit" (nullable).
function control(spec) {
  if (spec.kind === "bool") {
    const box = h("input", { type: "checkbox" });
    box.checked = spec.default === true;
    return box;
  }
  if (spec.choices.length) {
    const select = h("select");
    fill(select, spec.choices);
    select.value = spec.default;
    return select;
  }
  const input = h("input", {
    type: "number",
    inputmode: spec.kind === "int" ? "numeric" : "decimal",
    step: spec.kind === "int" ? 1 : "any",
    min: spec.low ?? false,
    max: spec.high ?? false,
  });
  if (spec.auto) input.placeholder = "auto";
  else if (spec.nullable) input.placeholder = "no limit";
  if (typeof spec.default === "number") input.value = spec.default;
  return input;
}

// The value to send, undefined to leave the option to the server, or throws the message.
function value(spec, input) {
  if (spec.kind === "bool") return input.checked === spec.default ? undefined : input.checked;
  if (spec.choices.length) return input.value === spec.default ? undefined : input.value;
  const text = input.value.trim();
  if (text === "" || text.toLowerCase() === "auto") {
    if (spec.auto || spec.nullable) return undefined;
    throw `${spec.name} must be ${spec.expected}.`;
  }
  const n = Number(text);
  const fits = Number.isFinite(n) && (spec.kind !== "int" || Number.isInteger(n))
    && (spec.low === null || n >= spec.low) && (spec.high === null || n <= spec.high);
  if (!fits) throw `${spec.name} must be ${spec.expected}, not ${text}.`;
  return n === spec.default ? undefined : n;
}

export function trainPage(description) {
  const specs = description.training.filter((spec) => spec.api); // what a request may set
  const inputs = {};
  for (const spec of specs) {
    const input = control(spec);
    inputs[spec.name] = input;
    const where = spec.hyperparameter ? "#hyperparameters" : "#trainer-fields";
    const range = spec.expected ? ` Accepts ${spec.expected}.` : "";
    $(where).append(field(`option-${spec.name}`, title(spec.name), input, `${spec.help}${range} (${spec.name})`));
  }
  // an option of one method only (DPO's beta) shows while that method is chosen
  const methodInput = inputs.method;
  function showMethodOptions() {
    for (const spec of specs.filter((s) => s.only_for)) {
      inputs[spec.name].closest(".field").hidden = methodInput?.value !== spec.only_for;
    }
  }
  methodInput?.addEventListener("change", showMethodOptions);
  showMethodOptions();
  const form = $("#job-form");

  function controlFor(param, message) {
    if (!param) return /\bbase model\b/.test(message) ? $("#job-model") : null; // the service's words
    const last = param.split(".").pop();
    const map = {
      model: "#job-model", training_file: "#job-training-file",
      validation_file: "#job-validation-file", suffix: "#job-suffix",
    };
    if (map[last]) return $(map[last]);
    if (inputs[last]) return inputs[last];
    // "Invalid options: max_steps must be ..." names the option in its message
    const named = specs.find((spec) => message.includes(spec.name));
    return named ? inputs[named.name] : null;
  }

  async function refresh() {
    const [models, files, jobs] = await Promise.all([
      api.get("/models"), api.get("/files?purpose=fine-tune&order=desc"), api.get("/fine_tuning/jobs?limit=50"),
    ]);
    const list = $("#base-models");
    list.replaceChildren(...models.data.map((m) =>
      h("option", { value: m.id }, m.owned_by === "system" ? "base model" : "fine-tuned")));
    const names = files.data.map((f) => [f.id, `${f.filename} (${f.id})`]);
    fill($("#job-training-file"), names, { empty: "Choose a file" });
    fill($("#job-validation-file"), names, { empty: "None" });
    const chosen = sessionStorage.getItem("convtune.train-files");
    if (chosen) {
      const { train, valid } = JSON.parse(chosen);
      $("#job-training-file").value = train;
      $("#job-validation-file").value = valid;
      sessionStorage.removeItem("convtune.train-files");
    }
    if (!$("#job-model").value) {
      const base = models.data.find((m) => m.owned_by === "system");
      if (base) $("#job-model").value = base.id;
    }
    const body = $("#jobs tbody");
    body.replaceChildren(...jobs.data.map((job) => h("tr", {},
      h("td", {}, h("a", { href: `#job/${job.id}` }, job.id)),
      h("td", {}, job.fine_tuned_model || job.model),
      h("td", {}, h("span", { class: `badge ${job.status}` }, job.status.replace("_", " "))),
      h("td", {}, when(job.created_at)))));
    $("#jobs-empty").hidden = jobs.data.length > 0;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const body = { model: $("#job-model").value.trim(), training_file: $("#job-training-file").value };
    if (!body.model) return showError($("#job-model"), "Choose a base model.");
    if (!body.training_file) return showError($("#job-training-file"), "Choose a training file (save one on the Data page).");
    if ($("#job-validation-file").value) body.validation_file = $("#job-validation-file").value;
    if ($("#job-suffix").value.trim()) body.suffix = $("#job-suffix").value.trim();
    const groups = { method: {}, hyperparameters: {}, convtune: {} };
    const type = methodInput ? methodInput.value : "supervised";
    for (const spec of specs) {
      if (spec.only_for && spec.only_for !== type) continue; // hidden: another method's
      try {
        const given = value(spec, inputs[spec.name]);
        if (given !== undefined) groups[spec.field][spec.name] = given;
      } catch (message) {
        if (!spec.hyperparameter) $("#trainer-options").open = true;
        showError(inputs[spec.name], message);
        inputs[spec.name].focus();
        return;
      }
    }
    if (Object.keys(groups.hyperparameters).length || type !== "supervised") {
      body.method = { type, [type]: { hyperparameters: groups.hyperparameters } };
    }
    if (Object.keys(groups.convtune).length) body.convtune = groups.convtune;
    $("#job-form-status").textContent = "Starting…";
    try {
      const job = await api.post("/fine_tuning/jobs", body);
      location.hash = `#job/${job.id}`;
    } catch (error) {
      const target = controlFor(error.param, error.message);
      if (target) {
        if (target.closest("details")) target.closest("details").open = true;
        showError(target, error.message);
      } else showError("job-form", error.message);
    } finally {
      $("#job-form-status").textContent = "";
    }
  });

  return {
    enter() {
      refresh().catch((error) => showError("job-form", error.message));
    },
  };
}

// The job's "Did it learn?" (a local job with a validation file ends with one): the fine-tune
// against its base model on held-out prompts, grader by grader, and a few answers side by side.
function verdict(found) {
  const section = $("#job-verdict");
  section.hidden = !found;
  if (!found) return;
  const word = found.graders[0].verdict;
  const parts = found.graders.map((g) => {
    const d = g.difference;
    const sign = (x) => (x >= 0 ? "+" : "") + x.toFixed(2);
    return `${g.grader} ${sign(d.mean)} [${sign(d.low)}, ${sign(d.high)}]`;
  });
  const prompts = `${found.prompts} validation prompt${found.prompts === 1 ? "" : "s"}`;
  const note = found.includes_probe ? ", including those that chose the checkpoint" : "";
  const said = { better: "Better than", worse: "Worse than" }[word] || "No clear difference from";
  $("#job-verdict-text").replaceChildren(
    h("strong", { class: { better: "good", worse: "bad" }[word] || "" }, said),
    ` ${found.base_model}: ${parts.join(", ")} (95% intervals, on ${prompts}${note}).`);
  $("#job-verdict-examples tbody").replaceChildren(...found.examples.map((e) => h("tr", {},
    h("td", {}, e.question), h("td", {}, e.base), h("td", {}, e.fine_tuned), h("td", {}, e.reference))));
}

export function jobPage() {
  let jobId = null;
  let timer = null;
  let events = []; // every event of the job seen so far, newest first as the API lists them
  let seen = new Set();
  let job = null;

  async function fetchEvents() {
    // newest first: page back until an event already seen (or the first of the job)
    const fresh = [];
    let after = null;
    for (;;) {
      const page = await api.get(`/fine_tuning/jobs/${jobId}/events?limit=${seen.size ? 100 : 1000}${after ? `&after=${after}` : ""}`);
      let known = false;
      for (const event of page.data) {
        if (seen.has(event.id)) {
          known = true;
          break;
        }
        fresh.push(event);
      }
      if (known || !page.has_more || !page.data.length) break;
      after = page.data[page.data.length - 1].id;
    }
    for (const event of fresh) seen.add(event.id);
    events = fresh.concat(events);
  }

  function render(checkpoints) {
    const steps = new Map();
    for (const event of events.slice().reverse()) { // oldest first: a resumed step's last run wins
      if (event.type === "metrics" && event.data?.step !== undefined) steps.set(event.data.step, event.data);
    }
    const metrics = [...steps.values()].sort((a, b) => a.step - b.step);
    $("#job-title").textContent = `Job ${job.id}`;
    const status = $("#job-status");
    status.textContent = job.status.replace("_", " ");
    status.className = `badge ${job.status}`;
    $("#job-summary").textContent = job.fine_tuned_model ? `→ ${job.fine_tuned_model}` : `${job.model}`;
    const last = metrics[metrics.length - 1];
    const progress = $("#job-progress");
    let text = "";
    if (job.status === "succeeded") {
      progress.max = 1;
      progress.value = 1;
      text = "Done.";
    } else if (last) {
      progress.max = last.total_steps;
      progress.value = last.step;
      text = `Step ${last.step} of ${last.total_steps}`;
      if (job.estimated_finish && !TERMINAL.includes(job.status) && job.status !== "paused") {
        text += `, about ${duration(job.estimated_finish - Date.now() / 1000)} left`;
      }
    } else {
      progress.removeAttribute("value"); // indeterminate while validating or queued
      const said = events.find((e) => e.type === "message")?.message; // loading, base answers
      text = { validating_files: "Checking the files…", queued: "Waiting for a free slot…" }[job.status]
        || (job.status === "running" && said ? `${said}…` : "");
    }
    if (TERMINAL.includes(job.status) && job.status !== "succeeded") text = job.status === "failed" ? "Failed." : "Cancelled.";
    $("#job-progress-text").textContent = text;
    const train = metrics.map((m) => [m.step, m.train_loss]).filter((p) => p[1] != null);
    const valid = metrics.filter((m) => m.valid_loss != null).map((m) => [m.step, m.valid_loss]);
    lineChart($("#loss-chart"), [
      { name: "training loss", className: "train", points: train },
      { name: "validation loss", className: "valid", points: valid },
    ], { xLabel: "step", yLabel: "loss", label: "Loss by step" });
    $("#loss-chart").dataset.points = String(train.length);
    $("#loss-caption").textContent = train.length
      ? `Loss by step: training ${train[train.length - 1][1].toFixed(4)}${valid.length ? `, validation ${valid[valid.length - 1][1].toFixed(4)}` : ""} at step ${train[train.length - 1][0]}.`
      : "No metrics yet.";
    const error = $("#job-error");
    error.hidden = !job.error;
    error.textContent = job.error ? `${job.error.message}` : "";
    $("#job-pause").disabled = !["validating_files", "queued", "running"].includes(job.status);
    $("#job-resume").disabled = !["paused", "failed", "cancelled"].includes(job.status);
    $("#job-cancel").disabled = TERMINAL.includes(job.status);
    const chat = $("#job-chat");
    chat.hidden = !job.fine_tuned_model;
    if (job.fine_tuned_model) chat.href = `#models/${encodeURIComponent(job.fine_tuned_model)}`;
    const method = job.method?.type || "supervised";
    const hp = job.method?.[method]?.hyperparameters || job.hyperparameters || {};
    const margin = [...metrics].reverse().find((m) => m.train_reward_margin != null);
    stats($("#job-details"), [
      ["Method", method === "dpo" ? "DPO (preference)" : "supervised"],
      ...(margin ? [["Reward margin, accuracy", `${margin.train_reward_margin.toFixed(3)}, ${(100 * margin.train_reward_accuracy).toFixed(0)}% at step ${margin.step}`]] : []),
      ["Base model", job.model],
      ["Training file", job.training_file],
      ["Validation file", job.validation_file || "none"],
      ["Hyperparameters", Object.entries(hp).map(([k, v]) => `${k} ${v}`).join(", ")],
      ["Trained tokens", number(job.trained_tokens)],
      ["Created", when(job.created_at)],
      ["Finished", when(job.finished_at)],
    ]);
    if (checkpoints) {
      $("#checkpoints tbody").replaceChildren(...checkpoints.map((c) => h("tr", {},
        h("td", { class: "num" }, c.step_number),
        h("td", {}, h("a", { href: `#models/${encodeURIComponent(c.fine_tuned_model_checkpoint)}` }, c.fine_tuned_model_checkpoint)),
        h("td", { class: "num" }, c.metrics.train_loss?.toFixed(4) ?? "—"),
        h("td", { class: "num" }, (c.metrics.full_valid_loss ?? c.metrics.valid_loss)?.toFixed(4) ?? "—"))));
      if (!checkpoints.length) {
        $("#checkpoints tbody").append(h("tr", {}, h("td", { colspan: 4, class: "help" },
          "None yet: one is written at the end of each epoch, and when the job pauses.")));
      }
    }
    verdict(events.find((e) => e.data?.verdict?.graders)?.data.verdict);
    $("#events").replaceChildren(...events.map((e) => h("li", { class: e.level },
      h("time", {}, new Date(e.created_at * 1000).toLocaleTimeString()), " ", e.message)));
  }

  async function poll() {
    timer = null;
    const id = jobId;
    try {
      job = await api.get(`/fine_tuning/jobs/${id}`);
      await fetchEvents();
      const checkpoints = await api.get(`/fine_tuning/jobs/${id}/checkpoints?limit=100`);
      if (id !== jobId) return;
      render(checkpoints.data);
    } catch (error) {
      if (id !== jobId) return;
      showError("job-actions", error.message);
      if (error.status === 404 || error.status === 401) return;
    }
    if (id === jobId && job && !TERMINAL.includes(job.status)) timer = setTimeout(poll, 1000);
  }

  async function act(what) {
    clearErrors($("#page-job"));
    try {
      job = await api.post(`/fine_tuning/jobs/${jobId}/${what}`);
      render(null);
    } catch (error) {
      showError("job-actions", error.message);
    }
    clearTimeout(timer);
    poll();
  }
  $("#job-pause").addEventListener("click", () => act("pause"));
  $("#job-resume").addEventListener("click", () => act("resume"));
  $("#job-cancel").addEventListener("click", () => act("cancel"));

  return {
    enter(id) {
      clearTimeout(timer);
      clearErrors($("#page-job"));
      if (id !== jobId) {
        events = [];
        seen = new Set();
        $("#events").replaceChildren();
        $("#checkpoints tbody").replaceChildren();
      }
      jobId = id;
      $("#job-title").textContent = `Job ${id}`;
      poll();
    },
    leave() {
      clearTimeout(timer);
      jobId = null;
    },
  };
}
