"""The web console in a real browser (Debian's chromium driven by playwright) against a
real platform: sign-in with the credentials file's key (and a wrong one), the services
list, scaling, releasing a group member, the request-rate chart from /metrics, the
security headers, and data shown as text.

CI needs ``/usr/bin/chromium`` (scripts/bootstrap.sh installs it as root) and the
``playwright`` package (the dev extra); without them these tests fail saying so.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from openeas.platform.auth import load_key
from tests.integration.platform.conftest import Platform, make_add_sub_repository, service_doc

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
GROUP = "shop"
#: a repository path that does not exist: the service fails with it in its message
MARKUP = '<img src=x onerror="window.pwned=1"><b>bold</b>'
WAIT_MS = 90_000

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the failure below says what to install
    sync_playwright = None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        pytest.fail("the console tests need the playwright package: pip install playwright")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"the console tests need Debian's chromium at {CHROMIUM}: apt-get install -y "
            "chromium (scripts/bootstrap.sh does it when run as root)"
        )
    with sync_playwright() as pw:
        # launch() gives the browser a fresh temporary profile (user-data-dir), removed
        # on close; each test's context has its own storage.
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def services(platform: Platform) -> dict[str, str]:
    repo = make_add_sub_repository(platform.home / "repo")
    for name in ("web", "canary"):
        platform.ok("create", str(platform.write_spec(service_doc(name, repo, group=GROUP))))
    doc = service_doc("marked", platform.home / MARKUP)
    failed = platform.eascmd("create", str(platform.write_spec(doc, "marked.json")))
    assert "SyncFailed" in failed.stdout + failed.stderr, failed
    return {"web": platform.json("desc", "web")["token"]}


def console(platform: Platform) -> str:
    return f"http://127.0.0.1:{platform.api_port}/console/"


@pytest.fixture
def page(browser: Browser, platform: Platform, services: dict[str, str]) -> Iterator[Page]:
    """A signed-in page (a fresh context: its own sessionStorage) on the services list."""
    context = browser.new_context()
    page = context.new_page()
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if m.type == "error" else None)
    key = load_key(platform.home / "credentials")
    sign_in(page, platform, key.id, key.secret)
    yield page
    context.close()
    assert not [v for v in violations if "Content Security Policy" in v], violations


def sign_in(page: Page, platform: Platform, key_id: str, secret: str) -> None:
    page.goto(console(platform))
    page.fill("#key-id", key_id)
    page.fill("#key-secret", secret)
    page.click("#sign-in button[type=submit]")


def test_sign_in_shows_the_services_running(page: Page) -> None:
    row = page.locator("#services-table tr", has_text="web")
    expect(row).to_contain_text("Running", timeout=WAIT_MS)
    expect(row).to_contain_text(GROUP)
    assert page.evaluate("sessionStorage.getItem('openeas.console.keyId')")
    assert "secret" not in page.url
    page.reload()  # the tab keeps its key
    expect(page.locator("#services-table")).to_contain_text("web", timeout=WAIT_MS)
    page.click("#sign-out")
    expect(page.locator("#sign-in")).to_be_visible()
    assert page.locator("#services-table").count() == 0
    assert page.evaluate("sessionStorage.length") == 0


def test_a_wrong_secret_shows_the_apis_error_and_no_data(
    browser: Browser, platform: Platform, services: dict[str, str]
) -> None:
    context = browser.new_context()
    page = context.new_page()
    key = load_key(platform.home / "credentials")
    sign_in(page, platform, key.id, key.secret + "x")
    expect(page.locator("#error")).to_contain_text("signature does not match", timeout=WAIT_MS)
    expect(page.locator("#sign-in")).to_be_visible()
    assert page.locator("#services-table").count() == 0
    assert page.evaluate("sessionStorage.length") == 0
    context.close()


def test_a_stored_key_the_api_refuses_returns_to_the_sign_in(page: Page) -> None:
    expect(page.locator("#services-table")).to_contain_text("web", timeout=WAIT_MS)
    page.evaluate("sessionStorage.setItem('openeas.console.secret', 'rotated')")
    page.reload()
    expect(page.locator("#error")).to_contain_text("signature does not match", timeout=WAIT_MS)
    expect(page.locator("#sign-in")).to_be_visible()
    assert page.locator("#services-table").count() == 0
    assert page.evaluate("sessionStorage.length") == 0


def test_the_console_answers_with_a_strict_content_security_policy(platform: Platform) -> None:
    headers = httpx.get(console(platform), timeout=10).headers
    assert "default-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"


def test_setting_the_instance_count_reaches_the_platform(page: Page, platform: Platform) -> None:
    page.goto(console(platform) + "#/services/web")
    expect(page.locator("#service-status")).to_have_text("Running", timeout=WAIT_MS)
    page.fill("#instance-count", "2")
    page.click("#scale")
    expect(page.locator("#notice")).to_contain_text("2 instances requested", timeout=WAIT_MS)
    assert platform.json("desc", "web")["instances"]["total"] == 2


def test_releasing_a_member_reaches_the_group(page: Page, platform: Platform) -> None:
    page.goto(console(platform) + "#/groups")
    row = page.locator(f"[data-group={GROUP}] tr[data-member=canary]")
    expect(row).to_contain_text("standalone", timeout=WAIT_MS)
    row.locator(".release-weight").fill("40")
    row.locator(".release-state").select_option("grouping")
    row.locator(".release").click()
    expect(page.locator("#notice")).to_contain_text("Releasing service [canary]", timeout=WAIT_MS)
    expect(row).to_contain_text("grouping", timeout=WAIT_MS)
    view = platform.json("group", "desc", GROUP)
    [canary] = [m for m in view["Members"] if m["ServiceName"] == "canary"]
    assert (canary["Weight"], canary["TrafficState"]) == (40, "grouping")
    # customized: shares follow the Weights, web's unset -1 counting as 100 (40/140)
    page.locator(f"[data-group={GROUP}] .traffic-mode").select_option("customized")
    page.locator(f"[data-group={GROUP}] .apply-mode").click()
    expect(page.locator(f"[data-group={GROUP}] .mode")).to_have_text("customized", timeout=WAIT_MS)
    expect(row).to_contain_text("28.57%", timeout=WAIT_MS)
    assert platform.json("group", "desc", GROUP)["TrafficMode"] == "customized"


def _infer(platform: Platform, token: str, count: int) -> None:
    doc: dict[str, Any] = {
        "inputs": [
            {"name": n, "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}
            for n in ("INPUT0", "INPUT1")
        ]
    }
    url = f"http://{platform.gateway_url}/api/predict/web/v2/models/simple/infer"
    with httpx.Client(timeout=30) as client:
        for _ in range(count):
            answer = client.post(url, content=json.dumps(doc), headers={"Authorization": token})
            assert answer.status_code == 200, answer.text


def test_the_chart_shows_the_request_rate(
    page: Page, platform: Platform, services: dict[str, str]
) -> None:
    page.goto(console(platform) + "#/services/web")
    expect(page.locator("#service-status")).to_have_text("Running", timeout=WAIT_MS)
    chart = page.locator("#rate-chart")
    # a first scrape before the requests (any later one sees them)
    expect(chart).to_have_attribute("data-points", re.compile(r"^\d+$"), timeout=WAIT_MS)
    _infer(platform, services["web"], 20)
    # (wait_for_function would evaluate a string: the console's CSP refuses that)
    expect(chart).to_have_attribute("data-max-rate", re.compile(r"^[0-9.e+-]+$"), timeout=WAIT_MS)
    expect(chart).not_to_have_attribute("data-max-rate", "0", timeout=WAIT_MS)
    assert float(chart.get_attribute("data-max-rate") or "0") > 0
    assert chart.locator("canvas").count() == 1  # uPlot drew it


def test_the_autoscaler_and_its_last_decision(page: Page, platform: Platform) -> None:
    platform.ok("autoscale", "web", "-Dmin=2", "-Dmax=2", "-Dstrategies.qps=100")
    page.goto(console(platform) + "#/services/web")
    expect(page.locator("#service-autoscaler")).to_have_text("on", timeout=WAIT_MS)
    # the controller decides once a second; the page shows its last decision and reason
    expect(page.locator("#service-decision")).to_contain_text("2 -> 2 (qps", timeout=WAIT_MS)


def test_data_is_shown_as_text(page: Page, platform: Platform) -> None:
    page.goto(console(platform) + "#/services/marked")
    message = page.locator("#service-message")
    expect(message).to_contain_text(MARKUP, timeout=WAIT_MS)
    assert message.locator("img, b").count() == 0
    assert page.evaluate("window.pwned") is None


def test_stop_and_start(page: Page, platform: Platform) -> None:
    page.goto(console(platform) + "#/services/canary")
    status = page.locator("#service-status")
    expect(status).to_have_text("Running", timeout=WAIT_MS)
    page.click("#stop")
    expect(status).to_have_text("Stopped", timeout=WAIT_MS)
    assert platform.json("desc", "canary")["status"] == "Stopped"
    page.click("#start")
    expect(status).to_have_text("Running", timeout=WAIT_MS)


def test_delete_asks_for_the_name_first(page: Page, platform: Platform) -> None:
    page.goto(console(platform) + "#/services/marked")
    expect(page.locator("#service-status")).to_have_text("Failed", timeout=WAIT_MS)
    page.click("#delete")
    page.fill("#delete-confirm-name", "web")
    page.click("#delete-confirmed")
    expect(page.locator("#error")).to_contain_text("type the service's name (marked)")
    assert platform.json("desc", "marked")["desired"] != "Deleted"
    page.fill("#delete-confirm-name", "marked")
    page.click("#delete-confirmed")
    expect(page.locator("#services")).to_be_visible(timeout=WAIT_MS)  # back on the list
    assert "marked" not in {s["name"] for s in platform.json("list") if s["desired"] != "Deleted"}


METRICS_PAGE = """# HELP openeas_gateway_requests_total Requests
# TYPE openeas_gateway_requests_total counter
openeas_gateway_requests_total{service="web",protocol="http",code="200"} 10.0
openeas_gateway_requests_total{service="web",protocol="grpc",code="0"} 5.0
openeas_gateway_requests_total{service="web_2",protocol="http",code="200"} 99.0
openeas_gateway_requests_total{code="200",service="web",protocol="http\\\\\\"x"} 1.0
openeas_gateway_request_duration_seconds_sum{service="web",protocol="http"} 0.5
openeas_gateway_request_duration_seconds_count{service="web",protocol="http"} 16.0
openeas_gateway_request_duration_seconds_bucket{service="web",protocol="http",le="+Inf"} 16.0
"""


def test_the_chart_series_from_metrics_pages(page: Page) -> None:
    # The page's own module, in the browser (dynamic import is allowed by the CSP).
    result = page.evaluate(
        """async (text) => {
            const m = await import("./metrics.js");
            const totals = m.serviceTotals(text, "web");
            const series = new m.RateSeries(300);
            series.add(100, { requests: 0, seconds: 0, answered: 0 });
            series.add(102, totals);
            series.add(104, { requests: 3, seconds: 0, answered: 0 }); // gateway restarted
            series.add(106, { requests: 7, seconds: 0.1, answered: 4 });
            return { totals, data: series.data() };
        }""",
        METRICS_PAGE,
    )
    assert result["totals"] == {"requests": 16, "seconds": 0.5, "answered": 16}
    times, rates, latencies = result["data"]
    assert times == [102, 106]
    assert rates == [8, 2]
    assert latencies == [pytest.approx(31.25), pytest.approx(25.0)]
