"""Service groups through the gateway: one endpoint and token, requests spread over the
member services by smooth weighted round robin, each served as a request to its member.

Two member services, each over one real instance (i0 and i1), so that each instance's
own statistics count what its service got.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from openeas.gateway import ServiceLimits
from openeas.gateway.routes import GroupMember, GroupRoute
from openeas.testing.gateway import GatewayThread
from tests.integration.gateway.conftest import Cluster, gw_request, json_infer_body

MODEL = "identity_fp32"
DATA = np.arange(4, dtype=np.float32).reshape(1, 4)


@dataclass
class Group:
    """A group ``name`` (token ``token``) of services ``prod`` (on i0) and ``canary``
    (on i1), each with its own token."""

    gateway: GatewayThread
    cluster: Cluster
    name: str
    token: str
    prod: str
    canary: str

    def publish(self, prod: int, canary: int) -> None:
        members = (GroupMember(self.prod, prod), GroupMember(self.canary, canary))
        route = GroupRoute(self.name, self.token, members)
        self.gateway.call(self.gateway.routes.update_group, route)

    def member_token(self, service: str) -> str:
        return f"own-token-of-{service}"

    def served(self, send: Callable[[], Any], n: int) -> tuple[int, int]:
        """Run ``send`` ``n`` times; the inferences i0 (prod) and i1 (canary) ran."""
        before = self.cluster.success_counts(MODEL)
        for _ in range(n):
            send()
        after = self.cluster.success_counts(MODEL)
        return after[0] - before[0], after[1] - before[1]


@pytest.fixture
def group(gateway: GatewayThread, cluster: Cluster, service_name: str) -> Group:
    # short and unique per test (and parameter): the members' names add to it
    name = f"{service_name[:30]}-{hashlib.sha1(service_name.encode()).hexdigest()[:6]}"
    g = Group(gateway, cluster, f"{name}-g", f"group-token-{name}", f"{name}-prod", f"{name}-can")
    upstreams = cluster.upstreams
    gateway.publish(g.prod, g.member_token(g.prod), upstreams[:1])
    gateway.publish(g.canary, g.member_token(g.canary), upstreams[1:2])
    return g


def _http_infer(gateway: GatewayThread, name: str, token: str) -> Callable[[], Any]:
    client = httpclient.InferenceServerClient(gateway.http_url(name))
    inp = httpclient.InferInput("INPUT0", list(DATA.shape), "FP32")
    inp.set_data_from_numpy(DATA)

    def send() -> Any:
        result = client.infer(MODEL, [inp], headers={"Authorization": token})
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), DATA)

    return send


def _grpc_infer(gateway: GatewayThread, headers: dict[str, str]) -> Callable[[], Any]:
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    inp = grpcclient.InferInput("INPUT0", list(DATA.shape), "FP32")
    inp.set_data_from_numpy(DATA)

    def send() -> Any:
        result = client.infer(MODEL, [inp], headers=headers)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), DATA)

    return send


def _answered(gateway: GatewayThread, service: str, protocol: str) -> int:
    """The gateway's count of ``service``'s answered requests (its metrics)."""
    total = 0.0
    for family in text_string_to_metric_families(gateway.metrics_text()):
        if family.name != "openeas_gateway_requests":
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels.get("service") == service and labels.get("protocol") == protocol:
                total += sample.value if sample.name.endswith("_total") else 0
    return int(total)


# -- the split ------------------------------------------------------------------------


def test_http_requests_to_a_group_split_exactly_by_weight(group: Group) -> None:
    group.publish(prod=90, canary=10)
    send = _http_infer(group.gateway, group.name, group.token)
    assert group.served(send, 100) == (90, 10)
    # served and counted as requests to the members (their metrics, not the group's)
    assert _answered(group.gateway, group.prod, "http") == 90
    assert _answered(group.gateway, group.canary, "http") == 10
    assert _answered(group.gateway, group.name, "http") == 0


@pytest.mark.parametrize("by", ["x-eas-service", "token"])
def test_grpc_calls_to_a_group_split_exactly_by_weight(group: Group, by: str) -> None:
    group.publish(prod=90, canary=10)
    headers = {"authorization": group.token}
    if by == "x-eas-service":
        headers["x-eas-service"] = group.name
    # else the group is found from its token (unique to this group)
    send = _grpc_infer(group.gateway, headers)
    assert group.served(send, 100) == (90, 10)
    assert _answered(group.gateway, group.prod, "grpc") == 90
    assert _answered(group.gateway, group.canary, "grpc") == 10


def test_changed_weights_apply_to_the_next_requests(group: Group) -> None:
    group.publish(prod=1, canary=1)
    send = _http_infer(group.gateway, group.name, group.token)
    assert group.served(send, 10) == (5, 5)
    group.publish(prod=3, canary=1)
    assert group.served(send, 20) == (15, 5)


def test_a_standalone_member_gets_none_of_the_groups_traffic(group: Group) -> None:
    group.publish(prod=1, canary=0)  # the control plane publishes a standalone one as 0
    send = _http_infer(group.gateway, group.name, group.token)
    assert group.served(send, 20) == (20, 0)
    # its own endpoint still serves it, with its own token
    own = _http_infer(group.gateway, group.canary, group.member_token(group.canary))
    assert group.served(own, 3) == (0, 3)


# -- tokens ---------------------------------------------------------------------------


def test_a_group_needs_its_own_token_over_http(group: Group) -> None:
    group.publish(prod=1, canary=1)
    path = f"/api/predict/{group.name}/v2/models/{MODEL}/infer"
    body = json_infer_body([1.0, 2.0])
    member = {"Authorization": group.member_token(group.prod)}
    for headers in (member, {}, {"Authorization": "wrong"}):
        answer = gw_request(group.gateway, "POST", path, body, headers)
        assert answer.status == 401, (headers, answer.body)
        assert f"service group '{group.name}'" in answer.error()
    assert (
        gw_request(group.gateway, "POST", path, body, {"Authorization": group.token}).status == 200
    )
    # nor is the group's token a member's
    own = f"/api/predict/{group.prod}/v2/models/{MODEL}/infer"
    assert (
        gw_request(group.gateway, "POST", own, body, {"Authorization": group.token}).status == 401
    )


def test_a_large_body_to_a_group_is_checked_on_its_head(group: Group) -> None:
    """Bodies over 64 KiB are refused before they are read: by the group's token."""
    group.publish(prod=1, canary=1)
    path = f"/api/predict/{group.name}/v2/models/{MODEL}/infer"
    values = [1.0] * 30_000
    body = json_infer_body(values)
    assert len(body) > 64 * 1024
    member = {"Authorization": group.member_token(group.prod)}
    assert gw_request(group.gateway, "POST", path, body, member).status == 401
    answer = gw_request(group.gateway, "POST", path, body, {"Authorization": group.token})
    assert answer.status == 200 and answer.json()["outputs"][0]["data"] == values


