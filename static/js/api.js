// Talking to the server: JSON over fetch (session cookie + CSRF header) and websockets that reconnect.

export function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [k, ...v] = part.trim().split("=");
    if (k === name) return decodeURIComponent(v.join("="));
  }
  return "";
}

export function csrfToken() {
  // The cookie is the source; the hidden form input is a fallback when the cookie is HttpOnly.
  return cookie("csrftoken") || document.querySelector("input[name=csrfmiddlewaretoken]")?.value || "";
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.detail || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function request(method, url, body, { signal } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRFToken"] = csrfToken();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(url, {
    method, headers, signal, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await res.json(); } catch { /* an empty or HTML body */ }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

export const getJSON = (url, opts) => request("GET", url, undefined, opts);
export const postJSON = (url, body, opts) => request("POST", url, body ?? {}, opts);

export const api = {
  estimate: (spec, opts) => postJSON("/api/v1/estimate", spec, opts),
  jobs: (params) => getJSON(`/api/v1/jobs?${new URLSearchParams(params)}`),
  cancel: (id) => postJSON(`/api/v1/jobs/${id}/cancel`),
  setPriority: (id, priority) => postJSON(`/api/v1/jobs/${id}/priority`, { priority }),
  moveToTop: (id) => postJSON(`/api/v1/jobs/${id}/move-to-top`),
};

export function wsURL(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}

/**
 * A websocket that reconnects with exponential backoff (minDelay doubling up to maxDelay).
 * `url` is a function so each attempt can say where to resume (e.g. `?after=<lastSeq>`).
 * Close codes 4401/4403 (not logged in / not allowed) are final.
 */
export class LiveSocket {
  constructor({ url, onMessage, onState = () => {}, minDelay = 500, maxDelay = 10000 }) {
    Object.assign(this, { url, onMessage, onState, minDelay, maxDelay });
    this.delay = minDelay;
    this.stopped = false;
    this.ws = null;
    this.timer = null;
    this.connects = 0;
  }

  start() {
    this.stopped = false;
    this.open();
    return this;
  }

  open() {
    clearTimeout(this.timer);
    this.onState("connecting");
    const ws = new WebSocket(wsURL(this.url()));
    this.ws = ws;
    ws.onopen = () => {
      this.delay = this.minDelay;
      this.connects += 1;
      this.onState("open");
    };
    ws.onmessage = (e) => {
      let msg;
      try { msg = JSON.parse(e.data); } catch { return; }
      this.onMessage(msg);
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) { this.onState("done"); return; }
      if (e.code === 4401 || e.code === 4403) { this.onState("closed"); return; }
      this.onState("connecting");
      this.timer = setTimeout(() => this.open(), this.delay);
      this.delay = Math.min(this.delay * 2, this.maxDelay);
    };
  }

  /** Stop for good: no reconnect. */
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
    else this.onState("done");
  }
}
