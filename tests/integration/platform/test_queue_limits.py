"""``rpc.max_queue_size`` bites under a flood: with ``rpc.worker_threads`` set, the gateway
sends an instance only that many requests at once, queues ``rpc.max_queue_size`` more and
answers the rest 450 at once (issue 20's scenario, through ``openeas up`` and eascmd)."""

from __future__ import annotations

import concurrent.futures
import http.client
import threading
import time

import pytest

from tests.integration.conftest import copy_test_model
from tests.integration.gateway.conftest import json_infer_body
from tests.integration.platform.conftest import Platform, service_doc

pytestmark = pytest.mark.python_backend

NAME = "flooded"
#: seconds one execution of the ``slow`` model takes here
SLOW_S = 1.0
FLOOD = 20


def _post(platform: Platform, token: str, start: threading.Barrier) -> tuple[int, float, bytes]:
    """One 1-second request; its status, its seconds from the start, its body."""
    conn = http.client.HTTPConnection("127.0.0.1", platform.http_port, timeout=60)
    body = json_infer_body([1.0], batched=False)
    try:
        conn.connect()
        start.wait(30)
        began = time.monotonic()
        conn.request(
            "POST",
            f"/api/predict/{NAME}/v2/models/slow/infer",
            body=body,
            headers={"Authorization": token},
        )
        response = conn.getresponse()
        return response.status, time.monotonic() - began, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def token(platform: Platform) -> str:
    repo = platform.home / "slow-repo"
    repo.mkdir()
    copy_test_model(repo, "slow", replace={'string_value: "0.2"': f'string_value: "{SLOW_S}"'})
    doc = service_doc(
        NAME,
        repo,
        **{"rpc.worker_threads": 1, "rpc.max_queue_size": 2, "rpc.keepalive": 30_000},
    )
    platform.ok("create", str(platform.write_spec(doc, "flooded.json")))
    return str(platform.json("desc", NAME)["token"])


def test_a_flood_gets_450_beyond_the_queue_at_once(platform: Platform, token: str) -> None:
    # warm: the instance answers (and the model has run once)
    assert _post(platform, token, threading.Barrier(1))[0] == 200
    answers = _flood(platform, token)
    statuses = sorted(status for status, _, _ in answers)
    # one running on the instance's one worker, two waiting in the gateway's queue
    assert statuses == [200] * 3 + [450] * (FLOOD - 3), statuses
    served = sorted(seconds for status, seconds, _ in answers if status == 200)
    refused = [(seconds, body) for status, seconds, body in answers if status == 450]
    # refused at once, not after waiting: before the first execution could end
    assert max(seconds for seconds, _ in refused) < min(served) and min(served) >= SLOW_S * 0.9
    assert b"rpc.max_queue_size is 2" in refused[0][1]
    # the queued ones ran one after another on the one instance
    assert served[-1] >= 3 * SLOW_S * 0.9, served


def _flood(platform: Platform, token: str) -> list[tuple[int, float, bytes]]:
    start = threading.Barrier(FLOOD)
    with concurrent.futures.ThreadPoolExecutor(FLOOD) as pool:
        return list(pool.map(lambda _: _post(platform, token, start), range(FLOOD)))


def test_the_limit_follows_an_update(platform: Platform, token: str) -> None:
    # rpc.worker_threads 3 (a new version, same instance): three run at once, two
    # queue, the rest 450
    platform.ok("update", NAME, "-Dmetadata.rpc.worker_threads=3")
    statuses = sorted(status for status, _, _ in _flood(platform, token))
    assert statuses == [200] * 5 + [450] * (FLOOD - 5), statuses
