"""The gateway's HTTP front against real instances: forwarding, auth, balancing, failures."""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import threading

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from openeas.testing.gateway import GatewayThread
from openeas.testing.server import start_server
from tests.integration.conftest import binary_infer_body, raw_request, wait_until
from tests.integration.gateway.conftest import (
    Cluster,
    dead_upstream,
    gw_request,
    json_infer_body,
    make_repository,
)

TOKEN = "secret-token-1"


@pytest.fixture
def svc(gateway: GatewayThread, cluster: Cluster, service_name: str) -> str:
    """A service over all three instances."""
    gateway.publish(service_name, TOKEN, cluster.upstreams)
    return service_name


def _client(gateway: GatewayThread, name: str) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(gateway.http_url(name))


# -- forwarding -----------------------------------------------------------------------


def test_tritonclient_json_binary_and_compression(gateway: GatewayThread, svc: str) -> None:
    client = _client(gateway, svc)
    headers = {"Authorization": TOKEN}
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    for binary in (False, True):
        inp = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
        inp.set_data_from_numpy(data, binary_data=binary)
        out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
        for request_algo, response_algo in ((None, None), ("gzip", "deflate"), ("deflate", "gzip")):
            result = client.infer(
                "identity_fp32",
                [inp],
                outputs=[out],
                headers=dict(headers),  # tritonclient adds Content-Encoding to the dict
                request_compression_algorithm=request_algo,
                response_compression_algorithm=response_algo,
            )
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    words = np.array([b"one", b"", "dr\u00e9i".encode()], dtype=np.object_)
    inp = httpclient.InferInput("INPUT0", [3], "BYTES")
    inp.set_data_from_numpy(words, binary_data=True)
    result = client.infer("identity_bytes", [inp], headers=headers)
    assert list(result.as_numpy("OUTPUT0")) == list(words)
    client.close()


def test_processor_api_passes_through(gateway: GatewayThread, svc: str) -> None:
    client = _client(gateway, svc)
    headers = {"Authorization": TOKEN}
    assert client.is_server_live(headers=headers)
    assert client.is_server_ready(headers=headers)
    assert client.is_model_ready("identity_fp32", headers=headers)
    assert client.get_server_metadata(headers=headers)["name"]
    metadata = client.get_model_metadata("add_sub", headers=headers)
    assert [i["name"] for i in metadata["inputs"]] == ["INPUT0", "INPUT1"]
    assert client.get_model_config("add_sub", headers=headers)["name"] == "add_sub"
    index = client.get_model_repository_index(headers=headers)
    assert {"identity_fp32", "slow", "add_sub"} <= {m["name"] for m in index}
    stats = client.get_inference_statistics("identity_fp32", headers=headers)
    assert stats["model_stats"][0]["name"] == "identity_fp32"
    # the instance's own errors come back unchanged
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("no_such_model", headers=headers)
    assert "no_such_model" in info.value.message()
    client.close()


