// A service's request rate and mean latency from successive scrapes of /metrics
// (Prometheus text): the gateway's counters openeas_gateway_requests_total and
// openeas_gateway_request_duration_seconds_{sum,count}, summed over protocol and code.

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

function labels(text) {
  const out = {};
  for (const [, name, value] of (text || "").matchAll(LABEL)) {
    out[name] = value.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
  }
  return out;
}

// The totals of one service in a /metrics page: {requests, seconds, answered}.
export function serviceTotals(text, service) {
  const totals = { requests: 0, seconds: 0, answered: 0 };
  const wanted = {
    openeas_gateway_requests_total: "requests",
    openeas_gateway_request_duration_seconds_sum: "seconds",
    openeas_gateway_request_duration_seconds_count: "answered",
  };
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const match = SAMPLE.exec(line);
    if (!match || !(match[1] in wanted)) continue;
    if (labels(match[2]).service !== service) continue;
    const value = Number(match[3]);
    if (Number.isFinite(value)) totals[wanted[match[1]]] += value;
  }
  return totals;
}

// The chart's series: times (Unix seconds), requests per second, mean latency (ms) of
// the requests answered between two scrapes; at most `keep` seconds of history.
export class RateSeries {
  constructor(keep = 300) {
    this.keep = keep;
    this.last = null;
    this.times = [];
    this.rates = [];
    this.latencies = [];
  }

  add(when, totals) {
    const last = this.last;
    this.last = { when, totals };
    // A counter that went down is a restarted gateway: start over from this scrape.
    if (last === null || totals.requests < last.totals.requests) return;
    const seconds = when - last.when;
    if (seconds <= 0) return;
    const answered = totals.answered - last.totals.answered;
    this.times.push(when);
    this.rates.push((totals.requests - last.totals.requests) / seconds);
    this.latencies.push(answered > 0 ? (1000 * (totals.seconds - last.totals.seconds)) / answered : null);
    while (this.times.length && this.times[0] < when - this.keep) {
      this.times.shift();
      this.rates.shift();
      this.latencies.shift();
    }
  }

  data() {
    return [this.times.slice(), this.rates.slice(), this.latencies.slice()];
  }
}
