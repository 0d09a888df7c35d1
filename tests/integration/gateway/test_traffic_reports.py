"""A gateway process's traffic reports, as the control plane's TrafficBook receives them.

The control-plane side is the real API application (route watch and traffic endpoint,
``openeas.platform.api.create_app``) served by uvicorn in a thread of the test, over a
route table the test writes (no reconciler: the test plays it); the gateway is a real
``openeas gateway --workers 2`` process tree following it.  Instances are the package's
real ``openeas-server`` processes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import uvicorn
from tritonclient.utils import InferenceServerException

from openeas.gateway import RouteTable, ServiceLimits, ServiceRoute, Upstream
from openeas.gateway.routes import GroupMember, GroupRoute
from openeas.platform.api import create_app
from openeas.platform.auth import AccessKey
from openeas.platform.routefeed import RouteFeed
from openeas.platform.traffic import ServiceTraffic, TrafficBook
from openeas.testing.server import free_port
from tests.integration.conftest import wait_until
from tests.integration.gateway.conftest import Cluster

CREDENTIAL = "gateway-credential-for-tests"
TOKEN = "traffic-token"
WORKERS = 2


class ControlApi:
    """The API application with a route feed and a traffic book, in a uvicorn thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self.routes = RouteTable()
        self.woken: list[tuple[float, str]] = []
        self.book = TrafficBook(on_waiting=lambda name: self.woken.append((time.monotonic(), name)))
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: uvicorn.Server | None = None
        self._thread = threading.Thread(target=self._main, name="control-api", daemon=True)

    def _main(self) -> None:
        feed = RouteFeed(self.routes)
        feed.ready = True
        app = create_app(
            object(),  # type: ignore[arg-type]  # only the gateways' endpoints are used
            {"AK": AccessKey("AK", "unused")},
            feed=feed,
            gateway_token=CREDENTIAL,
            traffic=self.book,
        )
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._server.serve())

    def start(self) -> None:
        self._thread.start()
        wait_until(lambda: self._server is not None and self._server.started, what="API up")

    def stop(self) -> None:
        assert self._server is not None
        self._server.should_exit = True
        self._thread.join(10)

    def on_loop(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the API's loop (where the book and the routes live)."""
        assert self.loop is not None
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def call() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # pragma: no cover - shown by the test
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(call)
        return future.result(10)

    def publish(self, name: str, upstreams: list[Upstream], **limits: Any) -> None:
        route = ServiceRoute(name, TOKEN, ServiceLimits(**limits), tuple(upstreams), hold=True)
        self.on_loop(self.routes.update, route)

    def sample(self, name: str) -> ServiceTraffic:
        return self.on_loop(lambda: self.book.sample(name, time.monotonic()))

    def gateways(self) -> list[str]:
        return self.on_loop(lambda: sorted(self.book.gateways(time.monotonic())))


@pytest.fixture(scope="module")
def control() -> Iterator[ControlApi]:
    api = ControlApi()
    api.start()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def gateway_process(control: ControlApi, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """``openeas gateway --workers 2`` following ``control``; its HTTP port."""
    home = tmp_path_factory.mktemp("gateway-home")
    (home / "credential").write_text(CREDENTIAL)
    http_port, grpc_port = free_port(), free_port()
    log = open(home / "gateway.log", "wb")  # noqa: SIM115 - the child's
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openeas.cli.main",
            "gateway",
            f"--api=http://127.0.0.1:{control.port}",
            f"--credential={home / 'credential'}",
            "--host=127.0.0.1",
            f"--http-port={http_port}",
            f"--grpc-port={grpc_port}",
            f"--snapshot={home / 'routes.json'}",
            "--gateway-id=gw",
            f"--workers={WORKERS}",
            "--log-level=warning",
        ],  # fmt: skip
        env={**os.environ, "OPENEAS_HOME": str(home)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    try:
        wait_until(
            lambda: sorted(control.gateways()) == [f"gw-{n}" for n in range(WORKERS)],
            timeout=60,
            what=f"reports from both workers; log:\n{_log(home)}",
        )
        yield http_port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _log(home: Path) -> str:
    return (home / "gateway.log").read_text(errors="replace")[-3000:]


def _identity_client(port: int, name: str) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(
        f"127.0.0.1:{port}/api/predict/{name}", network_timeout=120
    )


def _infer(client: httpclient.InferenceServerClient, token: str = TOKEN) -> Any:
    inp = httpclient.InferInput("INPUT0", [1, 2], "FP32")
    inp.set_data_from_numpy(np.array([[1.0, 2.0]], dtype=np.float32))
    return client.infer("identity_fp32", [inp], headers={"Authorization": token})


def _one(port: int, name: str, token: str = TOKEN) -> Any:
    client = _identity_client(port, name)
    try:
        return _infer(client, token).as_numpy("OUTPUT0")
    finally:
        client.close()


def test_reports_give_the_rate_of_a_steady_load(
    control: ControlApi, gateway_process: int, cluster: Cluster
) -> None:
    name = "steady"
    control.publish(name, cluster.upstreams[:2])
    wait_until(lambda: name in control.on_loop(control.book.services, time.monotonic()))
    stop = threading.Event()
    done: list[float] = []

    def load(per_second: float) -> None:  # a paced client: the load's shape, not a wait
        client = _identity_client(gateway_process, name)
        start = time.monotonic()
        try:
            for n in range(10_000):
                if stop.is_set():
                    return
                _infer(client)
                done.append(time.monotonic())
                delay = start + (n + 1) / per_second - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        finally:
            client.close()

    threads = [threading.Thread(target=load, args=(15.0,), daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:

        def close_to_the_clients() -> tuple[float, float] | None:
            now = time.monotonic()
            if not done or now - done[0] < 7:
                return None  # the book's window (5 s) is not full of load yet
            clients = sum(1 for t in done if now - 5 <= t) / 5
            rate = control.sample(name).rate
            return (rate, clients) if abs(rate - clients) <= 0.25 * clients else None

        rate, clients = wait_until(close_to_the_clients, timeout=60, interval=0.5)
        assert clients > 5, clients  # the load did run
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    # after the load: the rate falls to 0, nothing in flight
    wait_until(lambda: control.sample(name) == ServiceTraffic(0.0, 0, 0), timeout=30)


def test_held_requests_are_reported_at_once_and_served_when_an_instance_comes(
    control: ControlApi, gateway_process: int, cluster: Cluster
) -> None:
    held = 6
    for round_ in range(3):  # three services: a periodic report would miss the bound
        name = f"cold-{round_}"
        control.publish(name, [], keepalive_ms=120_000)
        wait_until(lambda n=name: n in control.on_loop(control.book.services, time.monotonic()))
        control.woken.clear()
        with concurrent.futures.ThreadPoolExecutor(held) as pool:
            sent = time.monotonic()
            futures = [pool.submit(_one, gateway_process, name) for _ in range(held)]
            woken = wait_until(lambda n=name: [t for t, s in control.woken if s == n], timeout=10)
            assert woken[0] - sent < 0.3, woken[0] - sent  # not the next periodic report
            # every held request is reported, summed over both workers
            wait_until(
                lambda n=name: control.sample(n) == ServiceTraffic(0.0, held, held),
                timeout=15,
                what="the held requests in the reports",
            )
            assert not any(f.done() for f in futures)
            control.publish(name, cluster.upstreams[:1], keepalive_ms=120_000)
            for future in futures:
                np.testing.assert_array_equal(future.result(60), [[1.0, 2.0]])
        wait_until(lambda n=name: control.sample(n).waiting == 0, timeout=15)
        assert control.sample(name).rate > 0


def test_every_worker_serves_a_service_group_and_reports_it_as_its_member(
    control: ControlApi, gateway_process: int, cluster: Cluster
) -> None:
    member, group, token = "grouped", "traffic-group", "group-token"
    control.publish(member, cluster.upstreams[:1])
    wait_until(lambda: member in control.on_loop(control.book.services, time.monotonic()))
    members = (GroupMember(member, 1), GroupMember("absent-standalone", 0))
    control.on_loop(control.routes.update_group, GroupRoute(group, token, members))

    def served_by_all() -> bool:  # fresh connections: either worker answers each
        try:
            return all(
                _one(gateway_process, group, token).tolist() == [[1.0, 2.0]] for _ in range(10)
            )
        except InferenceServerException:
            return False  # a worker that has not applied the group yet: 404

    wait_until(served_by_all, what="both workers serve the group")
    for _ in range(20):
        np.testing.assert_array_equal(_one(gateway_process, group, token), [[1.0, 2.0]])
    with pytest.raises(InferenceServerException) as info:  # the member's token is not it
        _one(gateway_process, group)
    assert "401" in str(info.value.status())
    wait_until(lambda: control.sample(member).rate > 0, what="the member's traffic reported")
    assert group not in control.on_loop(control.book.services, time.monotonic())


def test_a_restarted_worker_reports_a_new_boot_and_no_negative_rate(
    control: ControlApi, gateway_process: int, cluster: Cluster
) -> None:
    """Kill one worker (its supervisor restarts it with counters at zero)."""
    name = "restarts"
    control.publish(name, cluster.upstreams[:1])
    wait_until(lambda: name in control.on_loop(control.book.services, time.monotonic()))
    for _ in range(40):  # over fresh connections: both workers answer some
        _one(gateway_process, name)
    wait_until(lambda: control.sample(name).rate > 0)
    wait_until(lambda: control.sample(name).rate == 0.0, timeout=30)  # the window passed
    workers = _worker_pids(gateway_process)
    assert len(workers) == WORKERS
    for worker in workers:  # both restart, their counters back at zero
        os.kill(worker, signal.SIGKILL)
    rates = []
    deadline = time.monotonic() + 8  # past the restarts and the rate window
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # while the workers restart
            _one(gateway_process, name)
        rates.append(control.sample(name).rate)
        time.sleep(0.1)
    assert len(_worker_pids(gateway_process)) == WORKERS
    assert min(rates) >= 0 and max(rates) < 40, rates  # at most ~10/s were sent
    wait_until(lambda: control.sample(name).rate == 0.0, timeout=30)


def _worker_pids(port: int) -> list[int]:
    """The gateway workers (the processes with the port's socket, not the supervisor)."""
    import psutil

    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(a.startswith("--inherit-fds") for a in cmdline) and "--gateway-id=gw-" in " ".join(
            cmdline
        ):
            pids.append(proc.pid)
    return sorted(pids)


def test_reports_refused_without_the_credential(control: ControlApi) -> None:
    with socket.create_connection(("127.0.0.1", control.port), timeout=5) as sock:
        body = b'{"gateway": "x", "services": {}}'
        sock.sendall(
            b"POST /api/v1/gateway/traffic HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
            b"\r\nauthorization: Bearer wrong\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 401")