def test_a_group_needs_its_own_token_over_grpc(group: Group) -> None:
    group.publish(prod=1, canary=1)
    client = grpcclient.InferenceServerClient(group.gateway.grpc_url)
    try:
        for token in (group.member_token(group.prod), None):
            headers = {"x-eas-service": group.name}
            if token:
                headers["authorization"] = token
            with pytest.raises(InferenceServerException) as info:
                client.is_server_live(headers=headers)
            assert info.value.status() == str(grpc.StatusCode.UNAUTHENTICATED)
        headers = {"x-eas-service": group.name, "authorization": group.token}
        assert client.is_server_live(headers=headers)
    finally:
        client.close()


# -- no member, no group ----------------------------------------------------------------


def test_a_group_without_a_weighted_member_is_503(group: Group) -> None:
    group.publish(prod=0, canary=0)
    path = f"/api/predict/{group.name}/v2/health/ready"
    answer = gw_request(group.gateway, "GET", path, headers={"Authorization": group.token})
    assert answer.status == 503
    assert "has no member service that takes its traffic" in answer.error()
    client = grpcclient.InferenceServerClient(group.gateway.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as info:
            client.is_server_ready(headers={"authorization": group.token})
        assert info.value.status() == str(grpc.StatusCode.UNAVAILABLE)
        assert "no member service" in info.value.message()
    finally:
        client.close()


def test_a_member_without_instances_answers_its_own_503_or_holds(group: Group) -> None:
    """All members at zero ready instances but grouping: the control plane publishes them
    with weight 1, and the request gets its member's own answer."""
    gateway = group.gateway
    group.publish(prod=1, canary=0)
    gateway.publish(group.prod, group.member_token(group.prod), [])
    path = f"/api/predict/{group.name}/v2/health/ready"
    answer = gw_request(gateway, "GET", path, headers={"Authorization": group.token})
    assert answer.status == 503 and group.prod in answer.error()
    # a held member (scaled to zero): its queue and keepalive, as for its own endpoint
    limits = ServiceLimits(keepalive_ms=300)
    gateway.publish(group.prod, group.member_token(group.prod), [], limits=limits, hold=True)
    answer = gw_request(gateway, "GET", path, headers={"Authorization": group.token})
    assert answer.status == 408 and "rpc.keepalive (300 ms)" in answer.error()


def test_a_removed_group_is_404(group: Group) -> None:
    group.publish(prod=1, canary=1)
    path = f"/api/predict/{group.name}/v2/health/ready"
    auth = {"Authorization": group.token}
    assert gw_request(group.gateway, "GET", path, headers=auth).status == 200
    group.gateway.call(group.gateway.routes.remove_group, group.name)
    answer = gw_request(group.gateway, "GET", path, headers=auth)
    assert answer.status == 404 and json.loads(answer.body)["error"]
    client = grpcclient.InferenceServerClient(group.gateway.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as info:
            client.is_server_ready(
                headers={"x-eas-service": group.name, "authorization": group.token}
            )
        assert info.value.status() == str(grpc.StatusCode.NOT_FOUND)
        with pytest.raises(InferenceServerException) as info:  # the token names nothing now
            client.is_server_ready(headers={"authorization": group.token})
        assert info.value.status() == str(grpc.StatusCode.UNAUTHENTICATED)
    finally:
        client.close()
