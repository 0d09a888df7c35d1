"""Faults and hostile use of a real platform: crashes after readiness, backoff that forgets,
replayed requests, refused flags, and the permissions of its state directory."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from openeas.platform.auth import AccessKey, load_key, sign
from openeas.testing.server import free_port
from tests.integration.conftest import wait_until
from tests.integration.platform.conftest import (
    Platform,
    make_add_sub_repository,
    platform_running,
    service_doc,
)
from tests.integration.platform.test_eascmd import infer

#: the second crash in a row waits this long; a healthy period of RESET forgets the streak
BACKOFF = 5.0
RESET = 3.0


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("openeas-home")
    home.chmod(0o755)  # as an older version (or a careless umask) left it
    (home / "credentials").write_text(
        '{"access_key_id": "OEASTEST", "access_key_secret": "test-secret-value"}'
    )
    (home / "credentials").chmod(0o644)
    api, http, grpc = free_port(), free_port(), free_port()
    args = [
        f"--api-port={api}",
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        "--cpus=16",
        "--memory=64000",
        f"--restart-backoff={BACKOFF}",
        f"--restart-backoff-reset={RESET}",
        "--log-level=info",
        f"--log-file={home / 'logs' / 'platform.log'}",
        "--log-max-bytes=200000",
        "--log-backups=1",
        "--access-log=sampled",
        "--access-log-sample=2",
    ]
    plat = Platform(home, api, http, grpc, args)
    with platform_running(plat):
        yield plat


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _instance(platform: Platform, name: str) -> dict[str, Any]:
    [inst] = platform.json("instances", name)
    return inst


def _ready(platform: Platform, name: str) -> dict[str, Any] | None:
    inst = _instance(platform, name)
    return inst if inst["ready"] and inst["status"] == "Running" else None


def test_the_state_directory_and_secrets_are_owner_only(platform: Platform) -> None:
    assert _mode(platform.home) == 0o700
    for name in ("platform.db", "platform.db-wal", "credentials"):
        assert _mode(platform.home / name) == 0o600, name
    log = platform.home / "logs" / "platform.log"
    assert "file permissions too open" in log.read_text()
    assert _mode(log) == 0o600 and _mode(log.parent) == 0o700


def test_a_crash_streak_backs_off_and_a_healthy_period_forgets_it(platform: Platform) -> None:
    repo = make_add_sub_repository(platform.home / "repo-backoff")
    platform.ok("create", str(platform.write_spec(service_doc("backoff", repo), "b.json")))
    first = wait_until(lambda: _ready(platform, "backoff"), timeout=60, what="ready")

    def immediate_restarts() -> int:
        events = platform.json("events", "backoff")
        return sum("crash 1 in a row, restart in 0s" in e["message"] for e in events)

    os.kill(first["pid"], signal.SIGKILL)  # crash 1: restarted at once
    second = wait_until(
        lambda: (i := _ready(platform, "backoff")) and i["pid"] != first["pid"] and i,
        timeout=60,
        what="a restart",
    )
    assert immediate_restarts() == 1
    os.kill(second["pid"], signal.SIGKILL)  # crash 2 in a row: the backoff starts
    desc = wait_until(
        lambda: (d := platform.json("desc", "backoff"))["reason"] == "CrashLoopBackOff" and d,
        timeout=30,
        what="the crash in the service's status",
    )
    assert "crash 2 in a row, restart in 5s" in desc["message"]
    third = wait_until(
        lambda: (i := _ready(platform, "backoff")) and i["pid"] != second["pid"] and i,
        timeout=60,
        what="restart after the backoff",
    )
    wait_until(lambda: platform.json("desc", "backoff")["reason"] == "", what="no crash note")
    # The tested healthy period itself, not synchronisation: ready for longer than RESET.
    time.sleep(RESET + 0.5)
    os.kill(third["pid"], signal.SIGKILL)
    # The first kill's crash note, then this one's: the streak starts over.
    wait_until(lambda: immediate_restarts() == 2, timeout=30, what="a forgotten streak")
    wait_until(lambda: _ready(platform, "backoff"), timeout=60, what="ready again")
    platform.ok("delete", "-y", "backoff")


def test_a_service_that_crashes_after_it_was_ready_says_why(platform: Platform) -> None:
    repo = make_add_sub_repository(platform.home / "repo-vanishing")
    platform.ok("create", str(platform.write_spec(service_doc("vanishing", repo), "v.json")))
    inst = wait_until(lambda: _ready(platform, "vanishing"), timeout=60, what="ready")
    shutil.rmtree(repo)  # the model is gone: every restart fails at start-up
    os.kill(inst["pid"], signal.SIGKILL)
    desc = wait_until(
        lambda: (d := platform.json("desc", "vanishing"))["reason"] == "CrashLoopBackOff" and d,
        timeout=60,
        what="the crash loop in the service's status",
    )
    assert desc["status"] == "Scaling"
    assert "exited with status" in desc["message"]
    assert "last log lines:" in desc["message"] and str(repo) in desc["message"]
    events = platform.json("events", "vanishing")
    warned = [e for e in events if e["type"] == "Warning" and "crash 2 in a row" in e["message"]]
    assert warned, events
    platform.ok("delete", "-y", "vanishing")


def test_the_access_log_is_sampled_to_its_own_file_and_probes_stay_out(
    platform: Platform,
) -> None:
    repo = make_add_sub_repository(platform.home / "repo-logs")
    platform.ok("create", str(platform.write_spec(service_doc("logged", repo), "l.json")))
    token = platform.json("desc", "logged")["token"]
    for _ in range(10):
        infer(platform, token, "logged")
    access = platform.home / "logs" / "access.log"
    wait_until(
        lambda: access.exists() and access.read_text().count("service=logged") == 5,
        what="5 of 10 requests in access.log",
    )
    assert _mode(access) == 0o600
    text = (platform.home / "logs" / "platform.log").read_text()
    assert "health/ready" not in text and "service=logged" not in text
    assert "InstanceReady" in text  # the platform's own INFO lines are there
    platform.ok("delete", "-y", "logged")


def test_a_replayed_signed_request_is_refused(platform: Platform) -> None:
    repo = make_add_sub_repository(platform.home / "repo-replay")
    doc = service_doc("replayed", repo, instance=0)
    platform.ok("create", str(platform.write_spec(doc, "r.json")))
    key: AccessKey = load_key(platform.home / "credentials")
    body = b'{"spec": {"metadata": {"instance": 0, "cpu": 2}}, "mode": "merge"}'
    target = "/api/v1/services/replayed"
    headers = {**sign(key, "PUT", target, body), "Content-Type": "application/json"}
    url = f"http://127.0.0.1:{platform.api_port}{target}"
    assert httpx.put(url, content=body, headers=headers).status_code == 200
    replay = httpx.put(url, content=body, headers=headers)
    assert replay.status_code == 401
    assert "replayed" in replay.json()["message"]
    assert platform.json("desc", "replayed")["latest_version"] == 2
    future = sign(key, "PUT", target, body, now=time.time() + 880)
    ahead = httpx.put(url, content=body, headers={**future, "Content-Type": "application/json"})
    assert ahead.status_code == 401 and "ahead of the server's clock" in ahead.json()["message"]
    platform.ok("delete", "-y", "replayed")


def test_processor_flags_that_reach_into_the_platform_are_refused(platform: Platform) -> None:
    repo = make_add_sub_repository(platform.home / "repo-flags")
    doc = service_doc("flags", repo)
    doc["processor_params"].append(f"--log-file={platform.home / 'credentials'}")
    result = platform.eascmd("create", str(platform.write_spec(doc, "f.json")))
    assert result.returncode == 1
    assert "processor_params[3]: --log-file is not allowed" in result.stderr
    doc = service_doc("flags", "oss://triton-model-repo/models/../../secrets")
    result = platform.eascmd("create", str(platform.write_spec(doc, "g.json")))
    assert result.returncode == 1
    assert "processor_params[0]" in result.stderr and "'..'" in result.stderr


def test_instances_answer_only_the_gateway(platform: Platform) -> None:
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    repo = make_add_sub_repository(platform.home / "repo-door")
    platform.ok("create", str(platform.write_spec(service_doc("door", repo), "d.json")))
    token = platform.json("desc", "door")["token"]
    inst = wait_until(lambda: _ready(platform, "door"), timeout=60, what="ready")
    infer(platform, token, "door")  # through the gateway: HTTP
    gateway = grpcclient.InferenceServerClient(f"127.0.0.1:{platform.grpc_port}")
    try:
        data = np.ones((1, 16), dtype=np.float32)
        inputs = [
            grpcclient.InferInput("INPUT0", [1, 16], "FP32"),
            grpcclient.InferInput("INPUT1", [1, 16], "FP32"),
        ]
        for item in inputs:
            item.set_data_from_numpy(data)
        # A client's own instance-token header changes nothing: the gateway's is the one.
        headers = {
            "authorization": token,
            "x-eas-service": "door",
            "x-openeas-instance-token": "forged-" * 5,
        }
        result = gateway.infer("simple", inputs, headers=headers)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data + data)
    finally:
        gateway.close()
    ready = httpx.get(
        f"http://{platform.gateway_url}/api/predict/door/v2/health/ready",
        headers={"Authorization": token, "x-openeas-instance-token": "forged-" * 5},
    )
    assert ready.status_code == 200
    # Straight to the instance, as any local user could: refused on every door.
    direct = f"http://{inst['ip']}:{inst['port']}"
    for path in ("/v2/health/ready", "/v2/models/simple"):
        refused = httpx.get(direct + path)
        assert refused.status_code == 403 and "gateway only" in refused.json()["error"]
    body = b'{"inputs": []}'
    refused = httpx.post(direct + "/v2/models/simple/infer", content=body)
    assert refused.status_code == 403
    wrong = httpx.get(direct + "/v2/health/ready", headers={"x-openeas-instance-token": "x" * 32})
    assert wrong.status_code == 403
    unix = httpx.HTTPTransport(uds="\0openeas-" + inst["name"])
    with httpx.Client(transport=unix) as client:
        assert client.get("http://instance/v2/health/ready").status_code == 403
    client = grpcclient.InferenceServerClient(f"{inst['ip']}:{inst['grpc_port']}")
    try:
        with pytest.raises(InferenceServerException, match="gateway only"):
            client.is_server_ready()
    finally:
        client.close()
    # The internal token is nowhere an API or the metrics page shows.
    with sqlite3.connect(platform.home / "platform.db") as conn:
        [(secret,)] = conn.execute("SELECT internal_token FROM instances WHERE service = 'door'")
    assert len(secret) >= 32
    metrics = httpx.get(f"http://127.0.0.1:{platform.api_port}/metrics").text
    assert secret not in metrics
    assert secret not in platform.ok("instances", "door", "--json")
    assert secret not in platform.ok("desc", "door", "--json")
    platform.ok("delete", "-y", "door")


def test_a_half_written_update_is_repaired_at_start_up(platform: Platform) -> None:
    """What a kill between the two statements of the old add_version left: a version row
    past latest_version, which made every later modify fail with an IntegrityError."""
    repo = make_add_sub_repository(platform.home / "repo-repair")
    platform.ok("create", str(platform.write_spec(service_doc("repaired", repo, instance=0))))
    assert platform.eascmd_platform("down").returncode == 0
    assert platform.process is not None and platform.process.wait(60) == 0
    with sqlite3.connect(platform.home / "platform.db") as conn:
        conn.execute("INSERT INTO versions VALUES ('repaired', 2, '{}', 0)")
    platform.start()
    platform.ok("modify", "repaired", "-D", "metadata.cpu=2")
    assert platform.json("desc", "repaired")["latest_version"] == 2
    log = (platform.home / "logs" / "platform.log").read_text()
    assert "platform.db repaired: service 'repaired': dropped unfinished version(s) [2]" in log
    platform.ok("delete", "-y", "repaired")
