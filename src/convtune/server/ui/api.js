// The page's one way to the server: /v1 with the bearer key, OpenAI's error envelope as an
// APIError (status, message, param), and chat replies streamed as server-sent events.

const KEY = "convtune.key";

export class APIError extends Error {
  constructor(status, error) {
    super(error.message || `The server answered ${status}.`);
    this.status = status;
    this.param = error.param || null;
    this.code = error.code || null;
  }
}

export function key() {
  return sessionStorage.getItem(KEY) || "";
}

export function setKey(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

// Called with the server's message when a key is refused (the page asks for another one).
let unauthorized = () => {};
export function onUnauthorized(handler) {
  unauthorized = handler;
}

async function send(method, path, { json, form, signal, token } = {}) {
  const headers = { Authorization: `Bearer ${token ?? key()}` };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // multipart: the browser sets the boundary
  }
  try {
    return await fetch(`/v1${path}`, { method, headers, body, signal });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new APIError(0, {
      message: "The server cannot be reached: is convtune serve still running?",
    });
  }
}

async function failure(response) {
  let error = {};
  try {
    error = (await response.json()).error || {};
  } catch {
    error = { message: `The server answered ${response.status} ${response.statusText}.` };
  }
  return new APIError(response.status, error);
}

// A JSON (or text) answer; an APIError for anything else. `quiet401`: the caller handles a
// refused key itself (the key form), instead of the page asking for another.
export async function call(method, path, options = {}) {
  const response = await send(method, path, options);
  if (!response.ok) {
    const error = await failure(response);
    if (response.status === 401 && !options.quiet401) unauthorized(error.message);
    throw error;
  }
  const type = response.headers.get("content-type") || "";
  return type.includes("application/json") ? response.json() : response.text();
}

export const get = (path, options) => call("GET", path, options);
export const post = (path, json, options = {}) => call("POST", path, { ...options, json });
export const del = (path) => call("DELETE", path);

// Every page of an OpenAI list (`after` cursors), newest first as the API gives them.
export async function all(path, limit = 100) {
  const items = [];
  let after = null;
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await get(`${path}${sep}limit=${limit}${after ? `&after=${after}` : ""}`);
    items.push(...page.data);
    if (!page.has_more || !page.data.length) return items;
    after = page.data[page.data.length - 1].id;
  }
}

// A streamed chat completion: yields each piece of text as it arrives (fetch + ReadableStream,
// OpenAI's `data: {...}` events ending with `data: [DONE]`). An error event throws.
export async function* chatStream(body, signal) {
  const response = await send("POST", "/chat/completions", {
    json: { ...body, stream: true },
    signal,
  });
  if (!response.ok) {
    const error = await failure(response);
    if (response.status === 401) unauthorized(error.message);
    throw error;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") return;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new APIError(500, chunk.error);
          const piece = chunk.choices?.[0]?.delta?.content;
          if (piece) yield piece;
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}
