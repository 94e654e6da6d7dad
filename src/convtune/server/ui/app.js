// The page: the key, the three sections (hash routes #data, #train, #job/ID, #models), and
// what they share (the options' description, fetched once).

import * as api from "./api.js";
import { $, clearErrors, showError } from "./dom.js";
import { dataPage } from "./data.js";
import { trainPage, jobPage } from "./train.js";
import { modelsPage } from "./models.js";

const pages = {};
let options = null; // GET /v1/convtune/options
let current = null;

function takeKeyFromUrl() {
  // `convtune ui` opens /#key=...: the fragment never reaches the server; drop it from the
  // address bar and the history at once.
  const match = location.hash.match(/^#key=([^&]+)/);
  if (!match) return;
  api.setKey(decodeURIComponent(match[1]));
  history.replaceState(null, "", `${location.pathname}#data`);
}

function askForKey(message) {
  show("key");
  const input = $("#key-input");
  clearErrors($("#key-form"));
  if (message) showError(input, message);
  input.focus();
}

async function useKey(event) {
  event.preventDefault();
  const input = $("#key-input");
  clearErrors($("#key-form"));
  const value = input.value.trim();
  if (!value) {
    showError(input, "Enter one of the keys convtune serve was started with.");
    return;
  }
  try {
    await api.get("/models", { token: value, quiet401: true });
  } catch (error) {
    showError(
      input,
      error.status === 401
        ? `The server refused this key: ${error.message}`
        : error.message,
    );
    return;
  }
  api.setKey(value);
  input.value = "";
  options = null;
  await start();
}

function show(name, argument) {
  for (const section of document.querySelectorAll(".page")) section.hidden = true;
  const section = $(`#page-${name}`);
  section.hidden = false;
  $("#change-key").hidden = name === "key";
  const tab = name === "job" ? "train" : name;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === tab) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (current && current !== pages[name]) current.leave?.();
  current = pages[name] || null;
  current?.enter(argument);
}

function route() {
  if (!api.key()) {
    askForKey();
    return;
  }
  const hash = location.hash.slice(1) || "data";
  const [name, argument] = hash.split("/");
  if (name === "job" && argument) show("job", decodeURIComponent(argument));
  else if (["data", "train", "models"].includes(name)) {
    show(name, argument ? decodeURIComponent(argument) : undefined);
  }
  else show("data");
}

async function start() {
  if (!api.key()) {
    askForKey();
    return;
  }
  if (!options) {
    try {
      options = await api.get("/convtune/options");
    } catch (error) {
      if (error.status !== 401) askForKey(error.message);
      return;
    }
    pages.data = dataPage(options);
    pages.train = trainPage(options);
    pages.job = jobPage();
    pages.models = modelsPage();
  }
  route();
}

document.addEventListener("DOMContentLoaded", () => {
  takeKeyFromUrl();
  api.onUnauthorized((message) => {
    api.setKey("");
    askForKey(`The server refused the key: ${message}`);
  });
  // a control's error goes as soon as it is edited
  document.addEventListener("input", (event) => {
    const control = event.target;
    if (control.getAttribute?.("aria-invalid") !== "true") return;
    control.removeAttribute("aria-invalid");
    const box = document.getElementById(`${control.id}-error`);
    if (box) box.hidden = true;
  });
  $("#key-form").addEventListener("submit", useKey);
  $("#change-key").addEventListener("click", () => askForKey());
  window.addEventListener("hashchange", () => {
    takeKeyFromUrl();
    if (options) route();
    else start();
  });
  start();
});
