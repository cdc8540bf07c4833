// The three pages: run list, run view, run comparison. Figures come ready-made from the
// server (Python, plotly.graph_objects); this file only places them and keeps them live.
import * as api from "./api.js";
import { Overview } from "./overview.js";

const FIGURE_ORDER = ["density", "eigvals", "snr", "gamma", "overlap", "hessian", "hessian_min", "noise", "trust", "trust_share", "newton"];

/** Create an element: h("div", {class: "x"}, child, "text"). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Show a failed background refresh above the page (it clears on the next success). */
export function reportError(err) {
  let banner = document.getElementById("load-error");
  if (!banner) {
    banner = h("div", { id: "load-error", class: "banner error", role: "alert" });
    document.querySelector("main").prepend(banner);
  }
  banner.textContent = `Could not refresh: ${err.message}. Retrying when the connection is back.`;
}

function clearError() {
  document.getElementById("load-error")?.remove();
}

function stateBox(title, text) {
  return h("div", { class: "state", role: "status" }, h("strong", {}, title), " ", text);
}

function ago(unixSeconds) {
  const s = Math.max(0, Date.now() / 1000 - unixSeconds);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(unixSeconds * 1000).toLocaleString();
}

/** Resolves once Plotly.js (loaded with `async`) is there. */
export function plotlyReady() {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  return new Promise((resolve, reject) => {
    const script = document.getElementById("plotly-js");
    script.addEventListener("load", () => resolve(window.Plotly), { once: true });
    script.addEventListener("error", () => reject(new Error("Plotly.js did not load")), { once: true });
  });
}

function stepLine(step) {
  return {
    type: "line", x0: step, x1: step, yref: "paper", y0: 0, y1: 1,
    line: { color: "#888", width: 1, dash: "dot" },
  };
}

/**
 * Plotly.react with our config: responsive, PNG (Plotly's camera) and SVG download buttons.
 * The config object is made once per plot: a new one would make Plotly.react redraw from
 * scratch and forget the user's zoom (uirevision).
 */
export async function draw(el, figure, filename) {
  await plotlyReady();
  if (!el.curvscopeConfig) {
    el.curvscopeConfig = {
      responsive: true,
      displaylogo: false,
      toImageButtonOptions: { format: "png", filename, scale: 2 },
      modeBarButtonsToAdd: [
        {
          name: "downloadSvg",
          title: "Download plot as SVG",
          icon: window.Plotly.Icons.disk,
          click: (gd) => window.Plotly.downloadImage(gd, { format: "svg", filename }),
        },
      ],
    };
  }
  return window.Plotly.react(el, figure.data, figure.layout, el.curvscopeConfig);
}

function markStep(el, step) {
  if (!el || !el.layout || step === null || step === undefined) return;
  window.Plotly.relayout(el, { shapes: [stepLine(step)] });
}

function eventsBanner(events) {
  if (!events || !events.length) return null;
  const errors = events.filter((e) => e.level === "error");
  const kind = errors.length ? "error" : "warning";
  const shown = events.slice(-5);
  return h(
    "div", { class: `banner ${kind}`, role: "alert", "data-testid": "events" },
    h("strong", {}, errors.length
      ? `This run reported ${errors.length} error${errors.length > 1 ? "s" : ""}`
      : "This run reported warnings"),
    h("ul", {}, shown.map((e) => h("li", {},
      `${e.level}${e.step !== null && e.step !== undefined ? ` at step ${e.step}` : ""}: ${e.message}`))),
  );
}

/** Coalesces refreshes: at most one in flight, and one more queued behind it. */
class Refresher {
  constructor(task) {
    this.task = task;
    this.running = null;
    this.again = false;
  }
  request() {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      try {
        do {
          this.again = false;
          await this.task();
        } while (this.again);
      } finally {
        this.running = null;
      }
    })();
    return this.running;
  }
}

// -- run list -------------------------------------------------------------------------------
export class RunListView {
  constructor(root) {
    this.root = root;
    this.runs = new Map();
    this.selected = new Set();
  }

  async load() {
    const runs = await api.runs();
    this.runs = new Map(runs.map((r) => [r.run, r]));
    this.render();
  }

  onReopen() {
    this.load().catch(reportError);
  }

  onMessage(message) {
    if (message.type === "runs") this.runs = new Map(message.runs.map((r) => [r.run, r]));
    else if (message.type === "run_update") this.runs.set(message.summary.run, message.summary);
    else if (message.type === "run_deleted") this.runs.delete(message.run);
    else return;
    this.render();
  }

