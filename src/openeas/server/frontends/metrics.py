"""Prometheus metrics on ``--metrics-port`` with Triton's metric names and labels.

The collector reads the same :class:`~openeas.server.stats.ModelStats` objects that the
statistics endpoint reports, at scrape time, so the two always agree.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psutil
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from openeas.server.dataplane import DataPlane
from openeas.server.frontends.asgi import Receive, Scope, Send, send_response

_LABELS = ["model", "version"]


class TritonCollector(Collector):
    """Builds Triton's nv_* metric families from the data plane's statistics."""

    def __init__(self, dataplane: DataPlane, interval_ms: int = 2000) -> None:
        self._dataplane = dataplane
        self._host = _HostSampler(interval_ms / 1000.0)

    def collect(self) -> Iterator[Metric]:
        def counter(name: str, doc: str, labels: list[str] = _LABELS) -> _Counter:
            return _Counter(name, doc, labels)

        success = counter(
            "nv_inference_request_success",
            "Number of successful inference requests, all batch sizes",
        )
        failure = counter(
            "nv_inference_request_failure",
            "Number of failed inference requests, all batch sizes",
            ["model", "reason", "version"],
        )
        count = counter(
            "nv_inference_count",
            "Number of inferences performed (does not include cached requests)",
        )
        exec_count = counter(
            "nv_inference_exec_count",
            "Number of model executions performed (does not include cached requests)",
        )
        request_us = counter(
            "nv_inference_request_duration_us",
            "Cumulative inference request duration in microseconds (includes cached requests)",
        )
        queue_us = counter(
            "nv_inference_queue_duration_us",
            "Cumulative inference queuing duration in microseconds (includes cached requests)",
        )
        input_us = counter(
            "nv_inference_compute_input_duration_us",
            "Cumulative compute input duration in microseconds (does not include cached requests)",
        )
        infer_us = counter(
            "nv_inference_compute_infer_duration_us",
            "Cumulative compute inference duration in microseconds (does not include cached requests)",
        )
        output_us = counter(
            "nv_inference_compute_output_duration_us",
            "Cumulative inference compute output duration in microseconds (does not include cached requests)",
        )
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model.",
            labels=_LABELS,
        )
        load = GaugeMetricFamily(
            "nv_model_load_duration_secs", "Model load time in seconds", labels=_LABELS
        )
        cache_hits = counter("nv_cache_num_hits_per_model", "Number of cache hits per model")
        cache_misses = counter("nv_cache_num_misses_per_model", "Number of cache misses per model")
        cache_hit_us = counter(
            "nv_cache_hit_duration_per_model", "Total cache hit duration per model, in microseconds"
        )
        cache_miss_us = counter(
            "nv_cache_miss_duration_per_model",
            "Total cache miss (lookup + insertion) duration per model, in microseconds",
        )

        for model in self._dataplane.models.loaded_versions():
            labels = [model.name, model.version_str]
            st = model.stats
            success.add_metric(labels, st.success.count)
            for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):
                failure.add_metric(
                    [model.name, reason, model.version_str], st.failures.get(reason, 0)
                )
            count.add_metric(labels, st.inference_count)
            exec_count.add_metric(labels, st.execution_count)
            request_us.add_metric(labels, (st.success.ns + st.fail.ns) // 1000)
            queue_us.add_metric(labels, st.queue.ns // 1000)
            input_us.add_metric(labels, st.compute_input.ns // 1000)
            infer_us.add_metric(labels, st.compute_infer.ns // 1000)
            output_us.add_metric(labels, st.compute_output.ns // 1000)
            pending.add_metric(labels, model.scheduler.pending)
            load.add_metric(labels, model.load_seconds)
            if model.cached:
                cache_hits.add_metric(labels, st.cache_hit.count)
                cache_misses.add_metric(labels, st.cache_miss.count)
                cache_hit_us.add_metric(labels, st.cache_hit.ns // 1000)
                cache_miss_us.add_metric(labels, st.cache_miss.ns // 1000)
        yield from (
            success,
            failure,
            count,
            exec_count,
            request_us,
            queue_us,
            input_us,
            infer_us,
            output_us,
            pending,
            load,
            cache_hits,
            cache_misses,
            cache_hit_us,
            cache_miss_us,
        )

        utilization, memory_total, memory_used = self._host.sample()
        cpu = GaugeMetricFamily("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]")
        cpu.add_metric([], utilization)
        total = GaugeMetricFamily("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes")
        total.add_metric([], memory_total)
        used = GaugeMetricFamily("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes")
        used.add_metric([], memory_used)
        yield from (cpu, total, used)


class _HostSampler:
    """CPU utilization and memory, sampled at most once per ``--metrics-interval-ms``.

    As in Triton, host metrics are refreshed on an interval; between refreshes a scrape sees
    the last sample.  Utilization is the average over the time since the previous sample.
    """

    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._taken = 0.0
        self._values = (0.0, 0.0, 0.0)
        psutil.cpu_percent(interval=None)  # starts the utilization window

    def sample(self) -> tuple[float, float, float]:
        now = time.monotonic()
        if not self._taken or now - self._taken >= self._interval:
            memory = psutil.virtual_memory()
            self._values = (
                psutil.cpu_percent(interval=None) / 100.0,
                float(memory.total),
                float(memory.total - memory.available),
            )
            self._taken = now
        return self._values


class _Counter(Metric):
    """A counter family whose samples keep Triton's names (no ``_total`` suffix)."""

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        super().__init__(name, documentation, "counter")
        self._labelnames = labels

    def add_metric(self, labels: list[str], value: float) -> None:
        self.add_sample(self.name, dict(zip(self._labelnames, labels, strict=True)), value)


def render(registry: CollectorRegistry) -> bytes:
    """Prometheus text format 0.0.4, with counters named as Triton names them.

    (prometheus_client's own writer appends ``_total`` to every counter family name.)
    """
    lines: list[str] = []
    for family in registry.collect():
        doc = family.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"# HELP {family.name} {doc}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for sample in family.samples:
            if sample.labels:
                labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(sample.labels.items()))
                lines.append(f"{sample.name}{{{labels}}} {_number(sample.value)}")
            else:
                lines.append(f"{sample.name} {_number(sample.value)}")
    return ("\n".join(lines) + "\n").encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class MetricsApp:
    """ASGI app answering ``GET /metrics`` in the Prometheus text format."""

    def __init__(self, dataplane: DataPlane, interval_ms: int = 2000) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(TritonCollector(dataplane, interval_ms))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/metrics":
            await send_response(send, 404, b"Not Found")
            return
        if scope["method"] != "GET":
            await send_response(send, 405, b"Method Not Allowed")
            return
        body = render(self._registry)
        await send_response(send, 200, body, [(b"content-type", CONTENT_TYPE_LATEST.encode())])