def test_bodies_and_headers_pass_byte_for_byte(
    gateway: GatewayThread, cluster: Cluster, service_name: str
) -> None:
    gateway.publish(service_name, TOKEN, cluster.upstreams[:1])
    data = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)
    body, headers = binary_infer_body(
        [("INPUT0", data, "FP32")],
        outputs=[{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
    )
    path = "/v2/models/identity_fp32/infer"
    direct = raw_request(cluster.servers[0], "POST", path, body, headers)
    through = gw_request(
        gateway,
        "POST",
        f"/api/predict/{service_name}{path}",
        body,
        {**headers, "Authorization": TOKEN},
    )
    assert direct.status == through.status == 200
    assert through.body == direct.body
    for name in ("content-type", "inference-header-content-length"):
        assert through.headers[name] == direct.headers[name]
    assert through.body[int(through.headers["inference-header-content-length"]) :] == data.tobytes()
    # a compressed body is passed on compressed; the instance decodes it
    packed = gzip.compress(body)
    through = gw_request(
        gateway,
        "POST",
        f"/api/predict/{service_name}{path}",
        packed,
        {**headers, "Content-Encoding": "gzip", "Authorization": TOKEN},
    )
    assert through.status == 200, through
    assert through.body == direct.body


def test_large_binary_tensors(gateway: GatewayThread, svc: str) -> None:
    client = _client(gateway, svc)
    data = np.random.default_rng(7).random((2, 1_000_000), dtype=np.float32)  # 8 MB
    inp = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
    inp.set_data_from_numpy(data, binary_data=True)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)
    result = client.infer("identity_fp32", [inp], outputs=[out], headers={"Authorization": TOKEN})
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    client.close()


def test_query_string_and_unknown_path_pass_through(gateway: GatewayThread, svc: str) -> None:
    response = gw_request(
        gateway,
        "GET",
        f"/api/predict/{svc}/v2/no/such/endpoint?x=1",
        headers={"Authorization": TOKEN},
    )
    assert response.status == 404
    assert response.error()


# -- auth and gateway errors ----------------------------------------------------------


def test_auth_failures(
    gateway: GatewayThread, cluster: Cluster, svc: str, caplog: pytest.LogCaptureFixture
) -> None:
    other = svc + "-other"
    gateway.publish(other, "the-other-token", cluster.upstreams)
    path = f"/api/predict/{svc}/v2/health/ready"
    caplog.set_level(logging.INFO, logger="openeas.gateway.access")
    missing = gw_request(gateway, "GET", path)
    assert missing.status == 401 and "token" in missing.error()
    for bad in ("wrong", TOKEN + "x", "the-other-token", "Bearer wrong"):
        response = gw_request(gateway, "GET", path, headers={"Authorization": bad})
        assert response.status == 401, bad
        assert svc in response.error()
    for good in (TOKEN, f"Bearer {TOKEN}"):
        assert gw_request(gateway, "GET", path, headers={"Authorization": good}).status == 200
    # the other service takes its own token only
    other_path = f"/api/predict/{other}/v2/health/ready"
    assert gw_request(gateway, "GET", other_path, headers={"Authorization": TOKEN}).status == 401
    assert (
        gw_request(gateway, "GET", other_path, headers={"Authorization": "the-other-token"}).status
        == 200
    )
    # tritonclient sees the 401 as an error
    client = _client(gateway, svc)
    with pytest.raises(InferenceServerException) as info:
        client.get_server_metadata(headers={"Authorization": "wrong"})
    assert info.value.status() == "401"
    client.close()
    wait_until(lambda: len([r for r in caplog.records if r.name == "openeas.gateway.access"]) >= 9)
    lines = [r.getMessage() for r in caplog.records if r.name == "openeas.gateway.access"]
    assert any(f"service={svc}" in line and "status=401" in line for line in lines)
    assert any(
        f"service={svc}" in line and "status=200" in line and "instance=i" in line for line in lines
    )
    assert not any(TOKEN in line or "the-other-token" in line for line in lines)


def test_unknown_service_and_path(gateway: GatewayThread) -> None:
    response = gw_request(gateway, "GET", "/api/predict/no-such-service/v2/health/ready")
    assert response.status == 404 and "no-such-service" in response.error()
    response = gw_request(gateway, "GET", "/v2/health/ready")
    assert response.status == 404 and "/api/predict/" in response.error()


def test_wrong_method(gateway: GatewayThread, svc: str) -> None:
    headers = {"Authorization": TOKEN}
    response = gw_request(
        gateway, "PUT", f"/api/predict/{svc}/v2/models/identity_fp32", headers=headers
    )
    assert response.status == 405 and "PUT" in response.error()
    assert response.headers["allow"] == "GET, POST"
    # the instance's own 405 (GET on infer) passes through
    response = gw_request(
        gateway, "GET", f"/api/predict/{svc}/v2/models/identity_fp32/infer", headers=headers
    )
    assert response.status == 405 and response.error()


def test_no_ready_instance(gateway: GatewayThread, service_name: str) -> None:
    gateway.publish(service_name, TOKEN, [])
    response = gw_request(
        gateway,
        "GET",
        f"/api/predict/{service_name}/v2/health/ready",
        headers={"Authorization": TOKEN},
    )
    assert response.status == 503 and "no ready instance" in response.error()


def test_all_instances_killed(gateway: GatewayThread, tmp_path, service_name: str) -> None:
    server = start_server(make_repository(tmp_path), log_path=tmp_path / "server.log", timeout=120)
    try:
        from openeas.testing.gateway import upstream_of

        gateway.publish(service_name, TOKEN, [upstream_of(server, "k0")])
        path = f"/api/predict/{service_name}/v2/models/identity_fp32/infer"
        body = json_infer_body([1.0, 2.0])
        assert gw_request(gateway, "POST", path, body, {"Authorization": TOKEN}).status == 200
        server.process.kill()
        server.process.wait(30)
        response = gw_request(gateway, "POST", path, body, {"Authorization": TOKEN})
        assert response.status in (503, 504), response
        # from then on the instance is known to refuse connections: 503 with a clear message
        response = gw_request(gateway, "POST", path, body, {"Authorization": TOKEN})
        assert response.status == 503, response
        assert "could be reached" in response.error()
    finally:
        server.stop()


# -- load balancing -------------------------------------------------------------------


def test_even_spread_from_one_keepalive_connection(
    gateway: GatewayThread, cluster: Cluster, svc: str
) -> None:
    before = cluster.success_counts("identity_fp32")
    conn = http.client.HTTPConnection("127.0.0.1", gateway.http_port, timeout=30)
    body = json_infer_body([1.0, 2.0, 3.0])
    for _ in range(60):
        response = gw_request(
            gateway,
            "POST",
            f"/api/predict/{svc}/v2/models/identity_fp32/infer",
            body,
            {"Authorization": TOKEN},
            conn=conn,
        )
        assert response.status == 200
    conn.close()
    after = cluster.success_counts("identity_fp32")
    spread = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(spread) == 60
    assert min(spread) >= 15, spread  # round-robin among idle instances: 20 each


def test_sequence_affinity(gateway: GatewayThread, cluster: Cluster, svc: str) -> None:
    client = _client(gateway, svc)
    headers = {"Authorization": TOKEN}
    inp = httpclient.InferInput("INPUT0", [1, 2], "FP32")
    inp.set_data_from_numpy(np.ones((1, 2), dtype=np.float32), binary_data=True)
    homes = []
    for sequence_id in (101, 102, 103, "seq-str"):
        before = cluster.success_counts("identity_fp32")
        for step in range(5):
            client.infer(
                "identity_fp32",
                [inp],
                headers=headers,
                sequence_id=sequence_id,
                sequence_start=step == 0,
                sequence_end=step == 4,
            )
        after = cluster.success_counts("identity_fp32")
        delta = [a - b for a, b in zip(after, before, strict=True)]
        assert sorted(delta) == [0, 0, 5], (sequence_id, delta)  # all on one instance
        homes.append(delta.index(5))
    assert len(set(homes)) > 1, homes  # different sequences land on different instances
    # ended sequences are forgotten
    state = gateway.call(lambda: gateway.gateway.core.states[svc])  # type: ignore[union-attr]
    assert gateway.call(lambda: dict(state.sequences)) == {}
    client.close()


def test_connect_failure_is_retried_on_another_instance(
    gateway: GatewayThread, cluster: Cluster, service_name: str
) -> None:
    gateway.publish(
        service_name,
        TOKEN,
        [dead_upstream("dead0"), *cluster.upstreams[:2], dead_upstream("dead1")],
    )
    before = cluster.success_counts("identity_fp32")
    path = f"/api/predict/{service_name}/v2/models/identity_fp32/infer"
    for _ in range(12):
        response = gw_request(
            gateway, "POST", path, json_infer_body([5.0]), {"Authorization": TOKEN}
        )
        assert response.status == 200, response
        assert response.json()["outputs"][0]["data"] == [5.0]
    after = cluster.success_counts("identity_fp32")
    assert sum(after[:2]) - sum(before[:2]) == 12


def test_draining_instance_gets_no_new_requests(
    gateway: GatewayThread, cluster: Cluster, service_name: str
) -> None:
    i0, i1, _ = cluster.upstreams
    gateway.publish(service_name, TOKEN, [i0])
    slow_path = f"/api/predict/{service_name}/v2/models/slow/infer"
    results: list = []

    def slow_request() -> None:
        results.append(
            gw_request(
                gateway,
                "POST",
                slow_path,
                json_infer_body([7.0], batched=False),
                {"Authorization": TOKEN},
            )
        )

    worker = threading.Thread(target=slow_request)
    worker.start()
    wait_until(lambda: gateway.in_flight("i0") == 1, what="the slow request in flight on i0")
    gateway.publish(service_name, TOKEN, [i1], draining=[i0])
    before = cluster.success_counts("identity_fp32")
    path = f"/api/predict/{service_name}/v2/models/identity_fp32/infer"
    for _ in range(6):
        assert (
            gw_request(
                gateway, "POST", path, json_infer_body([1.0]), {"Authorization": TOKEN}
            ).status
            == 200
        )
    after = cluster.success_counts("identity_fp32")
    assert [a - b for a, b in zip(after, before, strict=True)][:2] == [0, 6]
    worker.join(60)
    assert results and results[0].status == 200, results
    assert json.loads(results[0].body)["outputs"][0]["data"] == [7.0]
    assert gateway.in_flight("i0") == 0


def test_metrics_count_requests_by_code(gateway: GatewayThread, svc: str) -> None:
    path = f"/api/predict/{svc}/v2/health/live"
    for _ in range(3):
        gw_request(gateway, "GET", path, headers={"Authorization": TOKEN})
    gw_request(gateway, "GET", path, headers={"Authorization": "nope"})
    text = gateway.metrics_text()
    assert (
        f'openeas_gateway_requests_total{{code="200",protocol="http",service="{svc}"}} 3.0' in text
    )
    assert (
        f'openeas_gateway_requests_total{{code="401",protocol="http",service="{svc}"}} 1.0' in text
    )
    assert (
        f'openeas_gateway_request_duration_seconds_count{{protocol="http",service="{svc}"}} 4.0'
        in text
    )
    assert f'openeas_gateway_in_flight_requests{{service="{svc}"}} 0.0' in text
    assert f'openeas_gateway_queue_length{{service="{svc}"}} 0.0' in text
