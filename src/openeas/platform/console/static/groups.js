// The service groups page: each group's TrafficMode (switchable) and members (TrafficState,
// Weight, share of the group's traffic), each member releasable (PUT .../release).
// Sections and member rows are kept across refreshes, so a number being typed survives.

import { el, hrefOf, keep } from "./dom.js";
import { act } from "./feedback.js";

const MODES = ["auto", "customized"];
const STATES = ["grouping", "standalone"];

function select(values, attrs) {
  return el("select", attrs, values.map((v) => el("option", { value: v }, v)));
}

class MemberRow {
  constructor(view, service) {
    this.cells = Array.from({ length: 5 }, () => el("td"));
    this.weight = el("input", { type: "number", min: -1, max: 1000, step: 1, className: "release-weight" });
    this.state = select(STATES, { className: "release-state" });
    const release = el("button", { type: "button", className: "release", onclick: () => view.release(service, this) }, "Release");
    this.root = el(
      "tr", { dataset: { member: service } },
      el("td", {}, el("a", { href: hrefOf(service) }, service)),
      this.cells,
      el("td", { className: "member-release" }, "Weight ", this.weight, " ", this.state, " ", release),
    );
    this.fresh = true;
  }

  update(m) {
    const values = [m.TrafficState, m.Weight, m.ReadyInstances, m.EffectiveWeight, `${m.TrafficShare}%`];
    this.cells.forEach((cell, i) => { cell.textContent = String(values[i]); });
    if (this.fresh) { // prefill once; later refreshes leave the user's input alone
      this.weight.value = m.Weight;
      this.state.value = m.TrafficState;
      this.fresh = false;
    }
  }
}

class GroupSection {
  constructor(view, name) {
    this.rows = new Map();
    this.info = el("p");
    this.mode = select(MODES, { className: "traffic-mode" });
    const apply = el("button", { type: "button", className: "apply-mode", onclick: () => view.setMode(name, this.mode.value) }, "Switch");
    this.body = el("tbody");
    this.root = el(
      "div", { className: "group", dataset: { group: name } },
      el("h3", {}, name),
      this.info,
      el("p", {}, "TrafficMode ", el("span", { className: "mode" }), " ", this.mode, " ", apply),
      el(
        "table", {},
        el("thead", {}, el("tr", {}, ["Member", "TrafficState", "Weight", "Ready", "Effective weight", "Share", "Release"].map((h) => el("th", {}, h)))),
        this.body,
      ),
    );
    this.modeShown = this.root.querySelector(".mode");
    this.fresh = true;
    this.view = view;
  }

  update(g) {
    this.info.textContent = `Endpoint ${g.InternetEndpoint} (group token in eascmd group desc)`;
    this.modeShown.textContent = g.TrafficMode;
    if (this.fresh) { this.mode.value = g.TrafficMode; this.fresh = false; }
    const rows = g.Members.map((m) => {
      let row = this.rows.get(m.ServiceName);
      if (!row) {
        row = new MemberRow(this.view, m.ServiceName);
        this.rows.set(m.ServiceName, row);
      }
      row.update(m);
      return row.root;
    });
    for (const name of this.rows.keys()) {
      if (!g.Members.some((m) => m.ServiceName === name)) this.rows.delete(name);
    }
    keep(this.body, rows); // in the API's order
  }
}

export class GroupsView {
  constructor(api) {
    this.api = api;
    this.sections = new Map();
    this.body = el("div");
    this.empty = el("p", {}, "No service groups: a service joins one with metadata.group.");
    this.root = el("section", { id: "groups" }, el("h2", {}, "Service groups"), this.body);
  }

  async setMode(group, mode) {
    await act(this.api("PUT", `/groups/${encodeURIComponent(group)}`, { TrafficMode: mode }), (g) => `${g.Name}: TrafficMode ${g.TrafficMode}`);
  }

  async release(service, row) {
    const doc = { Weight: Number(row.weight.value), TrafficState: row.state.value };
    await act(this.api("PUT", `/services/${encodeURIComponent(service)}/release`, doc), (a) => a.Message);
  }

  async refresh() {
    const groups = await this.api("GET", "/groups");
    const sections = groups.map((g) => {
      let section = this.sections.get(g.Name);
      if (!section) {
        section = new GroupSection(this, g.Name);
        this.sections.set(g.Name, section);
      }
      section.update(g);
      return section.root;
    });
    for (const name of this.sections.keys()) {
      if (!groups.some((g) => g.Name === name)) this.sections.delete(name);
    }
    keep(this.body, sections.length ? sections : [this.empty]);
  }
}
