"""The user's journey through ``eascmd`` against a real platform, gateway and instances."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import wait_until
from tests.integration.platform.conftest import Platform, make_add_sub_repository, service_doc

NAME = "test_triton_processor"


@pytest.fixture(scope="module")
def repo(platform: Platform) -> Path:
    return make_add_sub_repository(platform.home / "repo")


@pytest.fixture(scope="module")
def service(platform: Platform, repo: Path) -> dict[str, str]:
    """The document's service, created once; its ``create`` output and table values."""
    out = platform.ok("create", str(platform.write_spec(service_doc(NAME, repo))))
    table = dict(re.findall(r"^\|\s+([A-Za-z ]+?) \| (\S+)\s+\|$", out, re.MULTILINE))
    return {"output": out, **table}


def infer(platform: Platform, token: str | None, name: str = NAME) -> None:
    """One add/sub request through the gateway; checks the sums."""
    client = httpclient.InferenceServerClient(f"{platform.gateway_url}/api/predict/{name}")
    try:
        a = np.arange(16, dtype=np.float32).reshape(1, 16)
        b = np.ones((1, 16), dtype=np.float32)
        inputs = [
            httpclient.InferInput("INPUT0", [1, 16], "FP32"),
            httpclient.InferInput("INPUT1", [1, 16], "FP32"),
        ]
        inputs[0].set_data_from_numpy(a, binary_data=True)
        inputs[1].set_data_from_numpy(b, binary_data=True)
        headers = {"Authorization": token} if token is not None else None
        result = client.infer("simple", inputs, headers=headers)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    finally:
        client.close()


class Load:
    """Requests through the gateway in a background thread; counts successes/failures."""

    def __init__(self, platform: Platform, token: str, name: str = NAME) -> None:
        self.platform, self.token, self.name = platform, token, name
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                infer(self.platform, self.token, self.name)
                self.ok += 1
            except Exception as exc:  # every failure is reported by the test
                self.failures.append(repr(exc))

    def __enter__(self) -> Load:
        self._thread.start()
        wait_until(lambda: self.ok > 0 or self.failures, what="first request under load")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def instances(platform: Platform, name: str = NAME) -> list[dict[str, Any]]:
    return platform.json("instances", name)


def running(platform: Platform, name: str = NAME) -> list[dict[str, Any]]:
    return [i for i in instances(platform, name) if i["status"] == "Running" and i["ready"]]


# -- create, desc, list -------------------------------------------------------------


def test_create_prints_endpoints_token_and_progress(
    platform: Platform, service: dict[str, str]
) -> None:
    assert (
        service["Internet Endpoint"] == f"http://127.0.0.1:{platform.http_port}/api/predict/{NAME}"
    )
    assert service["Intranet Endpoint"].endswith(f":{platform.http_port}/api/predict/{NAME}")
    assert len(service["Token"]) >= 32
    lines = [line for line in service["output"].splitlines() if line.startswith("[")]
    assert lines[0] == "[OK] Service is now deploying"
    assert lines[1] == "[OK] Successfully synchronized resources"
    assert "[OK] Waiting [Total: 1, Pending: 1, Running: 0]" in lines
    assert lines[-2] == "[OK] Running [Total: 1, Pending: 0, Running: 1]"
    assert lines[-1] == "[OK] Service is running"


def test_the_printed_endpoint_answers_tritonclient_with_the_token(
    platform: Platform, service: dict[str, str]
) -> None:
    infer(platform, service["Token"])
    with pytest.raises(InferenceServerException) as info:
        infer(platform, "wrong-token-0123456789")
    assert "401" in str(info.value) or "token" in str(info.value).lower()


def test_desc_and_list(platform: Platform, service: dict[str, str]) -> None:
    desc = platform.json("desc", NAME)
    assert desc["status"] == "Running"
    assert desc["token"] == service["Token"]
    assert desc["instances"] == {"total": 1, "pending": 0, "running": 1}
    assert (desc["cpu"], desc["memory"], desc["gpu"], desc["resource"]) == (1, 2000, 0, "default")
    assert desc["current_version"] == desc["latest_version"] >= 1
    assert desc["create_time"] and desc["update_time"]
    table = platform.ok("desc", NAME)
    assert re.search(r"\|\s+Status \| Running\s+\|", table)
    listed = platform.json("list")
    assert NAME in [s["name"] for s in listed]
    assert NAME in platform.ok("list")


