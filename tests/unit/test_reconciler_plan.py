"""The reconciler's decisions, as data: ``plan(desired, observed, now)`` on plain values."""

from __future__ import annotations

from dataclasses import replace

from openeas.gateway.routes import ServiceRoute
from openeas.platform.plan import (
    Action,
    Create,
    DeleteService,
    DesiredService,
    Drain,
    InstanceView,
    Kill,
    ObservedService,
    Publish,
    RecordEvent,
    Remove,
    SetStatus,
    Start,
    Stop,
    Sync,
    Tuning,
    Update,
    adoption,
    plan,
)
from openeas.platform.resources import Demand, ResourceGroup
from openeas.platform.runtimes.base import Address, Exit
from openeas.platform.status import Desired, InstanceStatus, ServiceStatus

NOW = 1000.0
GROUP = ResourceGroup("default", cpu=4, memory=8000, gpu=0)
ONE = Demand(1, 1000, 0)
TUNING = Tuning(crashloop_restarts=3, ready_timeout=60.0, backoff_base=1.0, backoff_max=30.0)

_port = iter(range(30000, 40000, 3))


def want(instances: int = 1, version: int = 1, **kw: object) -> DesiredService:
    base = DesiredService(
        name="svc",
        token="tok",
        desired=Desired.RUNNING,
        version=version,
        instances=instances,
        demand=ONE,
        resource="default",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def inst(
    name: str, version: int = 1, ready: bool = True, created: float = 0.0, **kw: object
) -> InstanceView:
    port = next(_port)
    base = InstanceView(
        id=name,
        version=version,
        status=InstanceStatus.RUNNING if ready else InstanceStatus.PENDING,
        ready=ready,
        ever_ready=ready,
        demand=ONE,
        created_at=created,
        address=Address("127.0.0.1", port, port + 1, port + 2, pid=port),
        token=f"t-{name}",
        launched_at=NOW - 10,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def seen(
    *instances: InstanceView,
    status: ServiceStatus = ServiceStatus.RUNNING,
    group: ResourceGroup = GROUP,
    **kw: object,
) -> ObservedService:
    base = ObservedService(status=status, group=group, instances=tuple(instances))
    return replace(base, **kw)  # type: ignore[arg-type]


def of(actions: list[Action], kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def status(actions: list[Action]) -> SetStatus:
    return of(actions, SetStatus)[-1]


def route(actions: list[Action]) -> ServiceRoute:
    return of(actions, Publish)[-1].route


def routed(actions: list[Action]) -> list[str]:
    return [u.instance_id for u in route(actions).upstreams]


def events(actions: list[Action]) -> list[str]:
    return [a.reason for a in of(actions, RecordEvent)]


def updated(actions: list[Action], instance_id: str) -> InstanceView:
    return [a.instance for a in of(actions, Update) if a.instance.id == instance_id][-1]


def routed_as(*instances: InstanceView) -> ServiceRoute:
    """The route the gateway has when these instances were published as ready."""
    actions = plan(want(len(instances)), seen(*instances), NOW, TUNING)
    return route(actions)


# -- scaling ------------------------------------------------------------------------------


def test_a_new_service_creates_its_instances_and_waits() -> None:
    actions = plan(want(2), seen(status=ServiceStatus.CREATING), NOW, TUNING)
    assert of(actions, Create) == [Create(1), Create(1)]
    assert status(actions) == SetStatus(ServiceStatus.WAITING)
    assert routed(actions) == []


def test_a_running_service_at_its_count_does_nothing() -> None:
    a, b = inst("a"), inst("b")
    actions = plan(want(2), seen(a, b), NOW, TUNING)
    assert not of(actions, Create) and not of(actions, Drain) and not of(actions, Stop)
    assert status(actions) == SetStatus(ServiceStatus.RUNNING)
    assert routed(actions) == ["a", "b"]
    upstream = route(actions).upstreams[0]
    assert (upstream.host, upstream.http_port, upstream.token) == (
        "127.0.0.1",
        a.address.http_port,  # type: ignore[union-attr]
        "t-a",
    )


def test_scale_up_stops_at_the_groups_capacity_with_eas_reason() -> None:
    actions = plan(want(3, demand=Demand(2, 0, 0)), seen(), NOW, TUNING)
    assert len(of(actions, Create)) == 2
    assert status(actions) == SetStatus(
        ServiceStatus.WAITING,
        "InsufficientResources",
        "insufficient cpu: need 2, 0 of 4 free in resource group 'default'",
    )


def test_other_services_use_counts_against_the_group() -> None:
    actions = plan(want(1), seen(used_elsewhere=(Demand(4, 0, 0),)), NOW, TUNING)
    assert of(actions, Create) == []
    assert status(actions).reason == "InsufficientResources"


def test_an_unknown_group_waits_with_the_reason() -> None:
    actions = plan(want(1, resource="gpu_pool"), seen(), NOW, TUNING)
    assert of(actions, Create) == []
    assert status(actions).message == "resource group 'gpu_pool' does not exist"


def test_scale_down_drains_not_ready_and_newest_first() -> None:
    old_ready = inst("old", created=1.0)
    new_ready = inst("new", created=3.0)
    starting = inst("starting", ready=False, created=2.0)
    actions = plan(want(1), seen(old_ready, new_ready, starting), NOW, TUNING)
    assert of(actions, Drain) == [Drain("starting"), Drain("new")]
    assert "ScalingDown" in events(actions)
    assert routed(actions) == ["old"]
    assert [u.instance_id for u in route(actions).draining] == ["new", "starting"]
    assert status(actions).status == ServiceStatus.SCALING
    assert of(actions, Stop) == []  # never in the same tick: the gateway drains first


# -- draining: no request fails -----------------------------------------------------------


def test_a_drained_instance_stops_only_once_out_of_the_route_and_idle() -> None:
    keep = inst("keep")
    leaving = inst("leaving", status=InstanceStatus.TERMINATING, drain_since=NOW - 1)
    still_routed = routed_as(
        keep, replace(leaving, drain_since=None, status=InstanceStatus.RUNNING)
    )
    assert [u.instance_id for u in still_routed.upstreams] == ["keep", "leaving"]
    actions = plan(want(1), seen(keep, leaving, published=still_routed), NOW, TUNING)
    assert of(actions, Stop) == []

    out = routed_as(keep)
    busy = plan(want(1), seen(keep, replace(leaving, in_flight=2), published=out), NOW, TUNING)
    assert of(busy, Stop) == []
    late = replace(leaving, in_flight=2, drain_since=NOW - leaving.drain_limit - 1)
    assert of(plan(want(1), seen(keep, late, published=out), NOW, TUNING), Stop) == [
        Stop("leaving")
    ]
    idle = plan(want(1), seen(keep, leaving, published=out), NOW, TUNING)
    assert of(idle, Stop) == [Stop("leaving")]
    assert status(idle).status == ServiceStatus.SCALING  # until it has stopped

    stopped = replace(leaving, stopping=True, stopped=True)
    done = plan(want(1), seen(keep, stopped, published=out), NOW, TUNING)
    assert of(done, Remove) == [Remove("leaving")]
    assert "InstanceStopped" in events(done)
    assert status(done) == SetStatus(ServiceStatus.RUNNING)


def test_rolling_update_surges_then_drains_the_old_version() -> None:
    old_a, old_b = inst("old-a"), inst("old-b")
    first = plan(want(2, version=2), seen(old_a, old_b), NOW, TUNING)
    assert of(first, Create) == [Create(2), Create(2)]
    assert of(first, Drain) == []  # the old ones serve until the new ones are ready
    assert routed(first) == ["old-a", "old-b"]
    assert status(first).status == ServiceStatus.UPDATING

    new_a = inst("new-a", version=2, ready=False, probe=True)
    new_b = inst("new-b", version=2, ready=False, probe=False)
    half = plan(want(2, version=2), seen(old_a, old_b, new_a, new_b), NOW, TUNING)
    assert of(half, Drain) == []  # one new instance ready of two: keep the old ones
    assert routed(half) == ["old-a", "old-b", "new-a"]

    new_b = replace(new_b, probe=True)
    both = plan(want(2, version=2), seen(old_a, old_b, new_a, new_b), NOW, TUNING)
    assert of(both, Drain) == [Drain("old-a"), Drain("old-b")]
    assert routed(both) == ["new-a", "new-b"]
    assert [u.instance_id for u in route(both).draining] == ["old-a", "old-b"]
    assert of(both, Stop) == []
    assert status(both).status == ServiceStatus.UPDATING


def test_update_in_a_full_group_replaces_one_at_a_time_while_another_serves() -> None:
    full = ResourceGroup("default", cpu=2, memory=8000, gpu=0)
    old_a, old_b = inst("old-a"), inst("old-b")
    actions = plan(want(2, version=2), seen(old_a, old_b, group=full), NOW, TUNING)
    assert of(actions, Create) == []
    assert of(actions, Drain) == [Drain("old-a")]
    assert "UpdateWithoutSurge" in events(actions)
    assert routed(actions) == ["old-b"]
    assert status(actions).reason == "InsufficientResources"

    draining = replace(old_a, drain_since=NOW, status=InstanceStatus.TERMINATING)
    again = plan(want(2, version=2), seen(draining, old_b, group=full), NOW + 1, TUNING)
    assert of(again, Drain) == []  # one at a time


def test_update_of_a_single_instance_in_a_full_group_keeps_it_serving() -> None:
    full = ResourceGroup("default", cpu=1, memory=8000, gpu=0)
    actions = plan(want(1, version=2), seen(inst("only"), group=full), NOW, TUNING)
    assert of(actions, Drain) == [] and of(actions, Create) == []
    assert routed(actions) == ["only"]
    assert status(actions).status == ServiceStatus.WAITING


# -- readiness and crashes ----------------------------------------------------------------


def test_an_instance_that_answers_ready_joins_the_route() -> None:
    starting = inst("a", ready=False, probe=True)
    actions = plan(want(1), seen(starting, status=ServiceStatus.WAITING), NOW, TUNING)
    now_ready = updated(actions, "a")
    assert (now_ready.ready, now_ready.status, now_ready.ever_ready) == (
        True,
        InstanceStatus.RUNNING,
        True,
    )
    assert now_ready.backoff.ready_since == NOW
    assert events(actions) == ["InstanceReady"]
    assert routed(actions) == ["a"]
    assert status(actions) == SetStatus(ServiceStatus.RUNNING)


def test_an_instance_that_stops_answering_leaves_the_route() -> None:
    actions = plan(want(1), seen(inst("a", probe=False)), NOW, TUNING)
    assert updated(actions, "a").ready is False
    assert events(actions) == ["InstanceNotReady"]
    assert routed(actions) == []


def test_a_crash_after_ready_restarts_at_once_and_says_why() -> None:
    crashed = inst("a", exit=Exit(-9, "killed by signal SIGKILL"), log_tail="boom")
    actions = plan(want(1), seen(crashed), NOW, TUNING)
    after = updated(actions, "a")
    assert (after.status, after.restarts, after.reason) == (
        InstanceStatus.RESTARTING,
        1,
        "killed by signal SIGKILL",
    )
    assert of(actions, Start) == [Start("a")]  # first crash of a streak: no delay
    assert events(actions) == ["InstanceCrashed"]
    assert of(actions, RecordEvent)[0].warning
    st = status(actions)
    assert (st.status, st.reason) == (ServiceStatus.SCALING, "InstanceRestarting")
    assert "crash 1 in a row" in st.message and "boom" in st.message
    assert st.warning


def test_a_second_crash_in_a_row_backs_off() -> None:
    first = plan(want(1), seen(inst("a", exit=Exit(1, "exited with status 1"))), NOW, TUNING)
    restarted = replace(
        updated(first, "a"), status=InstanceStatus.PENDING, restart_at=None, launched_at=NOW
    )
    second = plan(
        want(1),
        seen(
            replace(restarted, exit=Exit(1, "exited with status 1")), status=ServiceStatus.SCALING
        ),
        NOW + 0.5,
        TUNING,
    )
    after = updated(second, "a")
    assert after.restart_at == NOW + 0.5 + TUNING.backoff_base
    assert of(second, Start) == []  # not yet due
    assert status(second).reason == "CrashLoopBackOff"
    later = plan(want(1), seen(after, status=ServiceStatus.SCALING), NOW + 2, TUNING)
    assert of(later, Start) == [Start("a")]


def test_an_oom_kill_is_its_own_event() -> None:
    oom = inst("a", exit=Exit(None, "OOMKilled: resident memory 300 MB exceeded the limit"))
    assert "InstanceOOMKilled" in events(plan(want(1), seen(oom), NOW, TUNING))


def test_a_crash_loop_before_ready_fails_the_service_with_the_log() -> None:
    looping = inst(
        "a",
        ready=False,
        ever_ready=False,
        restarts=TUNING.crashloop_restarts,
        exit=Exit(1, "exited with status 1"),
        log_tail="error: bad flag",
    )
    actions = plan(want(1), seen(looping, status=ServiceStatus.WAITING), NOW, TUNING)
    assert updated(actions, "a").status == InstanceStatus.FAILED
    assert of(actions, Start) == [] and of(actions, Create) == []
    failed = [s for s in of(actions, SetStatus) if s.status == ServiceStatus.FAILED][0]
    assert failed.reason == "InstanceCrashLoop"
    assert "keeps failing at start-up (exited with status 1)" in failed.message
    assert failed.message.endswith("error: bad flag")


def test_fewer_crashes_before_ready_are_restarted() -> None:
    crashing = inst("a", ready=False, ever_ready=False, restarts=1, exit=Exit(1, "exited"))
    actions = plan(want(1), seen(crashing, status=ServiceStatus.WAITING), NOW, TUNING)
    assert updated(actions, "a").status == InstanceStatus.RESTARTING
    assert status(actions) == SetStatus(ServiceStatus.WAITING)  # no crash note before ready


def test_a_failed_service_drains_what_still_runs_and_starts_nothing() -> None:
    failed = inst("a", ready=False, status=InstanceStatus.FAILED)
    other = inst("b")
    actions = plan(want(2), seen(failed, other, status=ServiceStatus.FAILED), NOW, TUNING)
    assert of(actions, Drain) == [Drain("b")]
    assert of(actions, Create) == [] and of(actions, SetStatus) == []


def test_an_instance_that_never_gets_ready_is_killed_after_the_timeout() -> None:
    hung = inst("a", ready=False, ever_ready=False, probe=False, launched_at=NOW - 61)
    actions = plan(want(1), seen(hung, status=ServiceStatus.WAITING), NOW, TUNING)
    assert of(actions, Kill) == [Kill("a", "not ready after 60s")]
    patient = replace(hung, launched_at=NOW - 59)
    assert of(plan(want(1), seen(patient), NOW, TUNING), Kill) == []


# -- adoption after a control-plane restart -----------------------------------------------


def test_adoption_keeps_a_live_instance_and_creates_no_duplicate() -> None:
    stored = inst("a", ever_ready=False)
    actions = adoption(stored, alive=True, now=NOW)
    kept = updated(actions, "a")
    assert kept.ever_ready and kept.backoff.ready_since == NOW
    assert events(actions) == ["InstanceAdopted"]
    after = plan(want(1), seen(kept), NOW + 0.2, TUNING)
    assert of(after, Create) == [] and of(after, Start) == []
    assert routed(after) == ["a"]


def test_adoption_restarts_a_lost_instance_and_forgets_a_stopping_one() -> None:
    lost = adoption(inst("a"), alive=False, now=NOW)
    view = updated(lost, "a")
    assert (view.status, view.ready, view.restart_at) == (InstanceStatus.RESTARTING, False, NOW)
    assert events(lost) == ["InstanceLost"]
    assert of(plan(want(1), seen(view), NOW, TUNING), Start) == [Start("a")]

    stopping = inst("b", status=InstanceStatus.TERMINATING)
    assert adoption(stopping, alive=False, now=NOW) == [Remove("b")]
    draining = updated(adoption(stopping, alive=True, now=NOW), "b")
    assert draining.drain_since == NOW


# -- stop, start, delete, synchronisation -------------------------------------------------


def test_stop_drains_everything_then_is_stopped() -> None:
    a = inst("a")
    actions = plan(want(1, desired=Desired.STOPPED), seen(a), NOW, TUNING)
    assert of(actions, Drain) == [Drain("a")]
    assert routed(actions) == []
    assert status(actions) == SetStatus(ServiceStatus.STOPPING)
    empty = plan(want(1, desired=Desired.STOPPED), seen(status=ServiceStatus.STOPPING), NOW, TUNING)
    assert status(empty) == SetStatus(ServiceStatus.STOPPED)
    assert of(empty, Create) == []


def test_start_after_stop_creates_instances_again() -> None:
    actions = plan(want(2), seen(status=ServiceStatus.WAITING), NOW, TUNING)
    assert len(of(actions, Create)) == 2


def test_delete_drains_then_removes_the_service() -> None:
    actions = plan(want(1, desired=Desired.DELETED), seen(inst("a")), NOW, TUNING)
    assert status(actions) == SetStatus(ServiceStatus.DELETING)
    assert of(actions, Drain) == [Drain("a")] and of(actions, DeleteService) == []
    gone = plan(want(1, desired=Desired.DELETED), seen(), NOW, TUNING)
    assert of(gone, DeleteService) == [DeleteService()]


def test_nothing_starts_before_the_repositories_are_synchronised() -> None:
    actions = plan(want(1), seen(status=ServiceStatus.CREATING, synced=False), NOW, TUNING)
    assert of(actions, Sync) == [Sync(1)] and of(actions, Create) == []
    syncing = seen(status=ServiceStatus.CREATING, synced=False, syncing=True)
    assert of(plan(want(1), syncing, NOW, TUNING), Sync) == []
    failed = seen(status=ServiceStatus.CREATING, synced=False, sync_error="no such bucket")
    actions = plan(want(1), failed, NOW, TUNING)
    assert status(actions) == SetStatus(ServiceStatus.FAILED, "SyncFailed", "no such bucket")
    assert of(actions, Sync) == [] and of(actions, Create) == []


def test_plan_does_not_modify_its_inputs() -> None:
    crashed = inst("a", exit=Exit(1, "exited"))
    observed = seen(crashed)
    before = (crashed.backoff.streak, crashed.backoff.ready_since)
    plan(want(1), observed, NOW, TUNING)
    assert observed.instances[0] is crashed
    assert (crashed.backoff.streak, crashed.backoff.ready_since) == before


def test_crashes_after_ready_never_fail_the_service() -> None:
    veteran = inst("a", restarts=TUNING.crashloop_restarts + 5, exit=Exit(1, "exited"))
    actions = plan(want(1), seen(veteran), NOW, TUNING)
    assert updated(actions, "a").status == InstanceStatus.RESTARTING
    assert all(s.status != ServiceStatus.FAILED for s in of(actions, SetStatus))
