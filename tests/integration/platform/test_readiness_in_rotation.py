"""A failed repository-API load through the gateway leaves the instance in rotation.

The reconciler takes an instance whose ``/v2/health/ready`` fails out of the gateway's
routes; a load of a name that is not in the repository must not make it not ready.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.integration.platform.conftest import Platform, make_add_sub_repository, service_doc
from tests.integration.platform.test_eascmd import infer

NAME = "explicit_mode"
#: how long the instance is watched after the failed load: many reconciler ticks (0.2 s)
WATCH_SECONDS = 3.0


def test_a_failed_load_keeps_the_instance_in_rotation(platform: Platform, tmp_path: Path) -> None:
    repo = make_add_sub_repository(tmp_path / "repo")
    doc = service_doc(NAME, repo)
    doc["processor_params"] += ["--model-control-mode=explicit", "--load-model=simple"]
    out = platform.ok("create", str(platform.write_spec(doc, f"{NAME}.json")))
    assert out.splitlines()[-1] == "[OK] Service is running"
    token = platform.json("desc", NAME)["token"]
    infer(platform, token, NAME)

    response = httpx.post(
        f"http://{platform.gateway_url}/api/predict/{NAME}/v2/repository/models/no_such/load",
        headers={"Authorization": token},
        timeout=30,
    )
    assert response.status_code >= 400 and "no_such" in response.json()["error"]

    # Not ready would show within one tick: the instance leaves the routes, requests fail.
    deadline = time.monotonic() + WATCH_SECONDS
    while time.monotonic() < deadline:
        infer(platform, token, NAME)
    [instance] = platform.json("instances", NAME)
    assert instance["ready"] and instance["status"] == "Running", instance
    reasons = [event["reason"] for event in platform.json("events", NAME)]
    assert "InstanceNotReady" not in reasons, reasons
    platform.ok("delete", "-y", NAME)
