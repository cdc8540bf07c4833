// Entry point: pick the page from the URL, load it, and keep it live over the websocket.
import { LiveSocket } from "./api.js";
import { CompareView, RunListView, RunView, h } from "./views.js";

const root = document.getElementById("app");
const conn = document.getElementById("conn");
const LABELS = { connecting: "connecting…", live: "live", lost: "connection lost — reconnecting…" };

function setStatus(status) {
  conn.dataset.status = status;
  conn.textContent = LABELS[status];
  document.body.dataset.connection = status;
}

function route() {
  const path = location.pathname;
  const match = path.match(/^\/runs\/([^/]+)\/?$/);
  if (match) {
    const run = decodeURIComponent(match[1]);
    document.title = `${run} · curvscope`;
    return { view: new RunView(root, run), socket: `/ws/runs/${encodeURIComponent(run)}` };
  }
  if (path.startsWith("/compare")) {
    const runs = (new URLSearchParams(location.search).get("runs") || "").split(",").filter(Boolean);
    document.title = "compare · curvscope";
    return { view: new CompareView(root, runs), socket: "/ws/runs" };
  }
  return { view: new RunListView(root), socket: "/ws/runs" };
}

async function start() {
  const { view, socket } = route();
  window.curvscope = { view };
  const live = new LiveSocket(socket, {
    onMessage: (message) => view.onMessage(message),
    onStatus: setStatus,
    onReopen: () => (view.onReopen ? view.onReopen() : view.load()),
  });
  window.curvscope.socket = live;
  try {
    await view.load();
  } catch (err) {
    root.replaceChildren(h("div", { class: "state", role: "alert" },
      h("strong", {}, "Could not load this page."), " ", err.message));
    document.body.dataset.state = "error";
  }
}

// Plotly.js (4.8 MB) loads asynchronously: the page asks for its data meanwhile and draws
// once both are there (see plotlyReady in views.js).
start();