  render() {
    const runs = [...this.runs.values()].sort((a, b) => b.last_update - a.last_update);
    this.root.replaceChildren(h("h1", {}, "Runs"));
    if (!runs.length) {
      this.root.append(stateBox("No runs yet.",
        "Start a training script with a curvscope probe pointed at this server; " +
        "its runs appear here as soon as the first snapshot arrives."));
      document.body.dataset.state = "ready";
      return;
    }
    const compare = h("button", {
      type: "button", "data-testid": "compare",
      onclick: () => {
        const names = [...this.selected].filter((n) => this.runs.has(n));
        if (names.length) location.href = `/compare?runs=${names.map(encodeURIComponent).join(",")}`;
      },
    }, "Compare selected");
    const rows = runs.map((r) => {
      const status = [];
      if (r.live) status.push(h("span", { class: "badge live" }, "live"));
      else status.push(h("span", { class: "badge" }, r.snapshots ? "idle" : "no snapshots"));
      if (r.errors) status.push(" ", h("span", { class: "badge error" }, `${r.errors} error${r.errors > 1 ? "s" : ""}`));
      const box = h("input", {
        type: "checkbox", "aria-label": `select ${r.run}`, checked: this.selected.has(r.run),
        onchange: (e) => (e.target.checked ? this.selected.add(r.run) : this.selected.delete(r.run)),
      });
      return h("tr", { "data-run": r.run },
        h("td", {}, box),
        h("td", {}, h("a", { href: `/runs/${encodeURIComponent(r.run)}` }, r.run)),
        h("td", { class: "num" }, r.snapshots),
        h("td", { class: "num" }, r.last_step ?? "–"),
        h("td", {}, ago(r.last_update)),
        h("td", {}, status));
    });
    this.root.append(
      h("table", { class: "runs" },
        h("thead", {}, h("tr", {}, ["", "Run", "Snapshots", "Last step", "Last update", "Status"]
          .map((t) => h("th", {}, t)))),
        h("tbody", {}, rows)),
      h("p", {}, compare, " two or more runs to overlay them."),
    );
    document.body.dataset.state = "ready";
  }
}

// -- run view -------------------------------------------------------------------------------
export class RunView {
  constructor(root, run) {
    this.root = root;
    this.run = run;
    this.steps = [];
    this.step = null;
    this.follow = true; // show the latest step as snapshots arrive
    this.mode = "density";
    this.overlay = "none";
    this.smooth = "none"; // eigenvalue trajectories: none | median | ema over smoothWindow
    this.smoothWindow = 5;
    this.playing = false;
    this.plots = new Map();
    this.full = new Refresher(() => this.loadFull());
    this.overview = new Overview(run, {
      h, draw,
      onCell: (group, step) => this.openGroupAt(group, step).catch(reportError),
      onFilter: () => { this.overview.updateNote(); this.full.request().catch(reportError); },
      onError: reportError,
    });
    this.stepOnly = new Refresher(() => this.loadStep());
    this.renders = 0;
  }

  async load() {
    await this.full.request();
  }

  onMessage(message) {
    if (message.type === "snapshot") this.overviewStale = true;
    if (message.type === "snapshot" || message.type === "event") this.full.request().catch(reportError);
  }

  onReopen() {
    this.overviewStale = true;
    this.full.request().catch(reportError);
  }

  query(extra = {}) {
    return { mode: this.mode, overlay: this.overlay, group: this.overview.groupQuery(), ...extra };
  }

  /**
   * The overview: first (its group names pick the groups drawn), then alongside; only when
   * the run changed since (a live update, a reconnection), not for a click or a filter.
   */
  loadOverview() {
    if (this.overview.loaded && !this.overviewStale) return { first: Promise.resolve(), all: Promise.resolve() };
    this.overviewStale = false;
    const fetched = this.overview.fetch();
    const drawn = fetched.then((data) => this.overview.render(data));
    drawn.catch(() => {}); // awaited (and reported) by loadFull, or failed with `fetched`
    return { first: this.overview.loaded ? Promise.resolve() : fetched, all: drawn };
  }

