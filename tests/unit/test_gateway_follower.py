"""The route snapshot (JSON, file, applying it) and the control plane's route feed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import stat
from pathlib import Path

from openeas.gateway.follower import (
    Snapshot,
    apply_snapshot,
    group_from_json,
    group_to_json,
    load_snapshot,
    route_from_json,
    route_to_json,
    save_snapshot,
    snapshot,
)
from openeas.gateway.routes import (
    GroupMember,
    GroupRoute,
    RouteTable,
    ServiceLimits,
    ServiceRoute,
    Upstream,
)
from openeas.platform.routefeed import RouteFeed
from openeas.platform.runtimes.local import pending_requests

ROUTE = ServiceRoute(
    "svc",
    "tok",
    ServiceLimits(keepalive_ms=3000, max_queue_size=2, rate_limit=5.0, max_concurrency=4),
    upstreams=(Upstream("svc-1", "127.0.0.1", 1, 2, "@sock", token="inner"),),
    draining=(Upstream("svc-0", "127.0.0.1", 3, None),),
)
GROUP = GroupRoute("grp", "group-tok", (GroupMember("svc", 90), GroupMember("canary", 0)))


def test_a_route_survives_its_json_with_tokens_and_limits() -> None:
    assert route_from_json(route_to_json(ROUTE)) == ROUTE
    held = dataclasses.replace(ROUTE, upstreams=(), hold=True)
    assert route_from_json(route_to_json(held)) == held
    # a snapshot saved before ``hold`` existed: not held
    old = route_to_json(ROUTE)
    del old["hold"]
    assert route_from_json(old).hold is False


def test_a_group_survives_its_json_and_older_snapshots_have_none(tmp_path: Path) -> None:
    assert group_from_json(group_to_json(GROUP)) == GROUP
    assert group_to_json(GROUP) == {
        "name": "grp",
        "token": "group-tok",
        "members": [{"service": "svc", "weight": 90}, {"service": "canary", "weight": 0}],
    }
    # a snapshot saved by a gateway (or served by a control plane) before groups
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"version": "e.7", "services": [route_to_json(ROUTE)]}))
    assert load_snapshot(path) == Snapshot("e.7", [ROUTE], [])
    path.write_text('{"version": "x", "services": [], "groups": [{"name": "g"}]}')
    assert load_snapshot(path) is None  # broken: ignored (logged), not a crash


def test_applying_a_snapshot_publishes_changes_and_removes_groups() -> None:
    table = RouteTable()
    table.update_group(GroupRoute("gone", "t"))
    apply_snapshot(table, [ROUTE], [GROUP])
    assert table.group("gone") is None and table.group("grp") == GROUP
    version = table.version
    apply_snapshot(table, [ROUTE], [dataclasses.replace(GROUP)])  # equal: not republished
    assert table.version == version
    reweighted = dataclasses.replace(GROUP, members=(GroupMember("svc", 1),))
    apply_snapshot(table, [ROUTE], [reweighted])
    assert table.group("grp") == reweighted
    apply_snapshot(table, [ROUTE])
    assert list(table.groups()) == [] and table.get("svc") == ROUTE


def test_applying_a_snapshot_replaces_changes_and_removes_the_missing() -> None:
    table = RouteTable()
    table.update(ServiceRoute("gone", "t"))
    table.update(ROUTE)
    version = table.version
    apply_snapshot(table, [ROUTE])  # same route: not republished
    assert table.get("gone") is None and table.get("svc") == ROUTE
    assert table.version == version + 1
    changed = ServiceRoute("svc", "new")
    apply_snapshot(table, [changed])
    assert table.get("svc") == changed


def test_the_saved_snapshot_is_owner_only_and_loads_back(tmp_path: Path) -> None:
    table = RouteTable()
    table.update(ROUTE)
    path = tmp_path / "state" / "routes.json"
    save_snapshot(path, snapshot(table, "e.1"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_snapshot(path) == Snapshot("e.1", [ROUTE], [])
    table.update_group(GROUP)
    save_snapshot(path, snapshot(table, "e.2"))
    assert load_snapshot(path) == Snapshot("e.2", [ROUTE], [GROUP])
    path.write_text('{"version": "x", "services": [{"name": 1}]}')
    assert load_snapshot(path) is None  # broken: ignored (logged), not a crash
    assert load_snapshot(tmp_path / "none.json") is None


def test_the_feed_answers_a_change_at_once_and_tracks_what_gateways_applied() -> None:
    async def scenario() -> None:
        table = RouteTable()
        feed = RouteFeed(table)
        first = await feed.watch("", 5, "gw")  # unknown version: answered at once
        assert first["version"] == feed.version and not feed.caught_up()  # gw has none
        waiting = asyncio.create_task(feed.watch(first["version"], 5, "gw"))
        await asyncio.sleep(0.01)
        assert not waiting.done() and feed.caught_up()
        table.update(ROUTE)
        second = await asyncio.wait_for(waiting, 1)
        assert second["version"] != first["version"]
        assert [s["name"] for s in second["services"]] == ["svc"]
        assert not feed.caught_up()  # gw has not come back with the new version yet
        again = asyncio.create_task(feed.watch(second["version"], 0.05, "gw"))
        await asyncio.sleep(0)
        assert feed.caught_up()
        assert (await again)["version"] == second["version"]  # timed out, unchanged
        # A version of an earlier control plane (another epoch) is not an acknowledgement.
        await feed.watch("other." + second["version"].split(".")[1], 0, "gw")
        assert not feed.caught_up()

    asyncio.run(scenario())


def test_the_feed_serves_service_groups() -> None:
    async def scenario() -> None:
        table = RouteTable()
        feed = RouteFeed(table)
        first = await feed.watch("", 5, "gw")
        assert first["groups"] == []
        waiting = asyncio.create_task(feed.watch(first["version"], 5, "gw"))
        await asyncio.sleep(0.01)
        table.update_group(GROUP)  # a group change alone wakes the watch
        assert Snapshot.from_json(await asyncio.wait_for(waiting, 1)).groups == [GROUP]

    asyncio.run(scenario())


def test_pending_requests_sums_the_processors_gauge() -> None:
    page = (
        "# TYPE nv_inference_pending_request_count gauge\n"
        'nv_inference_pending_request_count{model="a",version="1"} 2.0\n'
        'nv_inference_pending_request_count{model="b",version="1"} 1.0\n'
        'nv_inference_request_success{model="a",version="1"} 9.0\n'
    )
    assert pending_requests(page) == 3
    assert pending_requests("") == 0


def test_closing_the_feed_answers_waiting_watches_at_once() -> None:
    """A stopping control plane must not wait for the gateways' long polls."""

    async def scenario() -> None:
        feed = RouteFeed(RouteTable())
        feed.ready = True
        waiting = asyncio.create_task(feed.watch(feed.version, 30, "gw"))
        await asyncio.sleep(0.01)
        feed.close()
        await asyncio.wait_for(waiting, 1)
        assert not feed.ready  # later watches: 503 until a new control plane is ready

    asyncio.run(scenario())


def test_workers_divide_a_services_limits_among_them() -> None:
    from openeas.gateway.follower import worker_share

    shared = worker_share(ROUTE, 3).limits
    assert (shared.max_queue_size, shared.max_concurrency) == (1, 2)  # rounded up
    assert shared.rate_limit == 5.0 / 3 and shared.keepalive_ms == 3000
    assert worker_share(ROUTE, 1) == ROUTE
