"""``openeas up``'s gateway process reports its traffic to the control plane, whose book
(``GET /api/v1/gateway/traffic``) gives each service's request rate under a steady load
from tritonclient."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import numpy as np
import tritonclient.http as httpclient

from tests.integration.conftest import wait_until
from tests.integration.platform.conftest import Platform, make_add_sub_repository, service_doc

NAME = "metered"
PER_SECOND = 12.0


def _traffic(platform: Platform) -> dict[str, Any]:
    credential = json.loads((platform.home / "gateway-credential").read_text())["token"]
    response = httpx.get(
        f"http://127.0.0.1:{platform.api_port}/api/v1/gateway/traffic",
        headers={"Authorization": f"Bearer {credential}"},
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


class PacedLoad:
    """add/sub requests through the gateway at ``PER_SECOND`` (as the client manages);
    the completion time of each."""

    def __init__(self, platform: Platform, token: str) -> None:
        self.done: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._args = (platform, token)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        platform, token = self._args
        client = httpclient.InferenceServerClient(
            f"{platform.gateway_url}/api/predict/{NAME}", network_timeout=30
        )
        data = np.arange(16, dtype=np.float32).reshape(1, 16)
        inputs = [httpclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        for item in inputs:
            item.set_data_from_numpy(data)
        start = time.monotonic()
        n = 0
        try:
            while not self._stop.is_set():
                try:
                    client.infer("simple", inputs, headers={"Authorization": token})
                    self.done.append(time.monotonic())
                except Exception as exc:  # reported by the test
                    self.failures.append(repr(exc))
                n += 1
                delay = start + n / PER_SECOND - time.monotonic()
                if delay > 0:  # the load's shape, not a synchronisation
                    self._stop.wait(delay)
        finally:
            client.close()

    def last_seconds(self, seconds: float) -> float:
        """The clients' rate over the last ``seconds``."""
        now = time.monotonic()
        return sum(1 for t in self.done if now - t <= seconds) / seconds

    def __enter__(self) -> PacedLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def test_the_gateway_s_reports_give_the_service_s_rate(platform: Platform) -> None:
    repo = make_add_sub_repository(platform.home / "repo")
    platform.ok("create", str(platform.write_spec(service_doc(NAME, repo))))
    token = str(platform.json("desc", NAME)["token"])
    wait_until(lambda: NAME in _traffic(platform)["services"], timeout=30, what="a report")
    assert _traffic(platform)["gateways"] == ["local"]  # the supervised gateway
    with PacedLoad(platform, token) as load:

        def close_to_the_clients() -> tuple[float, float] | None:
            if not load.done or time.monotonic() - load.done[0] < 7:
                return None  # the book's window (5 s) is not full of load yet
            clients = load.last_seconds(5.0)
            rate = _traffic(platform)["services"][NAME]["rate"]
            return (rate, clients) if abs(rate - clients) <= 0.25 * clients else None

        rate, clients = wait_until(close_to_the_clients, timeout=60, interval=0.5)
        assert clients > PER_SECOND / 2, clients
    assert not load.failures, load.failures[:3]
    wait_until(
        lambda: _traffic(platform)["services"][NAME] == {"rate": 0.0, "in_flight": 0, "waiting": 0},
        timeout=30,
        what="the rate back to 0 after the load",
    )
