"""Gateway start/stop, and perf_analyzer pointed at /api/predict/<service> unchanged."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from openeas.gateway import Gateway, RouteTable
from openeas.testing.gateway import GatewayThread
from openeas.testing.perf import run_perf_analyzer, unavailable_reason
from tests.integration.conftest import wait_until
from tests.integration.gateway.conftest import Cluster, gw_request, json_infer_body

TOKEN = "lifecycle-token"


@pytest.mark.parametrize("taken", ["http", "grpc"])
def test_port_in_use_raises_oserror_naming_it(taken: str) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        ports = {"http_port": 0, "grpc_port": 0, f"{taken}_port": port}

        async def start() -> None:
            gateway = Gateway(RouteTable(), host="127.0.0.1", **ports)
            await gateway.start()
            await gateway.stop()

        with pytest.raises(OSError, match=str(port)):
            asyncio.run(start())


def test_stop_lets_in_flight_requests_finish(cluster: Cluster, service_name: str) -> None:
    gw = GatewayThread().start()
    try:
        gw.publish(service_name, TOKEN, cluster.upstreams[:1])
        results: list = []
        body = json_infer_body([4.0], batched=False)
        path = f"/api/predict/{service_name}/v2/models/slow/infer"
        worker = threading.Thread(
            target=lambda: results.append(
                gw_request(gw, "POST", path, body, {"Authorization": TOKEN})
            )
        )
        worker.start()
        wait_until(lambda: gw.in_flight("i0") == 1, what="the slow request in flight")
        port = gw.http_port
        gw.stop(grace=30)
        worker.join(30)
        assert results and results[0].status == 200, results
        assert results[0].json()["outputs"][0]["data"] == [4.0]
        # the port is closed after stop
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        gw.stop()


@pytest.mark.skipif(bool(unavailable_reason()), reason=unavailable_reason())
@pytest.mark.parametrize("protocol", ["http", "grpc", "grpc-streaming"])
def test_perf_analyzer_through_gateway(
    gateway: GatewayThread, cluster: Cluster, service_name: str, protocol: str
) -> None:
    # statistics requests are answered by one instance each; perf_analyzer's streaming
    # mode insists on finding its stream's counts in them, so it gets a single instance
    upstreams = cluster.upstreams[:1] if protocol == "grpc-streaming" else cluster.upstreams
    gateway.publish(service_name, TOKEN, upstreams)
    before = sum(cluster.success_counts("identity_fp32"))
    if protocol == "http":
        url, headers = gateway.http_url(service_name), ["-H", f"Authorization:{TOKEN}"]
    else:
        url = gateway.grpc_url
        headers = ["-H", f"authorization:{TOKEN}", "-H", f"x-eas-service:{service_name}"]
    if protocol == "grpc-streaming":
        headers.append("--streaming")
    point, output = run_perf_analyzer(
        "identity_fp32",
        url,
        protocol="http" if protocol == "http" else "grpc",
        concurrency=2,
        measurement_ms=500,
        stability=100,
        extra=[*headers, "--shape", "INPUT0:16"],
    )
    assert point.throughput > 0
    assert "Inference count:" in output
    assert sum(cluster.success_counts("identity_fp32")) > before
