"""The gateway's metrics as Prometheus sees them."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from openeas.gateway.metrics import GatewayMetrics


def _samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counts_histogram_and_live_gauges() -> None:
    state = SimpleNamespace(name="svc", in_flight=3, waiters=[1, 2])
    metrics = GatewayMetrics(lambda: [state])
    for seconds in (0.0004, 0.001, 0.2):
        metrics.observe("svc", "http", "200", seconds)
    metrics.observe("svc", "grpc", "UNAUTHENTICATED", 40.0)
    metrics.sent("svc", "i0")
    metrics.sent("svc", "i0")
    samples = _samples(metrics)
    http = (("protocol", "http"), ("service", "svc"))
    assert samples[("openeas_gateway_requests_total", (("code", "200"), *http))] == 3
    key = ("code", "UNAUTHENTICATED"), ("protocol", "grpc"), ("service", "svc")
    assert samples[("openeas_gateway_requests_total", key)] == 1
    bucket = "openeas_gateway_request_duration_seconds_bucket"
    assert samples[(bucket, tuple(sorted((("le", "0.0005"), *http))))] == 1
    assert samples[(bucket, tuple(sorted((("le", "0.001"), *http))))] == 2  # le is inclusive
    assert samples[(bucket, tuple(sorted((("le", "+Inf"), *http))))] == 3
    assert samples[("openeas_gateway_request_duration_seconds_count", http)] == 3
    grpc = (("protocol", "grpc"), ("service", "svc"))
    assert samples[(bucket, tuple(sorted((("le", "30.0"), *grpc))))] == 0
    assert samples[(bucket, tuple(sorted((("le", "+Inf"), *grpc))))] == 1
    sent = ("openeas_gateway_instance_requests_total", (("instance", "i0"), ("service", "svc")))
    assert samples[sent] == 2
    assert samples[("openeas_gateway_in_flight_requests", (("service", "svc"),))] == 3
    assert samples[("openeas_gateway_queue_length", (("service", "svc"),))] == 2
