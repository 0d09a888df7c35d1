"""``autoscaler`` and ``cronscaler`` through ``eascmd`` and the API, against a real platform
and real instances: create with both, ``autoscale -D/-s/--off/rm``, ``cronscale -s/--off/rm``,
``desc``, bad input refused with the field and nothing changed, and no instance restarted
by an elasticity change (the same pid).  Applying decisions is the controller's (not here)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from openeas.platform.auth import load_key, sign
from tests.integration.conftest import wait_until
from tests.integration.platform.conftest import Platform, make_add_sub_repository, service_doc

NAME = "elastic_svc"
AUTOSCALER: dict[str, Any] = {
    "min": 1,
    "max": 8,
    "scaleStrategies": [
        {"metricName": "qps", "threshold": 100},
        {"metricName": "cpu", "threshold": 80},
    ],
    "behavior": {
        "scaleUp": {"stabilizationWindowSeconds": 0},
        "scaleDown": {"stabilizationWindowSeconds": 300},
        "onZero": {"scaleDownGracePeriodSeconds": 600, "scaleUpActivationReplicas": 1},
    },
}
CRONSCALER: dict[str, Any] = {
    "ExcludeDates": ["* * * * * 6,0"],
    "ScaleJobs": [
        {"Name": "morning", "Schedule": "0 0 8 * * *", "TargetSize": 4, "TimeZone": "Asia/Shanghai"}
    ],
}


@pytest.fixture(scope="module")
def repo(platform: Platform) -> Path:
    return make_add_sub_repository(platform.home / "repo")


@pytest.fixture(scope="module")
def created(platform: Platform, repo: Path) -> dict[str, Any]:
    doc = {**service_doc(NAME, repo), "autoscaler": AUTOSCALER, "cronscaler": CRONSCALER}
    out = platform.ok("create", str(platform.write_spec(doc, "elastic.json")))
    assert out.splitlines()[-1] == "[OK] Service is running"
    return platform.json("desc", NAME)


def desc(platform: Platform) -> dict[str, Any]:
    return platform.json("desc", NAME)


def pids(platform: Platform) -> list[int]:
    return sorted(i["pid"] for i in platform.json("instances", NAME))


def fails(platform: Platform, *args: str) -> str:
    """Run eascmd expecting exit 1; its stderr."""
    result = platform.eascmd(*args)
    assert result.returncode == 1, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stderr


def test_create_with_both_documents_shows_them_as_written(
    platform: Platform, created: dict[str, Any]
) -> None:
    assert created["autoscaler"] == AUTOSCALER and created["cronscaler"] == CRONSCALER
    assert created["replicas"] == 1 and created["instances"]["total"] == 1
    assert created["cron_set_time"]
    table = platform.ok("desc", NAME)
    row = re.search(r"\|\s+Autoscaler \| (.+?)\s+\|$", table, re.MULTILINE)
    assert row is not None and json.loads(row.group(1)) == AUTOSCALER
    row = re.search(r"\|\s+CronScaler \| (.+?)\s+\|$", table, re.MULTILINE)
    assert row is not None and json.loads(row.group(1)) == CRONSCALER
    assert re.search(r"\|\s+TotalInstance \| 1\s+\|", table)


def test_autoscale_d_edits_the_current_autoscaler_without_a_restart(
    platform: Platform, created: dict[str, Any]
) -> None:
    before, version = pids(platform), desc(platform)["current_version"]
    out = platform.ok(
        "autoscale",
        NAME,
        "-Dmin=2",
        "-Dmax=6",
        "-Dstrategies.qps=50",
        "-Dbehavior.scaleDown.stabilizationWindowSeconds=30",
    )
    assert out.strip() == f"[OK] Service {NAME}: autoscaler set (version {version + 1})"
    scaler = desc(platform)["autoscaler"]
    assert (scaler["min"], scaler["max"]) == (2, 6)
    assert scaler["scaleStrategies"] == [
        {"metricName": "cpu", "threshold": 80},  # kept from the current autoscaler
        {"metricName": "qps", "threshold": 50},
    ]
    assert scaler["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 30
    assert scaler["behavior"]["onZero"]["scaleDownGracePeriodSeconds"] == 600
    # The new min raises the count to 2 at the controller's next decision; the first
    # instance goes on as the same process.
    wait_until(
        lambda: desc(platform)["status"] == "Running"
        and desc(platform)["instances"]["running"] == 2,
        timeout=120,
    )
    assert set(before) <= set(pids(platform))  # the same process: not restarted
    assert [i["version"] for i in platform.json("instances", NAME)] == [version + 1] * 2
    reasons = [e["reason"] for e in platform.json("events", NAME)]
    assert "AutoscalerSet" in reasons and "AutoscalerScaleUp" in reasons


def test_autoscale_s_sets_the_older_form_as_written(
    platform: Platform, created: dict[str, Any]
) -> None:
    before = pids(platform)
    legacy = {"Min": 1, "Max": 3, "Strategies": {"qps": 20}}
    platform.ok("autoscale", NAME, "-s", str(platform.write_spec(legacy, "legacy.json")))
    assert desc(platform)["autoscaler"] == legacy
    # -D on top of an older-form autoscaler: the result is the current form
    platform.ok("autoscale", NAME, "-Dmax=4")
    scaler = desc(platform)["autoscaler"]
    assert (scaler["min"], scaler["max"]) == (1, 4)
    assert scaler["scaleStrategies"] == [{"metricName": "qps", "threshold": 20}]
    assert pids(platform) == before


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-Dmin=5", "-Dmax=2"], "autoscaler.min: must be <= max (2), got 5"),
        (["-Dstrategies.gpu=1"], "autoscaler.strategies.gpu: unsupported metric 'gpu'"),
        (["-Dnope=1"], "autoscaler.nope: unknown key"),
        (
            ["-Dbehavior.scaleDown.stabilizationWindowSeconds=-5"],
            "autoscaler.behavior.scaleDown.stabilizationWindowSeconds: must be between 0 and "
            "3600, got -5",
        ),
    ],
)
def test_bad_d_values_fail_naming_the_field_and_change_nothing(
    platform: Platform, created: dict[str, Any], args: list[str], expected: str
) -> None:
    before = desc(platform)
    stderr = fails(platform, "autoscale", NAME, *args)
    assert expected in stderr
    after = desc(platform)
    assert after["autoscaler"] == before["autoscaler"]
    assert after["current_version"] == before["current_version"]


def test_bad_files_fail_with_every_field_and_change_nothing(
    platform: Platform, created: dict[str, Any]
) -> None:
    before = desc(platform)
    bad_scaler = {"min": 3, "max": 2, "scaleStrategies": [{"metricName": "gpu", "threshold": 1}]}
    stderr = fails(
        platform, "autoscale", NAME, "-s", str(platform.write_spec(bad_scaler, "bad-as.json"))
    )
    assert "autoscaler.min: must be <= max (2), got 3" in stderr
    assert "autoscaler.scaleStrategies[0].metricName: unsupported metric 'gpu'" in stderr
    mixed = {"min": 1, "Max": 2, "Strategies": {"qps": 1}}
    stderr = fails(platform, "autoscale", NAME, "-s", str(platform.write_spec(mixed, "mix.json")))
    assert "autoscaler: mixes the current form" in stderr
    bad_cron = {"ScaleJobs": [{"Schedule": "0 8 * * *", "TargetSize": 2, "TimeZone": "Mars/X"}]}
    stderr = fails(
        platform, "cronscale", NAME, "-s", str(platform.write_spec(bad_cron, "bad-cron.json"))
    )
    assert "cronscaler.ScaleJobs[0].Schedule: must have 6 fields" in stderr
    assert "cronscaler.ScaleJobs[0].TimeZone: unknown time zone 'Mars/X'" in stderr
    not_json = platform.home / "broken.json"
    not_json.write_text("{ nope")
    assert "not valid JSON" in fails(platform, "cronscale", NAME, "-s", str(not_json))
    after = desc(platform)
    assert (after["autoscaler"], after["cronscaler"]) == (
        before["autoscaler"],
        before["cronscaler"],
    )
    assert after["current_version"] == before["current_version"]


def test_create_with_a_bad_autoscaler_fails_and_creates_nothing(
    platform: Platform, repo: Path
) -> None:
    doc = {**service_doc("bad_elastic", repo), "autoscaler": {"min": 1, "max": 0}}
    stderr = fails(platform, "create", str(platform.write_spec(doc, "bad-create.json")))
    assert "autoscaler.max: must be between 1 and 100, got 0" in stderr
    assert "autoscaler.scaleStrategies: required field is missing" in stderr
    assert "bad_elastic" not in [s["name"] for s in platform.json("list")]


def test_a_manual_count_with_an_autoscaler_on_sets_the_current_count(
    platform: Platform, created: dict[str, Any]
) -> None:
    platform.ok("modify", NAME, "-Dmetadata.instance=2")
    view = desc(platform)
    assert view["replicas"] == 2 and view["instances"] == {"total": 2, "running": 2, "pending": 0}
    assert view["autoscaler"] is not None
    platform.ok("modify", NAME, "-Dmetadata.instance=1")
    assert desc(platform)["replicas"] == 1


def test_cronscale_s_and_off(platform: Platform, created: dict[str, Any]) -> None:
    before = pids(platform)
    cron = {"ScaleJobs": [{"Schedule": "0 30 20 * * *", "TargetSize": 2}]}
    out = platform.ok("cronscale", NAME, "-s", str(platform.write_spec(cron, "cron.json")))
    assert out.startswith(f"[OK] Service {NAME}: cronscaler set")
    view = desc(platform)
    assert view["cronscaler"] == cron and view["cron_set_time"]
    assert platform.ok("cronscale", NAME, "--off").strip() == (
        f"[OK] Service {NAME}: cronscaler is off"
    )
    assert desc(platform)["cronscaler"] is None and desc(platform)["cron_set_time"] is None
    platform.ok("cronscale", NAME, "-s", str(platform.write_spec(cron, "cron.json")))
    platform.ok("cronscale", "rm", NAME)  # EAS's spelling
    assert desc(platform)["cronscaler"] is None
    assert pids(platform) == before


def test_autoscale_off_and_rm_keep_the_count(platform: Platform, created: dict[str, Any]) -> None:
    before = pids(platform)
    platform.ok("autoscale", NAME, "-Dmin=1", "-Dmax=3", "-Dstrategies.qps=10")
    assert platform.ok("autoscale", NAME, "--off").strip() == (
        f"[OK] Service {NAME}: autoscaler is off"
    )
    view = desc(platform)
    assert view["autoscaler"] is None and view["replicas"] == 1
    assert "Autoscaler" not in platform.ok("desc", NAME)
    # from nothing, -D needs min, max and a strategy
    stderr = fails(platform, "autoscale", NAME, "-Dmin=1")
    assert "autoscaler.max: required field is missing" in stderr
    platform.ok("autoscale", NAME, "-Dmin=1", "-Dmax=2", "-Dstrategies.cpu=70")
    platform.ok("autoscale", "rm", NAME)
    assert desc(platform)["autoscaler"] is None
    assert pids(platform) == before


def test_usage_errors(platform: Platform, created: dict[str, Any]) -> None:
    assert "nothing to change" in fails(platform, "autoscale", NAME)
    assert "--off (rm) takes no -s or -D" in fails(platform, "autoscale", NAME, "--off", "-Dmin=1")
    assert "expected NAME or rm NAME" in fails(platform, "cronscale", "a", "b")
    assert "not found" in fails(platform, "autoscale", "nosuch", "-Dmin=1")
    help_text = platform.ok("autoscale", "--help")
    assert "-Dstrategies.qps=100" in help_text and "autoscale rm NAME" in help_text
    assert "cronscale rm NAME" in platform.ok("cronscale", "--help")


def test_the_api_endpoints(platform: Platform, created: dict[str, Any]) -> None:
    key = load_key(platform.home / "credentials")
    base = f"http://127.0.0.1:{platform.api_port}"

    def call(method: str, path: str, body: bytes = b"") -> httpx.Response:
        headers = sign(key, method, path, body)
        return httpx.request(method, base + path, content=body, headers=headers, timeout=30)

    path = f"/api/v1/services/{NAME}/autoscaler"
    platform.ok("autoscale", NAME, "--off")
    missing = call("GET", path)
    assert missing.status_code == 404 and "has no autoscaler" in missing.json()["message"]
    bad = call("PUT", path, b"[1]")
    assert bad.status_code == 400
    assert bad.json()["errors"] == [
        {"field": "autoscaler", "reason": "must be a JSON object, got an array"}
    ]
    assert call("PUT", path, b"{ nope").status_code == 400
    put = call("PUT", path, json.dumps(AUTOSCALER).encode())
    assert put.status_code == 200 and put.json()["autoscaler"] == AUTOSCALER
    assert call("GET", path).json() == AUTOSCALER
    cron_path = f"/api/v1/services/{NAME}/cronscaler"
    assert call("PUT", cron_path, json.dumps(CRONSCALER).encode()).status_code == 200
    assert call("GET", cron_path).json() == CRONSCALER
    gone = call("DELETE", cron_path)
    assert gone.status_code == 200 and gone.json()["cronscaler"] is None
    assert call("DELETE", "/api/v1/services/nosuch/autoscaler").status_code == 404
