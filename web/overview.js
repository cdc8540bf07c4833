// The run overview: one heatmap (parameter group x step) of a per-group summary, drawn by
// the server (GET /api/runs/{run}/overview), a selector of the quantity, and the group
// filter that decides which groups' detail figures the run view draws.
import { getJSON } from "./api.js";

/** Above this many groups the run view draws only the filtered groups' details. */
export const MANY_GROUPS = 8;
/** Detail sections drawn at most for one filter. */
export const MAX_DETAIL_GROUPS = 8;

/**
 * The groups whose detail figures are drawn for `filter`: every group when there are few
 * and no filter; else the group named exactly `filter`, or those whose name contains it
 * (case-insensitive, at most MAX_DETAIL_GROUPS); with many groups and no filter, the first.
 */
export function pickGroups(names, filter) {
  const text = filter.trim();
  if (!text) return names.length > MANY_GROUPS ? names.slice(0, 1) : names.slice();
  if (names.includes(text)) return [text];
  const lower = text.toLowerCase();
  return names.filter((n) => n.toLowerCase().includes(lower)).slice(0, MAX_DETAIL_GROUPS);
}

export class Overview {
  /**
   * @param {string} run
   * @param {object} hooks  h: the element factory; draw(el, figure, filename);
   *   onCell(group, step): a heatmap cell was clicked; onFilter(): the filter changed;
   *   onError(err): a reload of its own (another quantity) failed.
   */
  constructor(run, { h, draw, onCell, onFilter, onError }) {
    this.run = run;
    this.draw = draw;
    this.onCell = onCell;
    this.quantity = "lam_max";
    this.names = [];
    this.loaded = false;
    this.quantitySelect = h("select", {
      "aria-label": "overview quantity", "data-testid": "overview-quantity",
      onchange: (e) => { this.quantity = e.target.value; this.load().catch(onError); },
    });
    this.datalist = h("datalist", { id: "overview-group-names" });
    let timer = null;
    this.filterInput = h("input", {
      type: "search", list: "overview-group-names", placeholder: "group name or part of it",
      "aria-label": "filter groups by name", "data-testid": "group-filter",
      title: "Draw the details of the group with this name, or of those whose name contains it",
      oninput: () => { clearTimeout(timer); timer = setTimeout(onFilter, 250); },
    });
    this.note = h("span", { class: "overview-note", "data-testid": "overview-note" });
    this.plotEl = h("div", { class: "plot overview-plot", "data-plot": "run:overview" });
    this.element = h("section", { class: "overview", "data-testid": "overview", hidden: true },
      h("div", { class: "overview-head" },
        h("h2", {}, "Overview"),
        h("label", {}, "Colour by", this.quantitySelect),
        h("label", {}, "Groups", this.filterInput), this.datalist, this.note),
      this.plotEl);
  }

  get filter() {
    return this.filterInput.value;
  }

  setFilter(text) {
    this.filterInput.value = text;
  }

  /**
   * The names of the groups to draw, or undefined before the overview has loaded. A filter
   * that matches nothing (yet: the user is typing) keeps the groups drawn before.
   */
  detailGroups() {
    if (!this.loaded) return undefined;
    const picked = pickGroups(this.names, this.filter);
    if (picked.length) this.lastPicked = picked;
    return picked.length ? picked : (this.lastPicked ?? pickGroups(this.names, ""));
  }

  /** The `group` query of the figure requests: undefined for all groups. */
  groupQuery() {
    const groups = this.detailGroups();
    return groups === undefined || groups.length === this.names.length ? undefined : groups;
  }

  /** Fetch and draw the overview (see fetch and render). */
  async load() {
    return this.render(await this.fetch());
  }

  /** Fetch the overview: the group names are known when this resolves. */
  async fetch() {
    this.element.dataset.state = "loading";
    const data = await getJSON(`/api/runs/${encodeURIComponent(this.run)}/overview`, { quantity: this.quantity });
    this.names = data.group_names;
    this.steps = data.steps;
    this.loaded = true;
    return data;
  }

  /** Draw fetched overview data. */
  async render(data) {
    // one group: its detail below says everything a one-row heatmap would (and a draw less
    // is ~0.2 s less on a first visit)
    this.element.hidden = this.names.length < 2;
    if (!this.quantitySelect.options.length) {
      for (const q of data.quantities) {
        this.quantitySelect.append(new Option(q.label, q.key, q.key === data.quantity, q.key === data.quantity));
      }
    }
    this.datalist.replaceChildren(...this.names.map((n) => new Option(n)));
    this.updateNote();
    this.element.dataset.groups = String(this.names.length);
    this.element.dataset.steps = String(data.steps.length);
    this.element.dataset.quantity = data.quantity;
    if (!this.element.hidden) {
      const el = await this.draw(this.plotEl, data.figure, `${this.run}-overview-${data.quantity}`);
      if (!this.plotEl.curvscopeClick) {
        this.plotEl.curvscopeClick = true;
        el.on("plotly_click", (event) => {
          // by index: the axis shows the names as literal text, not as given
          const point = event.points && event.points[0];
          if (!point || !Array.isArray(point.pointIndex)) return;
          const [row, column] = point.pointIndex;
          const name = this.names[row], step = this.steps[column];
          if (name !== undefined && step !== undefined) this.onCell(name, step);
        });
      }
    }
    this.element.dataset.state = "ready";
  }

  updateNote() {
    const drawn = pickGroups(this.names, this.filter);
    this.note.textContent = drawn.length === this.names.length
      ? `details of all ${this.names.length} groups below`
      : drawn.length
        ? `details of ${drawn.length} of ${this.names.length} groups below (click a cell, or filter by name)`
        : `no group matches “${this.filter.trim()}” (the details below stay)`;
  }
}
