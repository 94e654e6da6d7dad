// Small DOM helpers: elements from data (always as text, never as HTML), form fields with
// their label, help and error, and errors shown next to the control that caused them.

export const $ = (selector, root = document) => root.querySelector(selector);

// h("p", {class: "x"}, "text", child...): attributes, then children (strings become text).
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "text") element.textContent = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

const SVG = "http://www.w3.org/2000/svg";
export function s(tag, attributes = {}, text) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

// A labelled field: <div.field><label/><control/><p.help/><p.error/></div>
export function field(id, label, control, help) {
  control.id = id;
  const described = [help ? `${id}-help` : null, `${id}-error`].filter(Boolean).join(" ");
  control.setAttribute("aria-describedby", described);
  const box = h("div", { class: control.type === "checkbox" ? "field check" : "field" });
  const labelElement = h("label", { for: id }, label);
  if (control.type === "checkbox") box.append(control, labelElement);
  else box.append(labelElement, control);
  if (help) box.append(h("p", { class: "help", id: `${id}-help` }, help));
  box.append(h("p", { class: "error", id: `${id}-error`, role: "alert", hidden: true }));
  return box;
}

export function showError(control, message) {
  const id = typeof control === "string" ? control : control.id;
  const target = document.getElementById(id);
  const box = document.getElementById(`${id}-error`);
  if (target && target.matches("input, select, textarea")) target.setAttribute("aria-invalid", "true");
  if (box) {
    box.textContent = message;
    box.hidden = false;
  }
  return box;
}

export function clearErrors(root) {
  for (const box of root.querySelectorAll(".error")) {
    box.hidden = true;
    box.textContent = "";
  }
  for (const control of root.querySelectorAll("[aria-invalid]")) control.removeAttribute("aria-invalid");
}

export function options(select, items, { empty } = {}) {
  const chosen = select.value;
  select.replaceChildren();
  if (empty !== undefined) select.append(h("option", { value: "" }, empty));
  for (const item of items) {
    const [value, text] = Array.isArray(item) ? item : [item, item];
    select.append(h("option", { value }, text));
  }
  if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
}

export function number(value, digits = 0) {
  if (value === null || value === undefined) return "—";
  return Number(value).toLocaleString("en", { maximumFractionDigits: digits });
}

// "1 example", "2 examples": a count with its noun in agreement.
export function counted(value, word, plural = `${word}s`) {
  return `${number(value)} ${value === 1 ? word : plural}`;
}

export function when(seconds) {
  if (!seconds) return "—";
  return new Date(seconds * 1000).toLocaleString();
}

export function duration(seconds) {
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

export function stats(dl, pairs) {
  dl.replaceChildren();
  for (const [term, value] of pairs) {
    if (value === undefined) continue;
    dl.append(h("div", {}, h("dt", {}, term), h("dd", {}, value)));
  }
}

export function fileSize(bytes) {
  if (bytes < 1024) return `${bytes} bytes`;
  if (bytes < 1 << 20) return `${(bytes / 1024).toFixed(1)} kB`;
  return `${(bytes / (1 << 20)).toFixed(1)} MB`;
}