def test_instances_events_and_logs(platform: Platform, service: dict[str, str]) -> None:
    [inst] = running(platform)
    assert inst["ip"] == "127.0.0.1" and inst["port"] > 0 and inst["restarts"] == 0
    assert inst["started"]
    reasons = [e["reason"] for e in platform.json("events", NAME)]
    assert "ServiceCreated" in reasons and "InstanceReady" in reasons
    tail = platform.ok("logs", NAME, "--tail", "3")
    assert 0 < len(tail.splitlines()) <= 3
    full = platform.ok("logs", NAME, "--instance", inst["name"])
    assert full.endswith(tail)
    bad = platform.eascmd("logs", NAME, "--instance", "nope")
    assert bad.returncode != 0 and "no instance 'nope'" in bad.stderr


def test_logs_follow_prints_new_lines(platform: Platform, service: dict[str, str]) -> None:
    import subprocess
    import sys

    out = platform.home / "follow.txt"
    with open(out, "wb") as sink:
        follower = subprocess.Popen(
            [sys.executable, "-m", "openeas.cli.eascmd", "logs", NAME, "--tail", "0", "-f"],
            env=platform.env,
            stdout=sink,
        )
    try:
        [inst] = running(platform)
        log = platform.home / "logs" / "instances" / NAME / f"{inst['name']}.log"

        def followed() -> bool:
            # Appended until seen: the follower may not have read its start offset yet.
            with open(log, "a") as handle:  # as if the instance wrote it
                handle.write("follow-marker-line\n")
            return "follow-marker-line" in out.read_text()

        wait_until(followed, timeout=30, interval=0.3, what="followed line")
        assert out.read_text().strip().splitlines()[-1] == "follow-marker-line"
    finally:
        follower.terminate()
        follower.wait(30)


# -- bad requests -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"unknown": 1}, "unknown: unknown field"),
        ({"name": "Bad"}, "name: must start with a lower-case letter"),
        (
            {"processor_params": ["--model-repository=/x", "--nope=1"]},
            "unrecognized arguments: --nope=1",
        ),
        (  # what the processor would exit on at start-up, with its message (issue 19)
            {"processor_params": ["--model-repository=/x", "--load-model=m"]},
            "processor_params[1]: --load-model requires --model-control-mode=explicit",
        ),
        (
            {"processor_params": ["--model-repository=/x", "--cache-config=redis"]},
            "processor_params[1]: argument --cache-config: invalid value 'redis', expected "
            "local,size=<bytes>",
        ),
        ({"metadata": {"instance": -1}}, "metadata.instance"),
        (
            {"metadata": {"resource": "eas-r-nothere"}},
            "resource group 'eas-r-nothere' does not exist",
        ),
    ],
)
def test_bad_specs_fail_with_the_field_and_reason(
    platform: Platform, repo: Path, change: dict[str, Any], expected: str
) -> None:
    doc = service_doc("bad_service", repo)
    for key, value in change.items():
        if key == "metadata":
            doc["metadata"].update(value)
        else:
            doc[key] = value
    result = platform.eascmd("create", str(platform.write_spec(doc, "bad.json")))
    assert result.returncode == 1
    assert "[FAILED] invalid service spec" in result.stderr
    assert expected in result.stderr
    assert "bad_service" not in [s["name"] for s in platform.json("list")]


def test_not_json_and_duplicates_and_unknown_services(
    platform: Platform, service: dict[str, str], repo: Path
) -> None:
    path = platform.home / "broken.json"
    path.write_text("{ not json")
    result = platform.eascmd("create", str(path))
    assert result.returncode == 1 and "not valid JSON" in result.stderr
    dup = platform.eascmd("create", str(platform.write_spec(service_doc(NAME, repo), "dup.json")))
    assert dup.returncode == 1 and "already exists" in dup.stderr
    for args in (["desc", "nosuch"], ["stop", "nosuch"], ["switch", NAME, "99"]):
        missing = platform.eascmd(*args)
        assert missing.returncode == 1, args
        assert "not found" in missing.stderr or "no version 99" in missing.stderr


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ({"cpu": 64}, "insufficient cpu"),
        ({"gpu": 1}, "insufficient gpu"),
        ({"memory": 10**6}, "insufficient memory"),
    ],
)
def test_a_service_that_does_not_fit_waits_with_the_reason(
    platform: Platform, repo: Path, metadata: dict[str, int], reason: str
) -> None:
    name = "too_big"
    platform.ok(
        "create",
        "--no-wait",
        str(platform.write_spec(service_doc(name, repo, **metadata), "big.json")),
    )
    try:
        desc = wait_until(
            lambda: (
                (d := platform.json("desc", name))["status"] == "Waiting" and d["message"] and d
            ),
            what="Waiting with a reason",
        )
        assert desc["reason"] == "InsufficientResources"
        assert reason in desc["message"]
        assert instances(platform, name) == []
    finally:
        platform.ok("delete", "-y", name)
    assert name not in [s["name"] for s in platform.json("list")]


