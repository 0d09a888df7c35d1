// The services list and a service's page.

import { RateChart } from "./chart.js";
import { el, hrefOf, replace, summary, table } from "./dom.js";
import { act } from "./feedback.js";

const path = (name, rest = "") => `/services/${encodeURIComponent(name)}${rest}`;

function ready(view) {
  return `${view.instances.running}/${view.instances.total}`;
}

export class ServicesView {
  constructor(api) {
    this.api = api;
    this.body = el("div");
    this.root = el("section", { id: "services" }, el("h2", {}, "Services"), this.body);
  }

  async refresh() {
    const services = await this.api("GET", "/services");
    const rows = services.map((s) => [
      el("a", { href: hrefOf(s.name) }, s.name),
      el("span", { className: `status-${s.status}` }, s.status),
      ready(s),
      s.group ?? "-",
      s.autoscaler ? "on" : "off",
      s.internet_endpoint,
    ]);
    replace(
      this.body,
      services.length
        ? table(["Name", "Status", "Ready/Total", "Group", "Autoscaler", "Endpoint"], rows, { id: "services-table" })
        : el("p", {}, "No services yet: create one with eascmd create service.json."),
    );
  }
}

function decision(scaling) {
  const d = scaling?.lastDecision;
  if (!d) return "none";
  return `${d.time}: ${d.current} -> ${d.desired} (${d.reason})`;
}

function traffic(view) {
  if (!view.group) return "-";
  return `${view.traffic_state}, Weight ${view.weight}`;
}

export class ServiceView {
  constructor(api, name) {
    this.api = api;
    this.name = name;
    this.info = el("div", { id: "service-summary" });
    this.instances = el("div", { id: "instances" });
    this.events = el("div", { id: "events" });
    this.chart = new RateChart(name);
    this.root = el(
      "section", { id: "service", dataset: { service: name } },
      el("h2", {}, "Service ", el("span", { id: "service-name" }, name)),
      this.info,
      this.actions(),
      el("h3", {}, "Requests through the gateway (rate and mean latency)"),
      this.chart.root,
      el("h3", {}, "Instances"), this.instances,
      el("h3", {}, "Recent events"), this.events,
    );
  }

  close() {
    this.chart.close();
  }

  actions() {
    // Filled from the service until the user types a number of their own.
    const count = el("input", {
      id: "instance-count", type: "number", min: 0, step: 1, required: true,
      oninput: () => { count.dataset.touched = "1"; },
    });
    this.count = count;
    const confirmName = el("input", { id: "delete-confirm-name", autocomplete: "off" });
    const confirm = el(
      "div", { id: "delete-confirm", className: "confirm", hidden: true },
      `Type ${this.name} to delete the service and its instances: `, confirmName,
      el("button", { id: "delete-confirmed", type: "button", onclick: () => this.remove(confirmName) }, "Delete"),
      el("button", { type: "button", onclick: () => { confirm.hidden = true; } }, "Cancel"),
    );
    const scale = (event) => {
      event.preventDefault();
      this.scale(Number(count.value));
    };
    return el(
      "div", {},
      el(
        "form", { className: "actions", id: "scale-form", onsubmit: scale },
        el("label", {}, "Instances ", count),
        el("button", { id: "scale", type: "submit" }, "Set"),
        el("button", { id: "stop", type: "button", onclick: () => this.post("stop") }, "Stop"),
        el("button", { id: "start", type: "button", onclick: () => this.post("start") }, "Start"),
        el("button", { id: "delete", type: "button", onclick: () => { confirm.hidden = false; } }, "Delete…"),
      ),
      confirm,
    );
  }

  async scale(count) {
    // eascmd modify -Dmetadata.instance=N: a merge of the spec (a new version).
    const doc = { spec: { metadata: { instance: count } }, mode: "merge" };
    if (await act(this.api("PUT", path(this.name), doc), (v) => `${v.name}: ${v.replicas} instances requested`)) {
      delete this.count.dataset.touched;
    }
  }

  async post(action) {
    await act(this.api("POST", path(this.name, `/${action}`)), (v) => `${this.name}: ${action} requested (${v.status ?? "ok"})`);
  }

  async remove(confirmName) {
    if (confirmName.value !== this.name) {
      act(Promise.reject(new Error(`type the service's name (${this.name}) to delete it`)), () => "");
      return;
    }
    if (await act(this.api("DELETE", path(this.name)), (v) => `${v.name}: ${v.status}`)) {
      location.hash = "#/services";
    }
  }

  async refresh() {
    const [view, instances, events] = await Promise.all([
      this.api("GET", path(this.name)),
      this.api("GET", path(this.name, "/instances")),
      this.api("GET", path(this.name, "/events")),
    ]);
    if (this.count.dataset.touched !== "1") this.count.value = view.replicas;
    replace(this.info, summary([
      ["Status", el("span", { id: "service-status", className: `status-${view.status}` }, view.status)],
      ["Reason", view.reason ?? "-"],
      ["Message", el("span", { id: "service-message" }, view.message ?? "")],
      ["Instances (ready/total)", ready(view)],
      ["Endpoint", view.internet_endpoint],
      ["Group", view.group ?? "-"],
      ["Traffic", traffic(view)],
      ["Autoscaler", el("span", { id: "service-autoscaler" }, view.autoscaler ? "on" : "off")],
      ["Last scaling decision", el("span", { id: "service-decision" }, decision(view.scaling))],
      ["Version", `${view.current_version} (latest ${view.latest_version})`],
    ]));
    replace(this.instances, table(
      ["Instance", "Node", "Status", "Ready", "Restarts", "Started", "Reason"],
      instances.map((i) => [i.name, i.node ?? "-", i.status, i.ready ? "yes" : "no", i.restarts, i.started ?? "-", i.reason ?? ""]),
      { id: "instances-table" },
    ));
    replace(this.events, table(
      ["Time", "Type", "Reason", "Message"],
      events.slice(-20).reverse().map((e) => [e.time, e.type, e.reason, e.message]),
      { id: "events-table" },
    ));
    await this.chart.sample();
  }
}