  /** A click on an overview cell: that group's detail at that step, scrolled into view. */
  async openGroupAt(group, step) {
    const index = this.steps.indexOf(step);
    if (index < 0) return;
    if (!this.plots.has(`${group}:density`)) {
      this.overview.setFilter(group);
      this.overview.updateNote();
      this.step = step;
      this.follow = index === this.steps.length - 1;
      await this.full.request();
    } else {
      await this.selectIndex(index);
    }
    this.body.querySelector(`section[data-group="${CSS.escape(group)}"]`)?.scrollIntoView({ block: "start" });
  }

  /** Put the groups' sections in the order of `names` (the model's), moving only those out of it. */
  orderGroups(names) {
    const sections = new Map([...this.body.querySelectorAll("section[data-group]")].map((s) => [s.dataset.group, s]));
    let previous = this.lossEl;
    for (const name of names) {
      const section = sections.get(name);
      if (!section) continue;
      if (previous.nextElementSibling !== section) previous.after(section);
      previous = section;
    }
  }

  /** Remove the sections (and plots) of groups no longer drawn. */
  pruneGroups(drawn) {
    const keep = new Set(drawn);
    for (const section of this.body.querySelectorAll("section[data-group]")) {
      if (keep.has(section.dataset.group)) continue;
      for (const el of section.querySelectorAll(".plot")) {
        if (window.Plotly) window.Plotly.purge(el);
        this.plots.delete(el.dataset.plot);
      }
      section.remove();
    }
  }

  async loadFull() {
    const overview = this.loadOverview();
    let data;
    try {
      await overview.first;
      data = await api.runFigures(this.run, this.query({
        step: this.follow ? undefined : this.step, smooth: this.smooth, window: this.smoothWindow,
      }));
    } catch (err) {
      if (err.status === 404 && !this.follow) {
        this.follow = true; // the step vanished (run deleted and re-ingested): go to the latest
        return this.loadFull();
      }
      if (err.status === 404) return this.renderMissing(err.message);
      throw err;
    }
    this.data = data;
    this.steps = data.steps;
    this.step = data.step;
    this.renderShell(data);
    this.pruneGroups(data.groups.map((g) => g.name));
    if (!data.groups.length) return overview.all;
    // the dotted line at the shown step is part of the first drawing (no second render)
    data.loss.layout.shapes = [stepLine(this.step)];
    for (const group of data.groups) group.figures.eigvals.layout.shapes = [stepLine(this.step)];
    await Promise.all([
      this.drawFigures(data.groups),
      this.plot("loss", "run").then((el) => draw(el, data.loss, `${this.run}-loss`)),
      overview.all,
    ]);
    this.orderGroups(data.groups.map((g) => g.name));
    this.finish();
  }

  async loadStep() {
    const step = this.step;
    const data = await api.stepFigures(this.run, this.query({ step }));
    this.drawFigures(data.groups);
    this.markStep();
    this.finish();
  }

  finish() {
    clearError();
    this.renders += 1;
    this.root.dataset.step = this.step;
    this.root.dataset.renders = this.renders;
    document.body.dataset.state = "ready";
  }

  renderMissing(message) {
    this.root.replaceChildren(h("h1", {}, this.run), stateBox("No such run.", message));
    document.body.dataset.state = "ready";
  }

  renderShell(data) {
    if (!this.shell) {
      this.title = h("h1", {}, `Run ${this.run}`);
      this.metaEl = h("p", { class: "meta" });
      this.eventsEl = h("div");
      this.toolbar = this.buildToolbar();
      this.body = h("div");
      this.lossEl = h("div", { class: "plot wide", "data-plot": "run:loss" });
      this.shell = h("div", {}, this.title, this.metaEl, this.eventsEl, this.toolbar, this.overview.element, this.body);
      this.root.replaceChildren(this.shell);
    }
    const summary = data.run;
    const steps = !summary.snapshots || summary.first_step == null || summary.last_step == null
      ? "no snapshots yet"
      : `${summary.snapshots} snapshot${summary.snapshots === 1 ? "" : "s"} · ` +
        (summary.first_step === summary.last_step
          ? `step ${summary.first_step}`
          : `steps ${summary.first_step}–${summary.last_step}`);
    this.metaEl.textContent =
      `${steps} · last update ${ago(summary.last_update)}${data.downsampled ? ` · over-step plots down-sampled to ${data.series_points} snapshots` : ""}` +
      (data.group_names && data.group_names.length > data.groups.length
        ? ` · figures of ${data.groups.length} of ${data.group_names.length} parameter groups (pick others in the overview)`
        : "");
    this.eventsEl.replaceChildren(...[eventsBanner(data.events)].filter(Boolean));
    if (!data.groups.length) {
      this.toolbar.hidden = true;
      this.plots.clear();
      this.body.replaceChildren(stateBox("No snapshots yet.",
        `Run ${this.run} exists but has sent no snapshot; this page updates when one arrives.`));
      document.body.dataset.state = "ready";
      this.root.dataset.renders = ++this.renders;
      return;
    }
    this.toolbar.hidden = false;
    if (!this.body.contains(this.lossEl)) this.body.replaceChildren(this.lossEl);
    this.slider.max = String(this.steps.length - 1);
    this.slider.value = String(Math.max(0, this.steps.indexOf(this.step)));
    this.stepLabel.textContent = `step ${this.step}`;
  }

