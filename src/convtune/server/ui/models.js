// 3. Models: the list (delete with a confirmation), a chat whose replies stream in, with a
// second model answering the same messages side by side, and a comparison on a validation
// file (POST /v1/convtune/compare: convtune eval's report, shown in a sandboxed frame).

import * as api from "./api.js";
import { $, clearErrors, h, options as fill, showError, when } from "./dom.js";

function confirmDialog(text, action) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = action;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

export function modelsPage() {
  let models = [];
  let chats = []; // one per column: {model, messages, log}
  let controller = null;

  async function refresh(selected) {
    const [listed, files] = await Promise.all([api.get("/models"), api.get("/files?purpose=fine-tune&order=desc")]);
    models = listed.data;
    const body = $("#models tbody");
    body.replaceChildren(...models.map((model) => {
      const tuned = model.owned_by !== "system";
      const remove = tuned
        ? h("button", { type: "button", class: "danger small", "aria-label": `Delete ${model.id}` }, "Delete")
        : null;
      remove?.addEventListener("click", () => removeModel(model.id, remove));
      const chat = h("button", { type: "button", class: "small", "aria-label": `Chat with ${model.id}` }, "Chat");
      chat.addEventListener("click", () => {
        $("#chat-model").value = model.id;
        newChat();
        $("#chat-message").focus();
      });
      return h("tr", {},
        h("td", { class: "model-id" }, model.id),
        h("td", {}, tuned ? "fine-tuned" : "base model"),
        h("td", {}, model.created ? when(model.created) : "—"),
        h("td", { class: "row-actions" }, chat, remove));
    }));
    const ids = models.map((m) => m.id);
    // a fine-tuned model's base is in its id (ft:BASE:suffix:job), and listed as a base model
    const baseOf = (id) => (id.startsWith("ft:") && ids.includes(id.split(":")[1]) ? id.split(":")[1] : null);
    const tuned = models.find((m) => m.owned_by !== "system")?.id || "";
    const base = baseOf(tuned) || models.find((m) => m.owned_by === "system")?.id || "";
    fill($("#chat-model"), ids);
    fill($("#chat-other"), ids, { empty: "No second model" });
    fill($("#compare-a"), ids);
    fill($("#compare-b"), ids);
    fill($("#compare-file"), files.data.map((f) => [f.id, `${f.filename} (${f.id})`]), { empty: "Choose a file" });
    if (selected && ids.includes(selected)) {
      $("#chat-model").value = selected;
      const from = baseOf(selected);
      if (from) {
        $("#chat-other").value = from;
        $("#compare-a").value = from;
      }
      $("#compare-b").value = selected;
    } else if (tuned) {
      $("#compare-a").value = base;
      $("#compare-b").value = tuned;
    }
    const validation = files.data.find((f) => /valid/.test(f.filename));
    if (validation && !$("#compare-file").value) $("#compare-file").value = validation.id;
    newChat();
  }

  async function removeModel(id, button) {
    clearErrors($("#page-models"));
    if (!(await confirmDialog(`Delete ${id}? Its weights are removed from this machine.`, "Delete"))) {
      button.focus();
      return;
    }
    try {
      await api.del(`/models/${encodeURIComponent(id)}`);
      await refresh();
      $("#models").focus?.();
    } catch (error) {
      showError("models", error.message);
    }
  }

  function newChat() {
    controller?.abort();
    const chosen = [$("#chat-model").value, $("#chat-other").value].filter(Boolean);
    const columns = $("#chat-columns");
    chats = chosen.map((model) => ({
      model,
      messages: [],
      log: h("ol", { class: "chat-log", "aria-live": "polite" }),
    }));
    columns.replaceChildren(...chats.map((chat) => h("section", { class: "chat-column", "aria-label": `Replies of ${chat.model}` },
      h("h3", { class: "model-id" }, chat.model), chat.log)));
    columns.classList.toggle("two", chats.length === 2);
  }

  async function answer(chat, system, settings, signal) {
    const bubble = h("div", { class: "bubble assistant streaming" });
    chat.log.append(h("li", {}, bubble));
    const messages = [...(system ? [{ role: "system", content: system }] : []), ...chat.messages];
    let text = "";
    try {
      for await (const piece of api.chatStream({ model: chat.model, messages, ...settings }, signal)) {
        text += piece;
        bubble.textContent = text;
      }
      if (!text) bubble.append(h("span", { class: "help" }, "(an empty reply)"));
    } catch (error) {
      if (error.name !== "AbortError") bubble.append(h("span", { class: "error-text" }, error.message));
      else bubble.append(h("span", { class: "help" }, " (stopped)"));
    }
    bubble.classList.remove("streaming");
    chat.messages.push({ role: "assistant", content: text });
  }

  async function send(event) {
    event.preventDefault();
    const form = $("#chat-form");
    clearErrors(form);
    const message = $("#chat-message").value.trim();
    if (!message) return showError($("#chat-message"), "Write a message first.");
    const maxTokens = Number($("#chat-max-tokens").value);
    if (!Number.isInteger(maxTokens) || maxTokens < 1 || maxTokens > 8192) {
      return showError($("#chat-max-tokens"), "A whole number of tokens from 1 to 8192.");
    }
    const temperature = Number($("#chat-temperature").value);
    if ($("#chat-temperature").value === "" || !(temperature >= 0 && temperature <= 2)) {
      return showError($("#chat-temperature"), "A number from 0 to 2.");
    }
    const wanted = [$("#chat-model").value, $("#chat-other").value].filter(Boolean);
    if (!wanted.length) return showError($("#chat-model"), "Choose a model.");
    if (wanted.join("\n") !== chats.map((c) => c.model).join("\n")) newChat();
    $("#chat-message").value = "";
    controller = new AbortController();
    $("#chat-send").disabled = true;
    $("#chat-stop").disabled = false;
    for (const chat of chats) {
      chat.messages.push({ role: "user", content: message });
      chat.log.append(h("li", {}, h("div", { class: "bubble user" }, message)));
    }
    const settings = { max_tokens: maxTokens, temperature };
    const system = $("#chat-system").value.trim();
    const results = await Promise.allSettled(chats.map((chat) => answer(chat, system, settings, controller.signal)));
    for (const result of results) if (result.status === "rejected") showError($("#chat-message"), String(result.reason));
    $("#chat-send").disabled = false;
    $("#chat-stop").disabled = true;
    $("#chat-message").focus();
  }

  async function compare(event) {
    event.preventDefault();
    const form = $("#compare-form");
    clearErrors(form);
    const a = $("#compare-a").value;
    const b = $("#compare-b").value;
    const file = $("#compare-file").value;
    const limit = Number($("#compare-limit").value);
    if (!a) return showError($("#compare-a"), "Choose a model.");
    if (!b || a === b) return showError($("#compare-b"), "Choose a second, different model.");
    if (!file) return showError($("#compare-file"), "Choose a validation file (saved on the Data page).");
    if (!Number.isInteger(limit) || limit < 1 || limit > 100) {
      return showError($("#compare-limit"), "A whole number of examples from 1 to 100.");
    }
    $("#compare-run").disabled = true;
    $("#compare-status").textContent = "Both models are answering… (a minute or more on a CPU)";
    try {
      const result = await api.post("/convtune/compare", { models: [a, b], file, limit });
      const html = await api.get(result.report.replace(/^\/v1/, ""));
      const frame = $("#compare-report");
      frame.srcdoc = html;
      frame.hidden = false;
      const link = $("#compare-download");
      URL.revokeObjectURL(link.href);
      link.href = URL.createObjectURL(new Blob([html], { type: "text/html" }));
      link.hidden = false;
      const models = result.summary.models;
      $("#compare-status").textContent = `Compared on ${result.summary.examples} examples: ${models.map((m) => m.model).join(" and ")}.`;
    } catch (error) {
      $("#compare-status").textContent = "";
      const where = { models: "#compare-a", file: "#compare-file", limit: "#compare-limit" }[error.param?.split(".")[0]];
      showError(where ? $(where) : "compare", error.message);
    } finally {
      $("#compare-run").disabled = false;
    }
  }

  $("#chat-form").addEventListener("submit", send);
  $("#chat-message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("#chat-form").requestSubmit();
    }
  });
  $("#chat-stop").addEventListener("click", () => controller?.abort());
  $("#chat-clear").addEventListener("click", newChat);
  $("#chat-model").addEventListener("change", newChat);
  $("#chat-other").addEventListener("change", newChat);
  $("#compare-form").addEventListener("submit", compare);

  return {
    enter(selected) {
      clearErrors($("#page-models"));
      refresh(selected).catch((error) => showError("models", error.message));
    },
    leave() {
      controller?.abort();
    },
  };
}
