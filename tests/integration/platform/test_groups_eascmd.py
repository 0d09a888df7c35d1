"""Service groups through ``eascmd`` and the API against a real platform (no traffic: the
gateway's side is tests/integration/platform/test_groups.py): a group made by its first
member, listed and described, a member released, bad input refused naming the field,
group and service names kept apart, and the group gone with its last member."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from openeas.platform.auth import load_key, sign
from tests.integration.platform.conftest import Platform, make_add_sub_repository, service_doc

GROUP = "shop"

Call = Callable[..., httpx.Response]


@pytest.fixture(scope="module")
def repo(platform: Platform) -> Path:
    return make_add_sub_repository(platform.home / "repo")


@pytest.fixture(scope="module")
def api(platform: Platform) -> Call:
    key = load_key(platform.home / "credentials")
    base = f"http://127.0.0.1:{platform.api_port}"

    def call(method: str, path: str, body: Any = None) -> httpx.Response:
        content = b"" if body is None else json.dumps(body).encode()
        headers = sign(key, method, path, content)
        return httpx.request(method, base + path, content=content, headers=headers, timeout=30)

    return call


def fails(platform: Platform, *args: str) -> str:
    result = platform.eascmd(*args)
    assert result.returncode != 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stderr


def create(platform: Platform, repo: Path, name: str, **metadata: Any) -> str:
    return platform.ok("create", str(platform.write_spec(service_doc(name, repo, **metadata))))


def members(view: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    return {
        m["ServiceName"]: (m["TrafficState"], m["Weight"], m["ReadyInstances"], m["TrafficShare"])
        for m in view["Members"]
    }


@pytest.fixture(scope="module")
def grouped(platform: Platform, repo: Path) -> None:
    create(platform, repo, "prod", group=GROUP)
    create(platform, repo, "canary", group=GROUP)


def test_the_first_member_creates_the_group_and_the_next_joins_standalone(
    platform: Platform, grouped: None
) -> None:
    [listed] = platform.json("group", "list")
    view = platform.json("group", "desc", GROUP)
    assert listed == view
    assert view["Name"] == GROUP and view["TrafficMode"] == "auto"
    assert view["InternetEndpoint"].endswith(f":{platform.http_port}/api/predict/{GROUP}")
    assert view["IntranetEndpoint"].endswith(f":{platform.http_port}/api/predict/{GROUP}")
    assert len(view["AccessToken"]) == 43
    assert view["AccessToken"] not in {
        platform.json("desc", n)["token"] for n in ("prod", "canary")
    }
    assert view["CreateTime"] and view["UpdateTime"]
    assert members(view) == {
        "canary": ("standalone", -1, 1, 0.0),
        "prod": ("grouping", -1, 1, 100.0),
    }
    table = platform.ok("group", "list")
    assert GROUP in table and "canary, prod" in table
    table = platform.ok("group", "desc", GROUP)
    assert " AccessToken | " in table and "100%" in table
    canary = platform.json("desc", "canary")
    assert (canary["group"], canary["traffic_state"], canary["weight"]) == (
        GROUP,
        "standalone",
        -1,
    )
    table = platform.ok("desc", "canary")
    for key, value in (("Group", "shop"), ("TrafficState", "standalone"), ("Weight", "-1")):
        assert re.search(rf"^\|\s+{key} \| {value}\s+\|$", table, re.MULTILINE), table
    joined = [e for e in platform.json("events", "canary") if e["reason"] == "GroupJoined"]
    assert joined and GROUP in joined[0]["message"]


def test_release_and_traffic_mode_change_the_shares(platform: Platform, grouped: None) -> None:
    out = platform.ok("release", "canary", "--traffic-state", "grouping", "--weight", "10")
    assert out.strip() == (
        "[OK] Releasing service [canary] in group [shop] with weight [10], "
        "traffic state [grouping], service status: [Running]"
    )
    view = platform.json("group", "desc", GROUP)
    assert members(view)["canary"] == ("grouping", 10, 1, 50.0)  # auto: 1 instance each
    assert platform.ok("group", "modify", GROUP, "--traffic-mode", "customized").startswith("[OK]")
    view = platform.json("group", "desc", GROUP)
    assert view["TrafficMode"] == "customized"
    assert members(view)["canary"][3] == 9.09 and members(view)["prod"][3] == 90.91  # 10:100
    platform.ok("release", "prod", "--weight", "90")
    assert members(platform.json("group", "desc", GROUP))["prod"][3] == 90.0
    released = [e for e in platform.json("events", "canary") if e["reason"] == "TrafficReleased"]
    assert "weight [10]" in released[-1]["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"Weight": 1001}, "Weight"),
        ({"Weight": "ten"}, "Weight"),
        ({"TrafficState": "half"}, "TrafficState"),
        ({"Share": 1}, "Share"),
        ({}, "nothing to release"),
    ],
)
def test_a_bad_release_is_400_naming_the_field(
    api: Call, grouped: None, body: dict[str, Any], field: str
) -> None:
    response = api("PUT", "/api/v1/services/canary/release", body)
    assert response.status_code == 400, response.text
    assert field in response.json()["message"]


def test_release_and_group_errors(platform: Platform, repo: Path, api: Call, grouped: None) -> None:
    assert api("PUT", "/api/v1/services/nobody/release", {"Weight": 1}).status_code == 404
    assert api("GET", "/api/v1/groups/nogroup").status_code == 404
    mode = api("PUT", f"/api/v1/groups/{GROUP}", {"TrafficMode": "random"})
    assert mode.status_code == 400 and "TrafficMode" in mode.json()["message"]
    create(platform, repo, "alone")
    alone = api("PUT", "/api/v1/services/alone/release", {"Weight": 1})
    assert alone.status_code == 400 and "in no service group" in alone.json()["message"]
    assert "in no service group" in fails(platform, "release", "alone", "--weight", "5")
    assert "--weight" in fails(platform, "release", "canary", "--weight", "5000")
    assert "nothing to release" in fails(platform, "release", "canary")
    assert "not found" in fails(platform, "group", "desc", "nogroup")
    assert "--traffic-mode" in fails(platform, "group", "modify", GROUP, "--traffic-mode", "x")
    assert platform.json("desc", "alone")["group"] is None


def test_group_and_service_names_do_not_clash(
    platform: Platform, repo: Path, api: Call, grouped: None
) -> None:
    doc = service_doc(GROUP, repo)
    refused = api("POST", "/api/v1/services", doc)
    assert refused.status_code == 400
    assert refused.json()["errors"] == [
        {"field": "name", "reason": "'shop' is the name of a service group"}
    ]
    stderr = fails(
        platform, "create", str(platform.write_spec(service_doc("other", repo, group="prod")))
    )
    assert "metadata.group: 'prod' is the name of a service" in stderr
    stderr = fails(platform, "modify", "canary", "-Dmetadata.group=prod")
    assert "metadata.group: 'prod' is the name of a service" in stderr
    assert platform.json("desc", "canary")["current_version"] == 1  # nothing changed
    names = {s["name"] for s in platform.json("list")}
    assert GROUP not in names and "other" not in names


def test_a_member_moves_out_and_the_group_goes_with_its_last_member(
    platform: Platform, grouped: None
) -> None:
    platform.ok("modify", "canary", "-Dmetadata.group=null")
    assert platform.json("desc", "canary")["group"] is None
    assert set(members(platform.json("group", "desc", GROUP))) == {"prod"}
    platform.ok("delete", "prod", "-y")
    assert platform.json("group", "list") == []
    assert "not found" in fails(platform, "group", "desc", GROUP)
    platform.ok("modify", "canary", f"-Dmetadata.group={GROUP}")  # a new group, same name
    view = platform.json("group", "desc", GROUP)
    assert members(view)["canary"][0] == "grouping"  # its creator takes its traffic
