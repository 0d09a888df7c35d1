"""The gateway's gRPC callback fast path: a unary call to an instance whose connection
is open runs without a task, and ends as the coroutine path would (the instance's
errors, the keepalive's 408/504 as DEADLINE_EXCEEDED/UNAVAILABLE, the client's deadline)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from openeas.gateway import ServiceLimits
from openeas.gateway.routes import Upstream
from openeas.testing.gateway import GatewayThread
from tests.integration.conftest import wait_until
from tests.integration.gateway.conftest import SLOW_S, Cluster, SilentInstance

TOKEN = "fast-token"


@pytest.fixture
def client(gateway: GatewayThread) -> Iterator[Any]:
    c = grpcclient.InferenceServerClient(gateway.grpc_url)
    yield c
    c.close()


def _input(data: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    inp.set_data_from_numpy(data)
    return inp


def _headers(service: str) -> dict[str, str]:
    return {"authorization": TOKEN, "x-eas-service": service}


def _fail(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


class _TaskCounter:
    """A task factory on the gateway's loop that counts the tasks it makes."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        self.count += 1
        return asyncio.Task(coro, loop=loop, **kwargs)


def test_calls_on_an_open_connection_make_no_task(
    client: Any, gateway: GatewayThread, cluster: Cluster, service_name: str
) -> None:
    gateway.publish(service_name, TOKEN, cluster.upstreams[:1])
    data = np.arange(4, dtype=np.float32).reshape(1, 4)
    client.infer("identity_fp32", [_input(data)], headers=_headers(service_name))  # connects
    counter = _TaskCounter()
    loop = gateway.loop
    assert loop is not None
    gateway.call(loop.set_task_factory, counter)
    try:
        for _ in range(5):
            result = client.infer("identity_fp32", [_input(data)], headers=_headers(service_name))
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
        made = counter.count  # before the next gateway.call, which runs in a task
    finally:
        gateway.call(loop.set_task_factory, None)
    assert made == 0


def test_instance_errors_pass_through(
    client: Any, gateway: GatewayThread, cluster: Cluster, service_name: str
) -> None:
    gateway.publish(service_name, TOKEN, cluster.upstreams[:1])
    assert client.is_server_live(headers=_headers(service_name))  # connects
    for _ in range(2):
        error = _fail(lambda: client.get_model_metadata("nope", headers=_headers(service_name)))
        assert str(error.status()) == "StatusCode.NOT_FOUND" and "nope" in error.message()
    assert gateway.in_flight("i0") == 0


@pytest.mark.parametrize("outcome", ["slow", "silent"])
def test_keepalive_on_an_open_connection(
    client: Any,
    gateway: GatewayThread,
    cluster: Cluster,
    silent_instance: SilentInstance,
    service_name: str,
    outcome: str,
) -> None:
    """408 (the instance is alive, just slow) or 504 (it does not answer), as gRPC codes."""
    if outcome == "slow":
        upstream = cluster.upstreams[1]
    else:
        port = silent_instance.port
        upstream = Upstream("mute", "127.0.0.1", port, port)
    gateway.publish(service_name, TOKEN, [upstream], limits=ServiceLimits(keepalive_ms=300))
    data = np.ones(2, dtype=np.float32)
    for _ in range(2):  # the first call opens the connection, the second takes the fast path
        error = _fail(lambda: client.infer("slow", [_input(data)], headers=_headers(service_name)))
        if outcome == "slow":
            assert str(error.status()) == "StatusCode.DEADLINE_EXCEEDED", error
            assert "rpc.keepalive" in error.message()
        else:
            assert str(error.status()) == "StatusCode.UNAVAILABLE", error
            assert "does not answer" in error.message()
        wait_until(lambda: gateway.in_flight(upstream.instance_id) == 0, what="slot freed")


def test_client_deadline_frees_the_slot_at_once(
    client: Any, gateway: GatewayThread, cluster: Cluster, service_name: str
) -> None:
    upstream = cluster.upstreams[2]
    gateway.publish(service_name, TOKEN, [upstream])
    assert client.is_server_live(headers=_headers(service_name))  # connects
    data = np.ones(2, dtype=np.float32)
    started = time.monotonic()
    error = _fail(
        lambda: client.infer(
            "slow", [_input(data)], headers=_headers(service_name), client_timeout=0.3
        )
    )
    assert str(error.status()) == "StatusCode.DEADLINE_EXCEEDED", error
    # the gateway resets the upstream call: the slot is free long before the model is done
    wait_until(
        lambda: gateway.in_flight(upstream.instance_id) == 0,
        timeout=SLOW_S * 0.8,
        what="slot freed by the client's deadline",
    )
    assert time.monotonic() - started < SLOW_S
