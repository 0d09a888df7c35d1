// A service's request rate and mean latency over the last minutes, from polling /metrics
// (open on the API port, no signature), drawn with uPlot (vendor/, MIT).

import { el } from "./dom.js";
import { RateSeries, serviceTotals } from "./metrics.js";
import uPlot from "./vendor/uPlot.esm.js";

const HISTORY_SECONDS = 300;
const HEIGHT = 240;

function options(width) {
  return {
    width,
    height: HEIGHT,
    scales: { x: { time: true }, rps: { auto: true }, ms: { auto: true } },
    series: [
      {},
      { label: "requests/s", scale: "rps", stroke: "#2f6fd6", width: 2, value: (_, v) => (v == null ? "-" : v.toFixed(2)) },
      { label: "mean latency (ms)", scale: "ms", stroke: "#d6762f", width: 2, value: (_, v) => (v == null ? "-" : v.toFixed(1)) },
    ],
    axes: [{}, { scale: "rps", label: "req/s" }, { scale: "ms", side: 1, label: "ms", grid: { show: false } }],
  };
}

export class RateChart {
  constructor(service) {
    this.service = service;
    this.series = new RateSeries(HISTORY_SECONDS);
    this.root = el("div", { className: "chart", id: "rate-chart" });
    this.plot = null;
    this.resize = () => this.plot?.setSize({ width: this.width(), height: HEIGHT });
    window.addEventListener("resize", this.resize);
  }

  close() {
    window.removeEventListener("resize", this.resize);
    this.plot?.destroy();
    this.plot = null;
  }

  width() {
    return Math.max(this.root.clientWidth - 16, 300);
  }

  async sample() {
    const response = await fetch("/metrics", { credentials: "omit", cache: "no-store" });
    if (!response.ok) throw new Error(`/metrics answered ${response.status}`);
    this.series.add(Date.now() / 1000, serviceTotals(await response.text(), this.service));
    this.draw();
  }

  draw() {
    const data = this.series.data();
    const rates = data[1];
    // What the chart shows, for scripts and tests: the points and the latest/largest rate.
    this.root.dataset.points = String(rates.length);
    this.root.dataset.lastRate = String(rates.length ? rates[rates.length - 1] : 0);
    this.root.dataset.maxRate = String(rates.reduce((a, b) => Math.max(a, b), 0));
    if (this.plot === null) {
      this.plot = new uPlot(options(this.width()), data, this.root);
    } else {
      this.plot.setData(data);
    }
  }
}
