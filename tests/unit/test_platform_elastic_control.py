"""The control plane's side of ``autoscaler``/``cronscaler``: the stored count
(``replicas``), the cron time, versions and events, over the real store and reconciler
with a FakeRuntime (no processes; tests/integration/platform has the real ones)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from openeas.platform.control import ControlPlane, Endpoints
from openeas.platform.errors import SpecError
from openeas.platform.status import ServiceStatus
from tests.unit.test_reconciler_fake_runtime import Harness

AUTOSCALER: dict[str, Any] = {
    "min": 1,
    "max": 4,
    "scaleStrategies": [{"metricName": "qps", "threshold": 10}],
}
CRONSCALER: dict[str, Any] = {
    "ScaleJobs": [{"Name": "morning", "Schedule": "0 0 8 * * *", "TargetSize": 3}]
}


class Plane(Harness):
    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.runtime.auto_ready = True
        self.control = ControlPlane(
            self.store, self.reconciler, Endpoints("127.0.0.1", "127.0.0.1", 8080, 8081)
        )

    def doc(self, instances: int = 1, **fields: Any) -> dict[str, Any]:
        return {
            "name": "svc",
            "processor": "triton",
            "processor_params": [f"--model-repository={self.repo}"],
            "metadata": {"instance": instances, "cpu": 1, "memory": 100},
            **fields,
        }

    def reasons(self) -> list[str]:
        return [e.reason for e in self.store.events("svc")]


@pytest.fixture
async def p(tmp_path: Path) -> AsyncIterator[Plane]:
    plane = Plane(tmp_path)
    yield plane
    plane.store.close()


async def test_create_keeps_both_documents_and_counts_from_metadata_instance(p: Plane) -> None:
    before = time.time()
    view = p.control.create(p.doc(2, autoscaler=AUTOSCALER, cronscaler=CRONSCALER))
    assert (view["autoscaler"], view["cronscaler"]) == (AUTOSCALER, CRONSCALER)
    assert view["replicas"] == 2 and view["instances"]["total"] == 2
    record = p.store.service("svc")
    assert record.cron_set_at is not None and before <= record.cron_set_at <= time.time()
    assert view["cron_set_time"]
    await p.until(lambda: p.status() == ServiceStatus.RUNNING)
    assert len(p.ids()) == 2


async def test_the_reconciler_drives_towards_replicas_not_the_spec(p: Plane) -> None:
    p.control.create(p.doc(1, autoscaler=AUTOSCALER))
    await p.until(lambda: p.status() == ServiceStatus.RUNNING)
    p.store.set_replicas("svc", 3, "AutoscalerScaled", "1 -> 3")  # as the controller does
    await p.until(lambda: len(p.ids()) == 3 and p.status() == ServiceStatus.RUNNING)
    view = p.control.describe("svc")
    assert view["instances"] == {"total": 3, "running": 3, "pending": 0}
    assert p.control.list()[0]["instances"]["total"] == 3
    assert p.store.spec("svc", 1)["metadata"]["instance"] == 1  # no new version for it


async def test_setting_and_changing_the_autoscaler_keeps_the_instances(p: Plane) -> None:
    p.control.create(p.doc(2))
    await p.until(lambda: p.status() == ServiceStatus.RUNNING)
    ids = sorted(p.ids())
    starts = len([c for c in p.runtime.calls if c[0] == "start"])
    view = p.control.set_elastic("svc", "autoscaler", AUTOSCALER)
    assert view["current_version"] == 2 and view["autoscaler"] == AUTOSCALER
    legacy = {"Min": 1, "Max": 3, "Strategies": {"cpu": 50}}
    view = p.control.set_elastic("svc", "autoscaler", legacy)  # replaced whole, not merged
    assert view["autoscaler"] == legacy and view["current_version"] == 3
    await p.ticks(3)
    assert sorted(p.ids()) == ids
    assert len([c for c in p.runtime.calls if c[0] == "start"]) == starts
    assert [i.version for i in p.store.instances("svc")] == [3, 3]  # relabelled
    assert p.status() == ServiceStatus.RUNNING and p.store.service("svc").replicas == 2
    assert p.reasons().count("AutoscalerSet") == 2


async def test_a_manual_count_sets_replicas_even_when_the_spec_already_says_it(p: Plane) -> None:
    p.control.create(p.doc(2, autoscaler=AUTOSCALER))
    p.store.set_replicas("svc", 4, "AutoscalerScaled", "2 -> 4")
    p.control.modify("svc", {"metadata": {"instance": 2}})  # the same number as the spec
    assert p.store.service("svc").replicas == 2
    assert p.store.service("svc").status == ServiceStatus.SCALING
    p.store.set_replicas("svc", 4, "AutoscalerScaled", "2 -> 4")
    p.control.modify("svc", {"metadata": {"rpc.keepalive": 1000}})  # the count is not named
    assert p.store.service("svc").replicas == 4


async def test_turning_the_autoscaler_off_keeps_the_count_in_the_new_version(p: Plane) -> None:
    p.control.create(p.doc(1, autoscaler=AUTOSCALER))
    p.store.set_replicas("svc", 3, "AutoscalerScaled", "1 -> 3")
    view = p.control.remove_elastic("svc", "autoscaler")
    assert view["autoscaler"] is None and view["replicas"] == 3
    spec = p.store.spec("svc", view["current_version"])
    assert "autoscaler" not in spec and spec["metadata"]["instance"] == 3
    assert "AutoscalerRemoved" in p.reasons()
    again = p.control.remove_elastic("svc", "autoscaler")  # already off: nothing to do
    assert again["current_version"] == view["current_version"]


async def test_off_with_a_cronscaler_left_keeps_the_spec_count(p: Plane) -> None:
    p.control.create(p.doc(1, autoscaler=AUTOSCALER, cronscaler=CRONSCALER))
    p.store.set_replicas("svc", 3, "CronScaled", "morning -> 3")
    view = p.control.remove_elastic("svc", "autoscaler")
    assert p.store.spec("svc", view["current_version"])["metadata"]["instance"] == 1
    assert view["replicas"] == 3  # the cron controller still owns the count


async def test_the_cron_time_is_set_by_a_new_or_changed_cronscaler_only(p: Plane) -> None:
    p.control.create(p.doc(1))
    assert p.store.service("svc").cron_set_at is None
    p.control.set_elastic("svc", "cronscaler", CRONSCALER)
    first = p.store.service("svc").cron_set_at
    assert first is not None
    p.control.modify("svc", {"metadata": {"rpc.keepalive": 1000}})
    assert p.store.service("svc").cron_set_at == first  # unchanged cronscaler
    changed = {"ScaleJobs": [{**CRONSCALER["ScaleJobs"][0], "TargetSize": 2}]}
    p.control.set_elastic("svc", "cronscaler", changed)
    second = p.store.service("svc").cron_set_at
    assert second is not None and second > first and "CronScalerSet" in p.reasons()
    p.control.remove_elastic("svc", "cronscaler")
    assert p.store.service("svc").cron_set_at is None


async def test_switching_versions_restores_a_versions_count_and_cron_time(p: Plane) -> None:
    p.control.create(p.doc(2))
    p.control.modify("svc", {"metadata": {"instance": 3}, "cronscaler": CRONSCALER})
    assert p.store.service("svc").replicas == 3
    p.control.switch("svc", 1)
    record = p.store.service("svc")
    assert (record.replicas, record.cron_set_at) == (2, None)
    p.control.switch("svc", 2)
    assert p.store.service("svc").cron_set_at is not None  # set anew: not retroactive


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("autoscaler", {"min": 5, "max": 2, "scaleStrategies": []}, "autoscaler.min"),
        ("autoscaler", None, "autoscaler"),
        ("autoscaler", [1, 2], "autoscaler"),
        ("cronscaler", {"ScaleJobs": [{"Schedule": "* * *", "TargetSize": 1}]}, "Schedule"),
    ],
)
async def test_bad_documents_change_nothing(p: Plane, field: str, value: Any, error: str) -> None:
    p.control.create(p.doc(1, autoscaler=AUTOSCALER))
    events = p.reasons()
    with pytest.raises(SpecError) as info:
        p.control.set_elastic("svc", field, value)
    assert error in str(info.value)
    record = p.store.service("svc")
    assert (record.latest_version, record.replicas) == (1, 1)
    assert p.reasons() == events
    assert p.control.describe("svc")["autoscaler"] == AUTOSCALER


async def test_modify_merges_into_the_autoscaler_and_null_removes_it(p: Plane) -> None:
    p.control.create(p.doc(1, autoscaler=AUTOSCALER))
    p.store.set_replicas("svc", 2, "AutoscalerScaled", "1 -> 2")
    view = p.control.modify("svc", {"autoscaler": {"max": 10}})  # -Dautoscaler.max=10
    assert view["autoscaler"] == {**AUTOSCALER, "max": 10} and view["replicas"] == 2
    view = p.control.modify("svc", {"autoscaler": None})  # -Dautoscaler=null
    assert view["autoscaler"] is None and view["replicas"] == 2
    assert p.store.spec("svc", view["current_version"])["metadata"]["instance"] == 2