# -- scaling, updates, versions -----------------------------------------------------


def test_scale_to_three_and_back_under_load_without_failed_requests(
    platform: Platform, service: dict[str, str]
) -> None:
    with Load(platform, service["Token"]) as load:
        out = platform.ok("modify", NAME, "-Dmetadata.instance=3")
        assert out.splitlines()[-1] == "[OK] Service is running"
        assert len(running(platform)) == 3
        before = load.ok
        wait_until(lambda: load.ok > before + 10, what="traffic to the scaled service")
        platform.ok("modify", NAME, "-D", "metadata.instance=1")
        wait_until(lambda: len(instances(platform)) == 1, timeout=60, what="scale down to 1")
        after = load.ok
        wait_until(lambda: load.ok > after + 10, what="traffic after scaling down")
    assert load.failures == []
    desc = platform.json("desc", NAME)
    assert desc["status"] == "Running" and desc["instances"]["total"] == 1


def test_update_with_a_file_rolls_and_switch_rolls_back(
    platform: Platform, service: dict[str, str], repo: Path
) -> None:
    [old] = running(platform)
    patch = platform.home / "patch.json"
    patch.write_text(
        json.dumps({"processor_params": [f"--model-repository={repo}", "--log-verbose=1"]})
    )
    with Load(platform, service["Token"]) as load:
        platform.ok("modify", NAME, "-s", str(patch))
        wait_until(
            lambda: (
                [i["name"] for i in instances(platform)] != [old["name"]]
                and len(instances(platform)) == 1
            ),
            timeout=60,
            what="old instance drained",
        )
        [new] = running(platform)
        assert new["pid"] != old["pid"]
        versions = platform.json("version", NAME)
        current = [v for v in versions if v["current"]]
        assert current[0]["spec"]["processor_params"][-1] == "--log-verbose=1"
        assert new["version"] == current[0]["version"]
        platform.ok("switch", NAME, "1")
        wait_until(
            lambda: [i["version"] for i in instances(platform)] == [1],
            timeout=60,
            what="switched back to version 1",
        )
    assert load.failures == []
    assert platform.json("desc", NAME)["current_version"] == 1
    assert "Version" in platform.ok("version", NAME)


def test_an_update_in_a_full_group_replaces_one_instance_at_a_time(
    platform: Platform, service: dict[str, str], repo: Path
) -> None:
    name = "full_group"
    free = 16 - platform.json("desc", NAME)["cpu"]
    cpu = free // 2  # two instances fill the group: no room for a third
    doc = service_doc(name, repo, instance=2, cpu=cpu)
    platform.ok("create", str(platform.write_spec(doc, "full.json")))
    token = platform.json("desc", name)["token"]
    try:
        old = {i["name"] for i in instances(platform, name)}
        patch = platform.home / "full-patch.json"
        patch.write_text(
            json.dumps({"processor_params": [f"--model-repository={repo}", "--log-verbose=1"]})
        )
        failures: list[str] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    infer(platform, token, name)
                except Exception as exc:
                    failures.append(repr(exc))

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        try:
            out = platform.ok("modify", name, "-s", str(patch))
            assert out.splitlines()[-1] == "[OK] Service is running"
            wait_until(
                lambda: (
                    {i["name"] for i in instances(platform, name)}.isdisjoint(old)
                    and len(running(platform, name)) == 2
                ),
                timeout=90,
                what="both instances replaced",
            )
        finally:
            stop.set()
            thread.join(60)
        assert failures == []
        reasons = [e["reason"] for e in platform.json("events", name)]
        assert "UpdateWithoutSurge" in reasons
    finally:
        platform.ok("delete", "-y", name)


# -- faults ---------------------------------------------------------------------------


def test_a_killed_instance_is_restarted(platform: Platform, service: dict[str, str]) -> None:
    import os
    import signal

    [inst] = running(platform)
    os.kill(inst["pid"], signal.SIGKILL)
    again = wait_until(
        lambda: (r := running(platform)) and r[0]["restarts"] == inst["restarts"] + 1 and r[0],
        timeout=60,
        what="restart after kill -9",
    )
    assert again["pid"] != inst["pid"] and again["name"] == inst["name"]
    assert "killed by signal SIGKILL" in again["reason"]
    wait_until(lambda: platform.json("desc", NAME)["status"] == "Running", what="Running again")
    infer(platform, service["Token"])


