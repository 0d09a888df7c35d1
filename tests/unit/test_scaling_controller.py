"""The scaling controller over a FakeRuntime, a real store and injected clocks.

The policy itself is tested on synthetic series in test_autoscaling.py and the cron
rules in test_cronscaling.py; here: the controller samples, decides and applies (the
count and its event in the store, the reconciler woken), keeps the policy's state
between rounds, starts it again when the document changes, and evaluates cron jobs at
their second.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from openeas.gateway.routes import RouteTable
from openeas.platform.reconciler import Reconciler, Tuning
from openeas.platform.resources import ResourceGroup
from openeas.platform.scaling import ScaleReason, ScalingController
from openeas.platform.spec import validate_spec
from openeas.platform.store import Store
from openeas.platform.traffic import ServiceTraffic as Traffic
from openeas.testing.fake_runtime import FakeRuntime

GROUP = ResourceGroup("default", cpu=16, memory=64000, gpu=0)
#: 2026-12-06 10:00:00 UTC
T0 = datetime(2026, 12, 6, 10, 0, 0, tzinfo=UTC).timestamp()


class FakeTraffic:
    def __init__(self) -> None:
        self.now = Traffic()

    def sample(self, service: str, now: float) -> Traffic:
        return self.now


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.repo = tmp / "models"
        self.repo.mkdir()
        self.store = Store(tmp / "platform.db")
        self.runtime = FakeRuntime(auto_ready=True)
        self.reconciler = Reconciler(
            self.store, self.runtime, RouteTable(), GROUP, tuning=Tuning(stop_grace=0.1)
        )
        self.traffic = FakeTraffic()
        self.mono = 1000.0
        self.wall = T0
        self.controller = ScalingController(
            self.store,
            self.reconciler,
            self.traffic,
            clock=lambda: self.mono,
            wall=lambda: self.wall,
        )

    def create(self, instances: int = 1, **extra: Any) -> None:
        doc = {
            "name": "svc",
            "processor": "triton",
            "processor_params": [f"--model-repository={self.repo}"],
            "metadata": {"instance": instances, "cpu": 1, "memory": 100},
            **extra,
        }
        spec = validate_spec(doc)
        cron_set_at = self.wall if "cronscaler" in extra else None
        self.store.create_service("svc", spec.token, spec.to_json(), cron_set_at)

    async def advance(self, seconds: float) -> None:
        """``seconds`` pass; the controller decides once."""
        self.mono += seconds
        self.wall += seconds
        await self.controller.tick()

    async def reconcile(self, ticks: int = 3) -> None:
        """The reconciler acts (its background repository sync finishes between ticks)."""
        for _ in range(ticks):
            await self.reconciler.tick()
            for task in list(self.reconciler._syncing.values()):
                await task

    @property
    def replicas(self) -> int:
        return self.store.service("svc").replicas

    def events(self, reason: str) -> list[str]:
        return [e.message for e in self.store.events("svc") if e.reason == reason]


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.store.close()


def _autoscaler(**behavior: Any) -> dict[str, Any]:
    return {
        "min": behavior.pop("min", 1),
        "max": behavior.pop("max", 4),
        "scaleStrategies": [{"metricName": "qps", "threshold": 10}],
        "behavior": behavior,
    }


async def test_a_load_step_scales_up_at_once_with_its_reason(h: Harness) -> None:
    h.create(autoscaler=_autoscaler(scaleUp={"stabilizationWindowSeconds": 0}))
    await h.advance(1)
    assert h.replicas == 1
    h.traffic.now = Traffic(rate=35)
    await h.advance(1)
    assert h.replicas == 4  # ceil(1 * 35 / 10)
    (message,) = h.events(ScaleReason.SCALE_UP)
    assert "qps 35/instance (threshold 10) -> 4" in message and "1 -> 4" in message
    # the reconciler acts on the new count
    await h.reconcile()
    assert len(h.runtime.instances) == 4
    described = h.controller.describe("svc")
    assert described is not None and described["lastDecision"]["desired"] == 4


async def test_qps_is_per_instance_of_the_set_count(h: Harness) -> None:
    """Once scaled to 4, the same service rate is 8.75 per instance: no further step."""
    h.create(autoscaler=_autoscaler(scaleUp={"stabilizationWindowSeconds": 0}))
    h.traffic.now = Traffic(rate=35)
    await h.advance(1)
    assert h.replicas == 4
    for _ in range(5):
        await h.advance(1)
    assert h.replicas == 4
    assert len(h.events(ScaleReason.SCALE_UP)) == 1


async def test_scale_down_waits_for_its_window(h: Harness) -> None:
    h.create(
        autoscaler=_autoscaler(
            scaleUp={"stabilizationWindowSeconds": 0},
            scaleDown={"stabilizationWindowSeconds": 3},
        )
    )
    h.traffic.now = Traffic(rate=35)
    await h.advance(1)
    assert h.replicas == 4
    h.traffic.now = Traffic(rate=5)
    await h.advance(1)
    await h.advance(1)
    assert h.replicas == 4  # the window still holds a recommendation of 4
    await h.advance(1.5)
    assert h.replicas == 1
    (message,) = h.events(ScaleReason.SCALE_DOWN)
    assert "scaleDown window 3s" in message and "4 -> 1" in message


async def test_scale_to_zero_and_one_activation_for_waiting_requests(h: Harness) -> None:
    h.create(
        autoscaler=_autoscaler(
            min=0,
            max=2,
            scaleDown={"stabilizationWindowSeconds": 0},
            onZero={"scaleDownGracePeriodSeconds": 2, "scaleUpActivationReplicas": 1},
        )
    )
    await h.advance(1)
    await h.advance(1)
    assert h.replicas == 1
    await h.advance(1.5)
    assert h.replicas == 0
    assert h.events(ScaleReason.TO_ZERO)
    # Requests wait at the gateway: one activation, however many wait and however
    # often the controller is woken.
    h.traffic.now = Traffic(in_flight=5)
    for _ in range(4):
        await h.advance(0.2)
    assert h.replicas == 1
    (message,) = h.events(ScaleReason.FROM_ZERO)
    assert "5 request(s) waiting at zero instances: activating 1" in message


async def test_a_changed_autoscaler_starts_its_policy_again(h: Harness) -> None:
    h.create(
        autoscaler=_autoscaler(
            scaleUp={"stabilizationWindowSeconds": 0},
            scaleDown={"stabilizationWindowSeconds": 60},
        )
    )
    h.traffic.now = Traffic(rate=35)
    await h.advance(1)
    assert h.replicas == 4
    record = h.store.service("svc")
    doc = h.store.spec("svc", record.current_version)
    doc["autoscaler"] = _autoscaler(min=1, max=2)
    version = h.store.add_version("svc", doc)
    h.store.update_service("svc", current_version=version)
    await h.advance(1)
    assert h.replicas == 2  # the new max clamps at once, whatever the old window held


async def test_cron_job_takes_effect_at_its_second_only(h: Harness) -> None:
    # 10:00:05 UTC every day; set at 10:00:00.
    cron = {"ScaleJobs": [{"Name": "burst", "Schedule": "5 0 10 * * *", "TargetSize": 3}]}
    h.create(cronscaler=cron)
    await h.advance(1)
    await h.advance(3)  # 10:00:04
    assert h.replicas == 1
    assert h.events(ScaleReason.CRON_FIRED) == []
    await h.advance(1)  # 10:00:05
    assert h.replicas == 3
    (fired,) = h.events(ScaleReason.CRON_FIRED)
    assert "'burst' fired at 2026-12-06T10:00:05Z: target size 3" in fired
    (scaled,) = h.events(ScaleReason.CRON_SCALED)
    assert "1 -> 3" in scaled
    await h.advance(1)
    assert len(h.events(ScaleReason.CRON_FIRED)) == 1  # one event per firing
    described = h.controller.describe("svc")
    assert described is not None and described["cron"]["target"] == 3


async def test_cron_target_is_the_autoscalers_floor(h: Harness) -> None:
    cron = {"ScaleJobs": [{"Name": "floor", "Schedule": "2 0 10 * * *", "TargetSize": 3}]}
    h.create(autoscaler=_autoscaler(), cronscaler=cron)
    await h.advance(1)
    assert h.replicas == 1
    await h.advance(1)  # 10:00:02: the floor rises to 3 without any traffic
    assert h.replicas == 3
    assert h.events(ScaleReason.CRON_FIRED)


async def test_a_manual_count_is_where_the_autoscaler_goes_on_from(h: Harness) -> None:
    h.create(autoscaler=_autoscaler(scaleDown={"stabilizationWindowSeconds": 0}))
    h.traffic.now = Traffic(rate=30)  # 10 per instance at 3: within the band
    h.store.set_replicas("svc", 3, "Manual", "eascmd modify")
    await h.advance(1)
    await h.advance(1)
    assert h.replicas == 3


async def test_cpu_is_measured_from_the_runtime_per_instance_cores(h: Harness) -> None:
    h.create(
        autoscaler={
            "min": 1,
            "max": 4,
            "scaleStrategies": [{"metricName": "cpu", "threshold": 50}],
            "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0}},
        }
    )
    await h.reconcile()
    (instance_id,) = h.runtime.instances
    h.runtime.set_cpu_seconds(instance_id, 10.0)
    await h.advance(1)  # the first reading: no rate yet
    assert h.replicas == 1
    h.runtime.set_cpu_seconds(instance_id, 10.9)  # 0.9 s of CPU in 1 s on 1 core: 90%
    await h.advance(1)
    assert h.replicas == 2  # ceil(1 * 90 / 50)
    (message,) = h.events(ScaleReason.SCALE_UP)
    assert "cpu 90%" in message
