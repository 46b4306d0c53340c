// Talking to the REST API: credentials (kept in sessionStorage only, sent
// as HTTP Basic, never put in a URL), JSON calls with the platform's error
// body turned into an Error, and the server-sent change stream read with
// fetch (EventSource cannot send an Authorization header).

const KEY = "connstate.credentials";

/** The stored {key, token}, or null. */
export function credentials() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY));
  } catch {
    return null;
  }
}

export function saveCredentials(key, token) {
  sessionStorage.setItem(KEY, JSON.stringify({ key, token }));
}

export function forgetCredentials() {
  sessionStorage.removeItem(KEY);
}

function authHeaders(extra = {}) {
  const headers = { Accept: "application/json", ...extra };
  const c = credentials();
  if (c) {
    const bytes = new TextEncoder().encode(`${c.key}:${c.token}`);
    headers.Authorization = "Basic " + btoa(String.fromCharCode(...bytes));
  }
  return headers;
}

/** An API answer other than 2xx: the status and the platform's message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Builds `path?query` from an object, leaving out empty values. */
export function withQuery(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

// `credentials: "omit"`: the browser neither sends nor asks for stored
// HTTP credentials (no login pop-up on a 401); the header is ours.
async function call(method, path, { signal, accept } = {}) {
  const response = await fetch(path, {
    method,
    signal,
    credentials: "omit",
    cache: "no-store",
    headers: authHeaders(accept ? { Accept: accept } : {}),
  });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && body.message) message = body.message;
    } catch {
      // Not the platform's body: keep the status line.
    }
    throw new ApiError(response.status, message);
  }
  return response;
}

export async function getJson(path, options) {
  const response = await call("GET", path, options);
  return response.json();
}

export async function post(path) {
  await call("POST", path);
}

/**
 * Reads the server-sent change stream at `path` until `signal` aborts,
 * calling `onEvent({event, id, data})` for each event. Reconnects after a
 * failure or an `end` event, resuming after the last id it saw.
 */
export async function stream(path, params, onEvent, signal, onState = () => {}) {
  let lastId = null;
  let delay = 500;
  while (!signal.aborted) {
    try {
      const q = lastId ? { ...params, lastEventId: lastId } : params;
      const response = await call("GET", withQuery(path, q), {
        signal,
        accept: "text/event-stream",
      });
      onState("live");
      delay = 500;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const ev = { event: "message", id: null, data: "" };
          for (const line of block.split("\n")) {
            if (line.startsWith(":")) continue;
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "event") ev.event = val;
            else if (field === "id") ev.id = val;
            else if (field === "data") ev.data += (ev.data ? "\n" : "") + val;
          }
          if (ev.id) lastId = ev.id;
          if (ev.event === "end") {
            // outOfRange: the revision is gone; start again from now.
            if (ev.data.includes("outOfRange")) lastId = null;
            continue;
          }
          try {
            onEvent({ ...ev, data: ev.data ? JSON.parse(ev.data) : null });
          } catch (e) {
            console.error("stream event", e);
          }
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
        onState("refused");
        return;
      }
    }
    if (signal.aborted) return;
    onState("reconnecting");
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 10000);
  }
}