def test_crash_loop_at_start_up_fails_with_the_log_tail(platform: Platform) -> None:
    bad_repo = platform.home / "bad-repo"
    (bad_repo / "broken").mkdir(parents=True)
    (bad_repo / "broken" / "config.pbtxt").write_text(
        'name: "broken"\nbackend: "no_such_backend"\n'
    )
    result = platform.eascmd(
        "create", str(platform.write_spec(service_doc("crashing", bad_repo), "crash.json"))
    )
    try:
        assert result.returncode == 1
        assert "[FAILED] InstanceCrashLoop" in result.stderr
        assert "no_such_backend" in result.stderr  # from the instance's log
        desc = platform.json("desc", "crashing")
        assert desc["status"] == "Failed"
        [inst] = instances(platform, "crashing")
        assert inst["status"] == "Failed" and inst["restarts"] >= 3
    finally:
        platform.ok("delete", "-y", "crashing")


def test_memory_over_the_limit_is_reported_as_oom_killed(platform: Platform, repo: Path) -> None:
    result = platform.eascmd(
        "create", str(platform.write_spec(service_doc("hungry", repo, memory=64), "oom.json"))
    )
    try:
        assert result.returncode == 1
        assert "OOMKilled" in result.stderr
        reasons = [e["reason"] for e in platform.json("events", "hungry")]
        assert "InstanceOOMKilled" in reasons
    finally:
        platform.ok("delete", "-y", "hungry")


def test_missing_repository_fails_the_service(platform: Platform) -> None:
    result = platform.eascmd(
        "create",
        str(platform.write_spec(service_doc("norepo", platform.home / "nope"), "norepo.json")),
    )
    try:
        assert result.returncode == 1
        assert "[FAILED] SyncFailed" in result.stderr and "does not exist" in result.stderr
    finally:
        platform.ok("delete", "-y", "norepo")


# -- the API itself ---------------------------------------------------------------------


def test_api_requires_a_signature_and_serves_openapi_and_metrics(
    platform: Platform, service: dict[str, str]
) -> None:
    import httpx

    base = f"http://127.0.0.1:{platform.api_port}"
    unsigned = httpx.get(f"{base}/api/v1/services")
    assert unsigned.status_code == 401
    assert unsigned.json()["code"] == "Unauthorized"
    forged = httpx.get(
        f"{base}/api/v1/services",
        headers={"Authorization": "OEAS-HMAC-SHA256 nobody:00", "X-OpenEAS-Date": "0"},
    )
    assert forged.status_code == 401 and "unknown access key" in forged.json()["message"]
    paths = httpx.get(f"{base}/openapi.json").json()["paths"]
    assert "/api/v1/services" in paths and "/api/v1/services/{name}/switch" in paths
    infer(platform, service["Token"])
    metrics = httpx.get(f"{base}/metrics").text
    assert NAME in metrics  # the gateway's per-service metrics
    assert 'openeas_platform_services{status="Running"}' in metrics
    assert f'openeas_platform_instances{{service="{NAME}",status="Running"}} 1.0' in metrics


def test_explicit_config_from_another_home(platform: Platform, tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {**platform.env, "OPENEAS_HOME": str(tmp_path)}

    def eascmd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "openeas.cli.main", "eas", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    missing = eascmd("list")
    assert missing.returncode == 1 and "no credentials" in missing.stderr
    creds = json.loads((platform.home / "credentials").read_text())
    endpoint = f"http://127.0.0.1:{platform.api_port}"
    assert (
        eascmd(
            "config", "-i", creds["access_key_id"], "-k", "wrong-secret", "-e", endpoint
        ).returncode
        == 0
    )
    wrong = eascmd("list")
    assert wrong.returncode == 1 and "signature does not match" in wrong.stderr
    assert (
        eascmd(
            "config", "-i", creds["access_key_id"], "-k", creds["access_key_secret"], "-e", endpoint
        ).returncode
        == 0
    )
    listed = eascmd("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert NAME in [s["name"] for s in json.loads(listed.stdout)]


# -- stop, start, delete ----------------------------------------------------------------


def test_stop_start_and_delete(platform: Platform, service: dict[str, str]) -> None:
    out = platform.ok("stop", NAME)
    assert out.splitlines()[-1] == "[OK] Service is stopped"
    assert instances(platform) == []
    with pytest.raises(InferenceServerException):
        infer(platform, service["Token"])
    assert platform.ok("start", NAME).splitlines()[-1] == "[OK] Service is running"
    infer(platform, service["Token"])
    pids = [i["pid"] for i in instances(platform)]
    refused = platform.eascmd("delete", NAME, input="n\n")
    assert refused.returncode == 1 and NAME in platform.ok("list")
    assert platform.ok("delete", "-y", NAME).splitlines()[-1] == "[OK] Service is deleted"
    assert NAME not in [s["name"] for s in platform.json("list")]
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        )
