"""Elasticity end to end: a real platform, real instances, real load through the gateway.

The autoscaler scales a service up under a load step and back down after it with no
failed request; a cron job fires at its second; a ``min: 0`` service scales to zero and
a request that arrives then is held by the gateway while one activation starts an
instance, and is then served.  Windows are set short; everything is polled with a
deadline.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from openeas.testing.onnx_models import add_sub_inputs
from tests.integration.conftest import wait_until
from tests.integration.platform.conftest import Platform, make_add_sub_repository, service_doc


class PacedLoad:
    """About ``rate`` requests per second through the gateway from ``threads`` clients,
    counting answers and failures until stopped."""

    def __init__(self, platform: Platform, name: str, token: str, rate: float, threads: int = 4):
        self.url = f"{platform.gateway_url}/api/predict/{name}"
        self.headers = {"Authorization": token}
        self.threads = threads
        self.rate = rate
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        client = httpclient.InferenceServerClient(self.url, network_timeout=60)
        inputs = add_sub_inputs(httpclient)
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                result = client.infer("simple", inputs, headers=self.headers)
                assert result.as_numpy("OUTPUT0") is not None
                self.ok += 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                self.failures.append(repr(exc))
            next_at += self.threads / self.rate  # the test may change the rate
            self._stop.wait(max(0.0, next_at - time.monotonic()))
        client.close()

    def __enter__(self) -> PacedLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)


def _create(platform: Platform, name: str, **extra: Any) -> str:
    repo = make_add_sub_repository(platform.home / f"repo-{name}")
    doc = {**service_doc(name, repo, **extra.pop("metadata", {})), **extra}
    platform.ok("create", str(platform.write_spec(doc, f"{name}.json")))
    return str(platform.json("desc", name)["token"])


def _desc(platform: Platform, name: str) -> dict[str, Any]:
    return dict(platform.json("desc", name))


def _replicas(platform: Platform, name: str) -> int:
    return int(_desc(platform, name)["replicas"])


def _live_instances(platform: Platform, name: str) -> list[dict[str, Any]]:
    return [i for i in platform.json("instances", name) if i["status"] != "Terminating"]


def _running_with(platform: Platform, name: str, count: int) -> bool:
    desc = _desc(platform, name)
    return (
        desc["status"] == "Running"
        and desc["replicas"] == count
        and desc["instances"]["running"] == count
        and len(platform.json("instances", name)) == count
    )


def _events(platform: Platform, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in platform.json("events", name) if e["reason"] == reason]


def test_load_step_scales_up_and_back_down_without_failures(platform: Platform) -> None:
    name = "elastic_step"
    autoscaler = {
        "min": 1,
        "max": 3,
        "scaleStrategies": [{"metricName": "qps", "threshold": 10}],
        "behavior": {
            "scaleUp": {"stabilizationWindowSeconds": 0},
            "scaleDown": {"stabilizationWindowSeconds": 3},
        },
    }
    token = _create(platform, name, autoscaler=autoscaler)
    wait_until(lambda: _running_with(platform, name, 1), timeout=120)

    with PacedLoad(platform, name, token, rate=25) as load:
        # 25 qps on one instance, threshold 10: ceil(1 * 25 / 10) = 3.
        wait_until(lambda: _running_with(platform, name, 3), timeout=120)
        up = _events(platform, name, "AutoscalerScaleUp")
        assert up and "qps" in up[0]["message"], up
        # The load falls to 8 qps but goes on: 8 / 3 per instance -> ceil(3 * 0.27) = 1
        # after the 3 s scale-down window; the two surplus instances are drained while
        # requests flow.
        load.rate = 8
        served_before = load.ok
        wait_until(lambda: _running_with(platform, name, 1), timeout=120)
        assert load.ok > served_before
    down = _events(platform, name, "AutoscalerScaleDown")
    assert down and "scaleDown window 3s" in down[-1]["message"], down
    assert load.failures == [], load.failures[:5]
    desc = _desc(platform, name)
    assert desc["scaling"]["lastDecision"]["desired"] == 1
    assert "LastScalingDecision" in platform.ok("desc", name)


def test_cron_job_fires_at_its_second(platform: Platform) -> None:
    name = "elastic_cron"
    fire_at = (datetime.now(UTC) + timedelta(seconds=8)).replace(microsecond=0)
    schedule = f"{fire_at.second} {fire_at.minute} {fire_at.hour} * * *"
    cron = {"ScaleJobs": [{"Name": "burst", "Schedule": schedule, "TargetSize": 2}]}
    _create(platform, name, cronscaler=cron)
    wait_until(lambda: _running_with(platform, name, 1), timeout=120)
    if datetime.now(UTC) >= fire_at:
        pytest.skip("the service took longer to start than the schedule's lead")
    assert _replicas(platform, name) == 1  # not before its second
    wait_until(lambda: _running_with(platform, name, 2), timeout=120)
    (fired,) = _events(platform, name, "CronJobFired")
    assert "'burst'" in fired["message"] and fire_at.strftime("%H:%M:%S") in fired["message"]
    (scaled,) = _events(platform, name, "CronScaling")
    scaled_at = datetime.fromisoformat(scaled["time"].replace("Z", "+00:00"))
    assert fire_at <= scaled_at <= fire_at + timedelta(seconds=3), (fire_at, scaled_at)
    table = platform.ok("desc", name)
    assert "CronTarget" in table and "NextCronJob" in table and "burst at" in table


def test_scale_to_zero_holds_the_first_requests_and_serves_them(platform: Platform) -> None:
    name = "elastic_zero"
    autoscaler = {
        "min": 0,
        "max": 2,
        "scaleStrategies": [{"metricName": "qps", "threshold": 10}],
        "behavior": {
            "scaleDown": {"stabilizationWindowSeconds": 0},
            "onZero": {"scaleDownGracePeriodSeconds": 3, "scaleUpActivationReplicas": 1},
        },
    }
    token = _create(platform, name, autoscaler=autoscaler, metadata={"rpc.keepalive": 60000})
    wait_until(lambda: _running_with(platform, name, 1), timeout=120)
    # No traffic: after the 3 s grace the service has no instance left.
    wait_until(
        lambda: _replicas(platform, name) == 0 and not _live_instances(platform, name), timeout=120
    )
    assert _events(platform, name, "ScaledToZero")
    assert _desc(platform, name)["instances"]["total"] == 0

    # Five requests at zero: all held (not 503), one activation, all served.
    results: list[Any] = []
    url = f"{platform.gateway_url}/api/predict/{name}"

    def one() -> None:
        client = httpclient.InferenceServerClient(url, network_timeout=90)
        try:
            out = client.infer(
                "simple", add_sub_inputs(httpclient), headers={"Authorization": token}
            )
            results.append(out.as_numpy("OUTPUT0"))
        except Exception as exc:  # noqa: BLE001
            results.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=one) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(isinstance(r, np.ndarray) for r in results), results
    assert len(results) == 5
    activations = _events(platform, name, "ActivatedFromZero")
    assert len(activations) == 1, activations
    assert "waiting at zero" in activations[0]["message"]
    assert "activating 1" in activations[0]["message"]