  buildToolbar() {
    this.slider = h("input", {
      type: "range", min: 0, max: 0, value: 0, step: 1, "aria-label": "step", "data-testid": "step-slider",
      oninput: () => this.selectIndex(Number(this.slider.value)),
    });
    this.stepLabel = h("span", { class: "step", "data-testid": "step-label" });
    this.playButton = h("button", { type: "button", "data-testid": "play", onclick: () => this.togglePlay() }, "▶ Play");
    const mode = h("select", { "aria-label": "density or count", "data-testid": "mode",
      onchange: (e) => { this.mode = e.target.value; this.stepOnly.request().catch(reportError); } },
    h("option", { value: "density" }, "density"), h("option", { value: "count" }, "count"));
    const overlay = h("select", { "aria-label": "overlay", "data-testid": "overlay",
      onchange: (e) => { this.overlay = e.target.value; this.stepOnly.request().catch(reportError); } },
    ...[["none", "no overlay"], ["first", "overlay first"], ["latest", "overlay latest"], ["both", "overlay first + latest"]]
      .map(([v, t]) => h("option", { value: v }, t)));
    // smoothing of the eigenvalue trajectories (figures over steps: a full reload)
    const smooth = h("select", { "aria-label": "smooth trajectories", "data-testid": "smooth",
      onchange: (e) => { this.smooth = e.target.value; this.full.request().catch(reportError); } },
    ...[["none", "raw"], ["median", "moving median"], ["ema", "EMA"]].map(([v, t]) => h("option", { value: v }, t)));
    const smoothWindow = h("input", { type: "number", min: 2, max: 101, value: this.smoothWindow,
      "aria-label": "smoothing window (snapshots)", "data-testid": "smooth-window", class: "narrow",
      onchange: (e) => {
        const n = Math.round(Number(e.target.value));
        if (n >= 2 && n <= 101) { this.smoothWindow = n; this.full.request().catch(reportError); }
      } });
    return h("div", { class: "toolbar" },
      this.playButton,
      h("label", {}, "Step", this.slider), this.stepLabel,
      h("label", {}, "Spectrum", mode), overlay,
      h("label", {}, "Trajectories", smooth, smoothWindow),
      h("span", { class: "links" },
        h("a", { href: api.exportUrl(this.run, "csv"), "data-testid": "export-csv" }, "Export CSV"),
        h("a", { href: api.exportUrl(this.run, "json"), "data-testid": "export-json" }, "Export JSON")));
  }

  selectIndex(index) {
    const step = this.steps[index];
    if (step === undefined) return Promise.resolve();
    this.step = step;
    this.follow = index === this.steps.length - 1;
    this.stepLabel.textContent = `step ${step}${this.follow ? " (latest)" : ""}`;
    this.slider.value = String(index);
    return this.stepOnly.request().catch(reportError);
  }

