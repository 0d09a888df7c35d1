"""Service groups on the control plane: the effective-weight rule (tables of cases), the
``metadata.group`` field, the store's transactions (a group made with its first member,
gone with its last, a move by a new version, an older database), and the control plane
over a fake runtime publishing the group's route with the services' ready instances."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from openeas.gateway.routes import GroupMember, RouteTable
from openeas.platform.control import ControlPlane, Endpoints
from openeas.platform.errors import NotFoundError, PlatformError, SpecError
from openeas.platform.groups import MemberState, effective_weights, shares
from openeas.platform.reconciler import Reconciler, Tuning
from openeas.platform.resources import ResourceGroup
from openeas.platform.spec import validate_spec
from openeas.platform.status import TrafficMode, TrafficState
from openeas.platform.store import Store
from openeas.testing.fake_runtime import FakeRuntime

G, S = TrafficState.GROUPING, TrafficState.STANDALONE
AUTO, CUSTOM = TrafficMode.AUTO, TrafficMode.CUSTOMIZED

# (mode, [(service, state, Weight, ready instances)], expected {service: weight})
WEIGHT_CASES: list[tuple[TrafficMode, list[tuple[str, TrafficState, int, int]], dict[str, int]]] = [
    (AUTO, [("a", G, -1, 2), ("b", G, -1, 1)], {"a": 2, "b": 1}),
    (AUTO, [("a", G, 5, 2), ("b", G, 900, 1)], {"a": 2, "b": 1}),  # Weight ignored
    (AUTO, [("a", G, -1, 2), ("b", S, -1, 3)], {"a": 2, "b": 0}),  # standalone: none
    (CUSTOM, [("a", G, 90, 1), ("b", G, 10, 4)], {"a": 90, "b": 10}),  # instances ignored
    (CUSTOM, [("a", G, -1, 1), ("b", G, -1, 1)], {"a": 100, "b": 100}),  # unset: equal
    (CUSTOM, [("a", G, -1, 1), ("b", G, 50, 1)], {"a": 100, "b": 50}),  # unset counts 100
    (CUSTOM, [("a", G, 0, 1), ("b", G, 10, 1)], {"a": 0, "b": 10}),  # Weight 0: none
    (CUSTOM, [("a", G, 90, 0), ("b", G, 10, 1)], {"a": 0, "b": 10}),  # no ready instance
    (CUSTOM, [("a", S, 90, 1), ("b", G, 10, 1)], {"a": 0, "b": 10}),
    # nobody above 0: the grouping members get 1 each (their own hold / 503 answers)
    (AUTO, [("a", G, -1, 0), ("b", G, -1, 0), ("c", S, -1, 2)], {"a": 1, "b": 1, "c": 0}),
    (CUSTOM, [("a", G, 0, 1), ("b", S, 10, 1)], {"a": 1, "b": 0}),
    (AUTO, [("a", S, -1, 1)], {"a": 0}),  # all standalone: nothing to route to
    (AUTO, [], {}),
]


@pytest.mark.parametrize(("mode", "members", "expected"), WEIGHT_CASES)
def test_effective_weights(
    mode: TrafficMode,
    members: list[tuple[str, TrafficState, int, int]],
    expected: dict[str, int],
) -> None:
    found = effective_weights(mode, [MemberState(*m) for m in reversed(members)])
    assert found == tuple(GroupMember(s, w) for s, w in sorted(expected.items()))


def test_shares_are_percentages_of_the_weights() -> None:
    assert shares([GroupMember("a", 90), GroupMember("b", 10)]) == {"a": 90.0, "b": 10.0}
    assert shares([GroupMember("a", 0)]) == {"a": 0.0}


def _doc(name: str, group: Any = None, repo: str = "/models", **more: Any) -> dict[str, Any]:
    metadata = {"group": group} if group is not None else {}
    return {
        "name": name,
        "processor": "triton",
        "processor_params": [f"--model-repository={repo}"],
        "metadata": metadata,
        **more,
    }


@pytest.mark.parametrize("bad", ["Group", "1abc", "a-b", "", "x" * 65, 7])
def test_a_bad_group_name_names_the_field(bad: Any) -> None:
    with pytest.raises(SpecError) as caught:
        validate_spec(_doc("svc", bad))
    assert [e.field for e in caught.value.errors] == ["metadata.group"]


def test_a_group_name_is_kept_in_the_spec() -> None:
    spec = validate_spec(_doc("svc", "canary_group"))
    assert spec.to_json()["metadata"]["group"] == "canary_group"


# -- the store ------------------------------------------------------------------------


def _create(store: Store, name: str, group: str | None = None) -> None:
    spec = validate_spec(_doc(name, group))
    store.create_service(name, spec.token, spec.to_json())


def _reasons(store: Store, name: str) -> list[str]:
    return [e.reason for e in store.events(name)]


def test_the_first_member_creates_the_group_grouping_and_later_ones_join_standalone(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "platform.db")
    _create(store, "prod", "shop")
    group = store.group("shop")
    assert group.traffic_mode == TrafficMode.AUTO and len(group.token) == 43
    _create(store, "canary", "shop")
    prod, canary = store.service("prod"), store.service("canary")
    assert (prod.group_name, prod.traffic_state, prod.weight) == ("shop", G, -1)
    assert (canary.group_name, canary.traffic_state, canary.weight) == ("shop", S, -1)
    assert [m.name for m in store.members("shop")] == ["canary", "prod"]
    assert "GroupJoined" in _reasons(store, "canary")
    store.close()


def test_the_group_goes_with_its_last_member(tmp_path: Path) -> None:
    store = Store(tmp_path / "platform.db")
    _create(store, "prod", "shop")
    _create(store, "canary", "shop")
    store.delete_service("prod")
    assert store.group("shop").name == "shop"  # canary is still in it
    store.delete_service("canary")
    with pytest.raises(NotFoundError):
        store.group("shop")
    assert store.groups() == []
    store.close()


def test_a_new_version_moves_the_service_between_groups(tmp_path: Path) -> None:
    store = Store(tmp_path / "platform.db")
    _create(store, "svc", "one")
    store.add_version("svc", validate_spec(_doc("svc", "two", token="token-abc-123")).to_json())
    assert store.service("svc").group_name == "two"
    assert [g.name for g in store.groups()] == ["two"]  # "one" went with its last member
    store.activate("svc", 1)  # switch back to version 1
    assert [g.name for g in store.groups()] == ["one"]
    store.add_version("svc", validate_spec(_doc("svc", token="token-abc-123")).to_json())
    assert store.groups() == [] and store.service("svc").group_name == ""
    assert _reasons(store, "svc").count("GroupLeft") == 3
    store.close()


def test_names_of_groups_and_services_do_not_clash(tmp_path: Path) -> None:
    store = Store(tmp_path / "platform.db")
    _create(store, "prod", "shop")
    with pytest.raises(SpecError) as caught:
        _create(store, "shop")
    assert caught.value.errors[0].field == "name"
    with pytest.raises(SpecError) as caught:
        _create(store, "other", "prod")
    assert caught.value.errors[0].field == "metadata.group"
    # refused whole: neither the service nor a group "prod" exists
    assert [s.name for s in store.services()] == ["prod"]
    assert [g.name for g in store.groups()] == ["shop"]
    with pytest.raises(SpecError):  # a move into a service's name changes nothing either
        store.add_version(
            "prod", validate_spec(_doc("prod", "prod", token="token-abc-123")).to_json()
        )
    assert store.service("prod").latest_version == 1
    assert store.service("prod").group_name == "shop"
    store.close()


def test_release_and_its_event_together_and_only_for_members(tmp_path: Path) -> None:
    store = Store(tmp_path / "platform.db")
    _create(store, "prod", "shop")
    _create(store, "alone")
    store.release("prod", 40, S)
    prod = store.service("prod")
    assert (prod.weight, prod.traffic_state) == (40, S)
    assert store.events("prod")[-1].reason == "TrafficReleased"
    with pytest.raises(PlatformError, match="in no service group"):
        store.release("alone", 40, G)
    assert "TrafficReleased" not in _reasons(store, "alone")
    store.close()


def test_an_older_database_gains_the_group_columns_and_table(tmp_path: Path) -> None:
    db = tmp_path / "platform.db"
    with sqlite3.connect(db) as conn:  # the services table before groups
        conn.executescript(
            """
            CREATE TABLE services (name TEXT PRIMARY KEY, token TEXT NOT NULL,
                desired TEXT NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
                message TEXT NOT NULL DEFAULT '', current_version INTEGER NOT NULL,
                latest_version INTEGER NOT NULL, created_at REAL NOT NULL,
                updated_at REAL NOT NULL, replicas INTEGER NOT NULL DEFAULT 1,
                cron_set_at REAL);
            CREATE TABLE versions (service TEXT NOT NULL REFERENCES services(name)
                ON DELETE CASCADE, version INTEGER NOT NULL, spec TEXT NOT NULL,
                created_at REAL NOT NULL, PRIMARY KEY (service, version));
            INSERT INTO services VALUES ('old', 'token-one-123', 'Running', 'Running', '', '',
                1, 1, 0, 0, 2, NULL);
            INSERT INTO versions VALUES ('old', 1, '{"name": "old"}', 0);
            """
        )
    store = Store(db)
    old = store.service("old")
    assert (old.group_name, old.traffic_state, old.weight, old.replicas) == ("", S, -1, 2)
    assert store.groups() == []
    store.add_version("old", {"name": "old", "metadata": {"group": "shop"}})
    assert store.service("old").traffic_state == G and store.group("shop").name == "shop"
    store.close()
    reopened = Store(db)  # no second migration
    assert reopened.service("old").group_name == "shop" and reopened.check() == []
    reopened.close()


# -- the control plane over a fake runtime ---------------------------------------------


class Plane:
    def __init__(self, tmp: Path) -> None:
        self.repo = tmp / "models"
        self.repo.mkdir()
        self.store = Store(tmp / "platform.db")
        self.runtime = FakeRuntime(auto_ready=True)
        self.routes = RouteTable()
        group = ResourceGroup("default", cpu=16, memory=64000, gpu=0)
        tuning = Tuning(backoff_base=0.0, stop_grace=0.1)
        self.reconciler = Reconciler(self.store, self.runtime, self.routes, group, tuning=tuning)
        self.control = ControlPlane(
            self.store, self.reconciler, Endpoints("pub.example", "10.0.0.1", 8080, 8081)
        )

    def create(self, name: str, group: str | None = None, instances: int = 1) -> None:
        doc = _doc(name, group, str(self.repo))
        doc["metadata"].update({"instance": instances, "memory": 100})
        self.control.create(doc)

    async def settle(self, ticks: int = 6) -> None:
        for _ in range(ticks):
            await self.reconciler.tick()
            for task in list(self.reconciler._syncing.values()):
                await task
            for name in [s.name for s in self.store.services()]:
                for inst in self.reconciler.instances(name):
                    if inst.stopping is not None:
                        await inst.stopping

    def weights(self, group: str) -> dict[str, int]:
        route = self.routes.group(group)
        assert route is not None
        return {m.service: m.weight for m in route.members}


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    p = Plane(tmp_path)
    yield p
    p.store.close()


async def test_the_group_route_follows_ready_instances_release_and_mode(plane: Plane) -> None:
    plane.create("prod", "shop", instances=2)
    plane.create("canary", "shop")
    route = plane.routes.group("shop")
    assert route is not None and route.token == plane.store.group("shop").token
    assert plane.weights("shop") == {"canary": 0, "prod": 1}  # no instance ready yet
    await plane.settle()
    assert plane.weights("shop") == {"canary": 0, "prod": 2}  # canary joined standalone
    plane.control.release("canary", {"TrafficState": "grouping"})
    assert plane.weights("shop") == {"canary": 1, "prod": 2}  # auto: instance counts
    plane.control.update_group("shop", {"TrafficMode": "customized"})
    plane.control.release("prod", {"Weight": 90})
    answer = plane.control.release("canary", {"Weight": 10})
    assert answer == {
        "Message": "Releasing service [canary] in group [shop] with weight [10], "
        "traffic state [grouping], service status: [Running]"
    }
    assert plane.weights("shop") == {"canary": 10, "prod": 90}
    view = plane.control.describe_group("shop")
    assert view["InternetEndpoint"] == "http://pub.example:8080/api/predict/shop"
    assert view["IntranetEndpoint"] == "http://10.0.0.1:8080/api/predict/shop"
    assert view["TrafficMode"] == "customized" and view["AccessToken"] == route.token
    assert [
        (m["ServiceName"], m["ReadyInstances"], m["TrafficShare"]) for m in view["Members"]
    ] == [
        ("canary", 1, 10.0),
        ("prod", 2, 90.0),
    ]
    assert plane.control.describe("canary")["weight"] == 10


async def test_the_group_route_goes_with_the_last_member(plane: Plane) -> None:
    plane.create("prod", "shop")
    await plane.settle()
    plane.control.delete("prod")
    await plane.settle()
    assert plane.routes.group("shop") is None
    with pytest.raises(NotFoundError):
        plane.control.describe_group("shop")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"Weight": 1001}, "Weight"),
        ({"Weight": -2}, "Weight"),
        ({"Weight": "10"}, "Weight"),
        ({"Weight": True}, "Weight"),
        ({"TrafficState": "on"}, "TrafficState"),
        ({"Weights": 3}, "Weights"),
        ({}, "nothing to release"),
        ([1], "JSON object"),
    ],
)
async def test_bad_release_bodies_name_the_field(plane: Plane, body: Any, field: str) -> None:
    plane.create("prod", "shop")
    with pytest.raises(PlatformError) as caught:
        plane.control.release("prod", body)
    assert caught.value.status == 400 and field in caught.value.message
    assert plane.store.service("prod").weight == -1


async def test_release_of_a_service_outside_groups_and_unknown_names(plane: Plane) -> None:
    plane.create("alone")
    with pytest.raises(PlatformError, match="in no service group") as caught:
        plane.control.release("alone", {"Weight": 10})
    assert caught.value.status == 400
    with pytest.raises(NotFoundError):
        plane.control.release("nobody", {"Weight": 10})
    with pytest.raises(NotFoundError):
        plane.control.update_group("nogroup", {"TrafficMode": "auto"})
    plane.create("prod", "shop")
    with pytest.raises(PlatformError, match="TrafficMode") as caught:
        plane.control.update_group("shop", {"TrafficMode": "random"})
    assert caught.value.status == 400
