// Talking to the curvscope server: REST (figure JSON, runs, events) and live websockets.
// A token, if the server protects reads, is taken from ?token= once and kept in the session.

const params = new URLSearchParams(location.search);
if (params.has("token")) sessionStorage.setItem("curvscope-token", params.get("token"));
const token = sessionStorage.getItem("curvscope-token");

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

/** GET a JSON document; throws ApiError with the server's `detail` on failure. */
export async function getJSON(path, query = {}) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(query)) {
    if (value === undefined || value === null) continue;
    for (const v of Array.isArray(value) ? value : [value]) url.searchParams.append(key, v);
  }
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  let response;
  try {
    response = await fetch(url, { headers });
  } catch (err) {
    throw new ApiError(0, `cannot reach the server (${err.message})`);
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch { /* not JSON */ }
    throw new ApiError(response.status, detail);
  }
  return response.json();
}

export const runs = () => getJSON("/api/runs");
export const runFigures = (run, query) => getJSON(`/api/runs/${encodeURIComponent(run)}/figures`, query);
export const stepFigures = (run, query) =>
  getJSON(`/api/runs/${encodeURIComponent(run)}/figures/step`, query);
export const compareFigures = (query) => getJSON("/api/compare/figures", query);
export const exportUrl = (run, format) =>
  `/api/runs/${encodeURIComponent(run)}/export?format=${format}`;

/**
 * A websocket that reconnects with back-off. `onMessage(obj)` gets each decoded message,
 * `onStatus(status)` gets "connecting" | "live" | "lost", and `onReopen()` runs when a lost
 * connection is back (the page then refetches what it may have missed).
 */
export class LiveSocket {
  constructor(path, { onMessage, onStatus = () => {}, onReopen = () => {} }) {
    this.path = path;
    this.onMessage = onMessage;
    this.onStatus = onStatus;
    this.onReopen = onReopen;
    this.delay = 250;
    this.everOpen = false;
    this.closed = false;
    this.connect();
  }

  url() {
    const url = new URL(this.path, location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    if (token) url.searchParams.set("token", token);
    return url;
  }

  connect() {
    if (this.closed) return;
    this.onStatus(this.everOpen ? "lost" : "connecting");
    const ws = new WebSocket(this.url());
    this.ws = ws;
    ws.onopen = () => {
      this.delay = 250;
      const reopened = this.everOpen;
      this.everOpen = true;
      this.onStatus("live");
      if (reopened) this.onReopen();
    };
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      this.onMessage(message);
    };
    ws.onclose = () => {
      if (this.closed) return;
      this.everOpen = this.everOpen || false;
      this.onStatus(this.everOpen ? "lost" : "connecting");
      setTimeout(() => this.connect(), this.delay);
      this.delay = Math.min(this.delay * 2, 4000);
    };
    ws.onerror = () => { /* onclose follows and reconnects */ };
  }

  close() {
    this.closed = true;
    if (this.ws) this.ws.close();
  }
}