  async togglePlay() {
    if (this.playing) {
      this.playing = false;
      return;
    }
    this.playing = true;
    this.playButton.textContent = "❚❚ Pause";
    let index = Number(this.slider.value);
    if (index >= this.steps.length - 1) index = -1;
    while (this.playing && index < this.steps.length - 1) {
      index += 1;
      const started = performance.now();
      await this.selectIndex(index);
      const wait = Math.max(0, 400 - (performance.now() - started));
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
    this.playing = false;
    this.playButton.textContent = "▶ Play";
  }

  async plot(name, group) {
    const key = `${group}:${name}`;
    if (key === "run:loss") return this.lossEl;
    let el = this.plots.get(key);
    if (!el) {
      el = h("div", { class: "plot", "data-plot": key });
      this.plots.set(key, el);
      let section = this.body.querySelector(`section[data-group="${CSS.escape(group)}"]`);
      if (!section) {
        section = h("section", { "data-group": group },
          h("h2", {}, `Parameter group: ${group}`), h("p", { class: "meta" }), h("div", { class: "grid" }));
        this.body.append(section);
      }
      const grid = section.querySelector(".grid");
      const order = FIGURE_ORDER.indexOf(name);
      const after = [...grid.children].find((c) => FIGURE_ORDER.indexOf(c.dataset.plot.split(":").pop()) > order);
      grid.insertBefore(el, after ?? null);
    }
    return el;
  }

  drawFigures(groups) {
    const jobs = [];
    for (const group of groups) {
      for (const [name, figure] of Object.entries(group.figures)) {
        jobs.push(this.plot(name, group.name).then((el) => draw(el, figure, `${this.run}-${group.name}-${name}`)));
      }
      // the facts of the shown step (the slider's requests carry them too: K, ‖g‖² and the
      // backend may change from step to step)
      const section = this.body.querySelector(`section[data-group="${CSS.escape(group.name)}"]`);
      if (section) {
        section.querySelector(".meta").textContent =
          `${group.num_params ?? "?"} parameters · K = ${group.k} non-zero eigenvalues · ` +
          `statistics for the top K' = ${group.k_stats} · ‖g‖² = ${Number(group.grad_norm_sq).toPrecision(3)}` +
          (group.backend ? ` · backend ${group.backend}` : "");
      }
    }
    return Promise.all(jobs);
  }

  markStep() {
    for (const [key, el] of this.plots) if (key.endsWith(":eigvals")) markStep(el, this.step);
    markStep(this.lossEl, this.step);
  }
}

// -- comparison -----------------------------------------------------------------------------
export class CompareView {
  constructor(root, runs) {
    this.root = root;
    this.runs = runs;
    this.group = null;
    this.mode = "density";
    this.plots = {};
    this.refresh = new Refresher(() => this.loadAll());
  }

  load() {
    return this.refresh.request();
  }

  onMessage(message) {
    const run = message.type === "run_update" ? message.summary.run : message.run;
    if (this.runs.includes(run)) this.refresh.request().catch(reportError);
  }

  onReopen() {
    this.refresh.request().catch(reportError);
  }

  async loadAll() {
    if (!this.runs.length) {
      this.root.replaceChildren(h("h1", {}, "Compare runs"),
        stateBox("No runs chosen.", "Pick two or more runs on the run list and press “Compare selected”."));
      document.body.dataset.state = "ready";
      return;
    }
    let data;
    try {
      data = await api.compareFigures({ runs: this.runs.join(","), group: this.group ?? undefined, mode: this.mode });
    } catch (err) {
      this.root.replaceChildren(h("h1", {}, "Compare runs"), stateBox("Cannot compare.", err.message));
      document.body.dataset.state = "ready";
      return;
    }
    this.group = data.group;
    if (!this.shell) {
      const groupSelect = h("select", { "aria-label": "group", onchange: (e) => { this.group = e.target.value; this.refresh.request().catch(reportError); } });
      const mode = h("select", { "aria-label": "density or count", onchange: (e) => { this.mode = e.target.value; this.refresh.request().catch(reportError); } },
        h("option", { value: "density" }, "density"), h("option", { value: "count" }, "count"));
      this.groupSelect = groupSelect;
      for (const name of ["density", "eigvals", "loss"]) this.plots[name] = h("div", { class: "plot", "data-plot": `compare:${name}` });
      this.shell = h("div", {},
        h("h1", {}, "Compare runs"),
        h("p", { class: "meta", "data-testid": "compare-runs" },
          this.runs.flatMap((r, i) => [i ? " · " : null, h("a", { href: `/runs/${encodeURIComponent(r)}` }, r)])),
        h("div", { class: "toolbar" }, h("label", {}, "Group", groupSelect), h("label", {}, "Spectrum", mode)),
        h("div", { class: "grid" }, Object.values(this.plots)));
      this.root.replaceChildren(this.shell);
    }
    this.groupSelect.replaceChildren(...data.groups.map((g) => h("option", { value: g, selected: g === data.group }, g)));
    await Promise.all(Object.entries(data.figures).map(([name, fig]) => draw(this.plots[name], fig, `compare-${name}`)));
    document.body.dataset.state = "ready";
  }
}
