"""The control plane's book of gateway traffic reports (pure logic, the clock passed in),
and its endpoint on the API (in-process ASGI)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from openeas.platform.api import create_app
from openeas.platform.auth import AccessKey
from openeas.platform.traffic import (
    GATEWAY_TTL,
    MAX_REPORT_BYTES,
    ReportError,
    ServiceTraffic,
    TrafficBook,
)


def _doc(boot: str = "b1", **services: tuple[int, int, int, int]) -> dict[str, Any]:
    """A report: service -> (answered, in_flight, waiting, ready)."""
    keys = ("answered", "in_flight", "waiting", "ready")
    return {
        "boot": boot,
        "services": {
            name: dict(zip(keys, counts, strict=True)) for name, counts in services.items()
        },
    }


def _steady(book: TrafficBook, gateway: str, rate: int, seconds: int, start: float = 0.0) -> float:
    """Reports once a second of a gateway answering ``rate`` requests/s; the last time."""
    now = start
    for second in range(seconds + 1):
        now = start + second
        book.report(gateway, _doc(svc=(rate * second, 2, 0, 1)), now)
    return now


def test_rate_comes_from_the_deltas_of_the_cumulative_counts() -> None:
    book = TrafficBook()
    assert book.sample("svc", 0.0) == ServiceTraffic(0.0, 0, 0)
    book.report("g", _doc(svc=(1000, 0, 0, 1)), 0.0)
    assert book.sample("svc", 0.0).rate == 0.0  # one point: no rate yet (not 1000/s)
    now = _steady(book, "g", 40, 8, start=1.0)
    # The count jumped from 1000 to 0 at t=1 (treated as a restart, see below), then
    # grows 40/s: the window's rate is 40.
    assert book.sample("svc", now).rate == pytest.approx(40.0)
    assert book.sample("svc", now).in_flight == 2


def test_a_gateway_restart_that_resets_its_counters_gives_no_negative_or_huge_rate() -> None:
    book = TrafficBook(window=4.0)
    for second in range(6):  # 100/s up to 500
        book.report("g", _doc(svc=(100 * second, 0, 0, 1)), float(second))
    # restarted (new boot): its counts start from zero and grow 100/s again
    for second in range(6, 10):
        book.report("g", _doc("b2", svc=(100 * (second - 5), 0, 0, 1)), float(second))
        rate = book.sample("svc", float(second)).rate
        assert 90.0 <= rate <= 110.0, (second, rate)
    # the same boot token but a count that went down (e.g. a counter reset): no negative
    book.report("g", _doc("b2", svc=(10, 0, 0, 1)), 10.0)
    assert 0.0 <= book.sample("svc", 10.0).rate <= 110.0


def test_two_workers_are_summed() -> None:
    book = TrafficBook()
    for second in range(6):
        book.report("gw-0", _doc(svc=(30 * second, 1, 2, 1)), float(second))
        book.report("gw-1", _doc(svc=(70 * second, 3, 0, 1)), float(second))
    traffic = book.sample("svc", 5.0)
    assert traffic.rate == pytest.approx(100.0)
    assert traffic.waiting == 2
    assert traffic.in_flight == 1 + 2 + 3  # in flight plus waiting, over both
    assert sorted(book.gateways(5.0)) == ["gw-0", "gw-1"]


def test_a_silent_gateway_is_forgotten() -> None:
    book = TrafficBook()
    _steady(book, "quiet", 50, 5)
    now = _steady(book, "busy", 20, 5)
    assert book.sample("svc", now).rate == pytest.approx(70.0)
    for second in range(1, int(GATEWAY_TTL) + 2):  # only "busy" keeps reporting
        book.report("busy", _doc(svc=(20 * (5 + second), 0, 0, 1)), now + second)
    later = now + GATEWAY_TTL + 1
    assert book.sample("svc", later).rate == pytest.approx(20.0)
    assert book.gateways(later) == ["busy"]


def test_services_that_disappear_are_dropped() -> None:
    book = TrafficBook()
    book.report("g", _doc(a=(1, 0, 0, 1), b=(1, 0, 0, 1)), 0.0)
    assert book.services(0.0) == {"a", "b"}
    book.report("g", _doc(a=(2, 0, 0, 1)), 1.0)
    assert book.services(1.0) == {"a"}
    assert book.sample("b", 1.0) == ServiceTraffic()


def test_waiting_without_an_instance_calls_back_at_once() -> None:
    woken: list[str] = []
    book = TrafficBook(on_waiting=woken.append)
    book.report("g", _doc(busy=(0, 4, 3, 2), idle=(0, 0, 0, 0)), 0.0)
    assert woken == []  # requests wait for busy instances, not for a first one
    book.report("g", _doc(cold=(0, 0, 5, 0)), 0.1)
    assert woken == ["cold"]
    assert book.sample("cold", 0.1) == ServiceTraffic(0.0, 5, 5)


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ([], "JSON object"),
        ({"services": []}, "services"),
        ({"services": {"s": {"answered": -1}}}, "services.s.answered"),
        ({"services": {"s": {"waiting": "3"}}}, "services.s.waiting"),
        ({"services": {"s": {"ready": True}}}, "services.s.ready"),
        ({"services": {"s": []}}, "services.s"),
        ({"boot": 7, "services": {}}, "boot"),
    ],
)
def test_a_malformed_report_is_refused_naming_the_field_and_records_nothing(
    doc: Any, field: str
) -> None:
    book = TrafficBook()
    with pytest.raises(ReportError, match=field.replace(".", r"\.")):
        book.report("g", doc, 0.0)
    assert book.gateways(0.0) == []


# -- the endpoint ----------------------------------------------------------------------

KEY = AccessKey("AKID", "secret-value")
PATH = "/api/v1/gateway/traffic"
BEARER = {"Authorization": "Bearer gw-secret"}


def _client(book: TrafficBook) -> TestClient:
    app = create_app(object(), {KEY.id: KEY}, gateway_token="gw-secret", traffic=book)  # type: ignore[arg-type]
    return TestClient(app, raise_server_exceptions=False)


def test_the_endpoint_takes_reports_with_the_gateway_credential_and_answers_samples() -> None:
    book = TrafficBook()
    client = _client(book)
    report = {"gateway": "gw-0", **_doc(svc=(5, 1, 0, 1))}
    assert client.post(PATH, json=report, headers={"Authorization": "Bearer no"}).status_code == 401
    assert client.post(PATH, json=report).status_code == 401
    assert client.post(PATH, json=report, headers=BEARER).json() == {"accepted": True}
    answer = client.get(PATH, headers=BEARER).json()
    assert answer["gateways"] == ["gw-0"]
    assert answer["services"]["svc"] == {"rate": 0.0, "in_flight": 1, "waiting": 0}


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "not JSON"),
        (b"[]", 400, "JSON object"),
        (b'{"services": {}}', 400, "gateway"),
        (b'{"gateway": "g", "services": {"s": {"answered": 1.5}}}', 400, "services.s.answered"),
        (b" " * (MAX_REPORT_BYTES + 1), 413, "at most"),
    ],
)
def test_bad_reports_get_a_json_error_and_the_api_keeps_serving(
    body: bytes, status: int, words: str
) -> None:
    book = TrafficBook()
    client = _client(book)
    response = client.post(
        PATH, content=body, headers={**BEARER, "content-type": "application/json"}
    )
    assert response.status_code == status
    assert words in response.json()["message"]
    assert client.get(PATH, headers=BEARER).json() == {"gateways": [], "services": {}}


def test_a_signed_report_is_taken_too() -> None:
    import json

    from openeas.platform.auth import sign

    book = TrafficBook()
    client = _client(book)
    body = json.dumps({"gateway": "gw-9", **_doc(svc=(1, 0, 0, 1))}).encode()
    headers = {**sign(KEY, "POST", PATH, body), "content-type": "application/json"}
    assert client.post(PATH, content=body, headers=headers).status_code == 200
    assert book.gateways(time.monotonic()) == ["gw-9"]
