"""The gateway as its own tier: ``openeas up`` runs the control plane and the gateway as
separate processes under a supervisor; the gateway follows the routes through the REST
API and keeps serving while the control plane is gone.  Real processes, real kills."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from openeas.testing.onnx_models import add_sub_inputs
from tests.integration.conftest import wait_until
from tests.integration.platform.conftest import Platform, make_add_sub_repository, service_doc

NAME = "tiered"
ROUTES = "/api/v1/gateway/routes"


@pytest.fixture(scope="module")
def token(platform: Platform) -> str:
    repo = make_add_sub_repository(platform.home / "repo")
    platform.ok("create", str(platform.write_spec(service_doc(NAME, repo))))
    return str(platform.json("desc", NAME)["token"])


def _components(platform: Platform) -> dict[str, Any]:
    return json.loads((platform.home / "platform.json").read_text())["components"]


def _pid(platform: Platform, component: str) -> int:
    return int(_components(platform)[component]["pid"])


def _running(platform: Platform) -> bool:
    """The service is Running as the (maybe restarting) control plane describes it."""
    result = platform.eascmd("desc", NAME, "--json")
    return result.returncode == 0 and json.loads(result.stdout)["status"] == "Running"


class Load:
    """``threads`` clients per protocol, each with its own connection (a failed one is
    replaced), sending add/sub requests through the gateway until stopped."""

    def __init__(self, platform: Platform, token: str, protocols: tuple[str, ...]) -> None:
        self.platform, self.token = platform, token
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(p,), daemon=True) for p in protocols
        ]

    def _client(self, protocol: str) -> tuple[Any, Callable[[], Any]]:
        if protocol == "http":
            url = f"{self.platform.gateway_url}/api/predict/{NAME}"
            client: Any = httpclient.InferenceServerClient(url, network_timeout=30)
            inputs, headers = add_sub_inputs(httpclient), {"Authorization": self.token}
        else:
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{self.platform.grpc_port}")
            inputs = add_sub_inputs(grpcclient)
            headers = {"authorization": self.token, "x-eas-service": NAME}
        return client, lambda: client.infer("simple", inputs, headers=headers)

    def _run(self, protocol: str) -> None:
        client, call = self._client(protocol)
        while not self._stop.is_set():
            try:
                result = call()
                assert result.as_numpy("OUTPUT0") is not None
                self.ok += 1
            except Exception as exc:  # every failure is reported by the test
                self.failures.append(f"{protocol}: {type(exc).__name__}: {exc}")
                client.close()
                client, call = self._client(protocol)
        client.close()

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        wait_until(lambda: self.ok > 5 or self.failures, timeout=60, what="first requests")
        return self

    def more(self, n: int = 20) -> None:
        """Wait until ``n`` more requests succeeded."""
        start = self.ok
        wait_until(lambda: self.ok >= start + n, timeout=60, what=f"{n} more requests")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def test_the_route_watch_needs_the_gateway_credential_and_follows_changes(
    platform: Platform, token: str
) -> None:
    url = f"http://127.0.0.1:{platform.api_port}{ROUTES}"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    credential = platform.home / "gateway-credential"
    assert stat.S_IMODE(credential.stat().st_mode) == 0o600
    bearer = {"Authorization": f"Bearer {json.loads(credential.read_text())['token']}"}
    first = httpx.get(url, headers=bearer).json()
    [route] = [s for s in first["services"] if s["name"] == NAME]
    assert route["token"] == token and route["upstreams"][0]["token"]
    # Unchanged: the watch answers the same version when its timeout passes.
    started = time.monotonic()
    same = httpx.get(url, headers=bearer, params={"since": first["version"], "timeout": 0.5})
    assert same.json()["version"] == first["version"] and time.monotonic() - started >= 0.5
    # A change answers a waiting watch at once.
    answer: dict[str, Any] = {}

    def watch() -> None:
        params = {"since": first["version"], "timeout": 30}
        answer.update(httpx.get(url, headers=bearer, params=params, timeout=40).json())

    waiter = threading.Thread(target=watch)
    waiter.start()
    repo = make_add_sub_repository(platform.home / "repo2")
    platform.ok("create", str(platform.write_spec(service_doc("second", repo), "second.json")))
    waiter.join(40)
    assert answer["version"] != first["version"]
    assert "second" in [s["name"] for s in answer["services"]]
    # The gateway process keeps what it follows on disk, owner-only (it holds tokens).
    snapshot = platform.home / "routes.json"
    wait_until(lambda: "second" in snapshot.read_text(), what="the saved routes")
    assert stat.S_IMODE(snapshot.stat().st_mode) == 0o600
    platform.ok("delete", "-y", "second")


def test_kill_9_of_the_control_plane_under_load_fails_no_request(
    platform: Platform, token: str
) -> None:
    control = _pid(platform, "control-plane")
    with Load(platform, token, ("http", "http", "grpc", "grpc")) as load:
        os.kill(control, signal.SIGKILL)
        wait_until(
            lambda: _pid(platform, "control-plane") != control,
            timeout=10,
            what="a new control plane",
        )
        load.more()
        # The new control plane answers and has re-adopted the instance; traffic went on.
        wait_until(lambda: _running(platform), timeout=60, what="the service described again")
        load.more()
    assert load.failures == []
    assert _components(platform)["control-plane"]["restarts"] >= 1
    status = platform.eascmd_platform("status")
    assert status.returncode == 0 and "control-plane" in status.stdout, status.stderr


def test_the_api_answers_a_call_made_while_the_control_plane_restarts(
    platform: Platform, token: str
) -> None:
    """The supervisor holds the API's listening socket: a call made while no control plane
    runs waits in the backlog for the next one instead of being refused."""
    control = _pid(platform, "control-plane")
    os.kill(control, signal.SIGKILL)
    wait_until(lambda: not _alive(control), timeout=10, what="the control plane gone")
    # Its successor needs a second or more to import and start: this call comes first.
    health = httpx.get(f"http://127.0.0.1:{platform.api_port}/healthz", timeout=60)
    assert health.status_code == 200
    assert _pid(platform, "control-plane") != control
    wait_until(lambda: _running(platform), timeout=60, what="the service described again")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_kill_9_of_the_gateway_is_back_within_a_second(platform: Platform, token: str) -> None:
    gateway = _pid(platform, "gateway")
    clients = ("http", "http", "grpc", "grpc")
    with Load(platform, token, clients) as load:
        load.more()
        before = load.ok
        killed = time.monotonic()
        os.kill(gateway, signal.SIGKILL)
        wait_until(lambda: load.ok > before + len(clients), timeout=10, what="traffic again")
        back = time.monotonic() - killed
        load.more()
    # A request in flight on the killed gateway fails; nothing else does, and no
    # connection is refused (the supervisor holds the listening sockets).
    assert len(load.failures) <= len(clients), load.failures
    assert not [f for f in load.failures if "refused" in f.lower() or "404" in f], load.failures
    # About 0.9 s on a loaded 2-core machine (a new process imports the gateway); the
    # bound leaves room for a slower CI runner.
    assert back < 3.0, back
    assert _pid(platform, "gateway") != gateway
    assert "gateway" in platform.eascmd_platform("status").stdout


def test_a_gateway_started_while_the_control_plane_is_down_serves_its_saved_routes(
    platform: Platform, token: str
) -> None:
    """Both sides restart at once (no API to ask): the saved routes serve, no 404."""
    control, gateway = _pid(platform, "control-plane"), _pid(platform, "gateway")
    with Load(platform, token, ("http", "grpc")) as load:
        os.kill(control, signal.SIGKILL)
        os.kill(gateway, signal.SIGKILL)
        wait_until(lambda: _pid(platform, "gateway") != gateway, timeout=10, what="new gateway")
        load.more()
        wait_until(lambda: _running(platform), timeout=60, what="the service described again")
        load.more()
    assert len(load.failures) <= 2, load.failures
    assert not [f for f in load.failures if "404" in f or "not exist" in f], load.failures


def test_more_gateways_with_workers_follow_the_api_and_share_the_ports(
    platform: Platform, token: str
) -> None:
    """``openeas gateway --workers 2`` elsewhere: both workers serve on the same ports; a
    killed worker is replaced while the other one goes on; SIGTERM stops them all."""
    import subprocess
    import sys

    import psutil

    from openeas.testing.server import free_port

    http, grpc = free_port(), free_port()
    log = open(platform.home / "workers.log", "wb")  # noqa: SIM115 - the child's
    parent = subprocess.Popen(
        [
            sys.executable, "-m", "openeas.cli.main", "gateway", "--workers=2",
            f"--api=http://127.0.0.1:{platform.api_port}", "--host=127.0.0.1",
            f"--http-port={http}", f"--grpc-port={grpc}", "--gateway-id=elsewhere",
            f"--snapshot={platform.home / 'elsewhere.json'}",
        ],
        env=platform.env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    other = Platform(platform.home, platform.api_port, http, grpc, [])
    try:

        def serving(n: int) -> bool:
            text = (platform.home / "workers.log").read_text(errors="replace")
            return text.count("gateway serving HTTP") >= n

        wait_until(lambda: serving(2), timeout=30, what="two workers serving")
        [first, _] = psutil.Process(parent.pid).children()
        with Load(other, token, ("http", "grpc")) as load:
            load.more()
            os.kill(first.pid, signal.SIGKILL)
            wait_until(lambda: serving(3), timeout=10, what="the killed worker replaced")
            load.more()
        assert len(load.failures) <= 2, load.failures
        assert not [f for f in load.failures if "refused" in f.lower()], load.failures
    finally:
        children = psutil.Process(parent.pid).children()
        parent.terminate()
        assert parent.wait(60) == 0, (platform.home / "workers.log").read_text()
        assert not [c for c in children if c.is_running() and c.status() != "zombie"]
