"""The web console's files on the API port (in-process ASGI): the page, its modules and
the vendored chart library with their security headers; nothing else under /console/."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PurePosixPath

import pytest
from fastapi.testclient import TestClient

from openeas.platform.api import create_app
from openeas.platform.auth import AccessKey
from openeas.platform.console import STATIC, console_url

KEY = AccessKey("AKID", "secret-value")


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(None, {KEY.id: KEY}))  # type: ignore[arg-type]


def _secure(headers: object) -> None:
    csp = headers["content-security-policy"]  # type: ignore[index]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers["x-content-type-options"] == "nosniff"  # type: ignore[index]
    assert headers["referrer-policy"] == "no-referrer"  # type: ignore[index]


def test_the_page_and_its_modules_are_served_with_strict_headers(client: TestClient) -> None:
    page = client.get("/console/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.text == (STATIC / "index.html").read_text()
    _secure(page.headers)
    for rel, media in [
        ("app.js", "text/javascript"),
        ("vendor/uPlot.esm.js", "text/javascript"),
        ("vendor/uPlot.min.css", "text/css"),
        ("vendor/uPlot.LICENSE", "text/plain"),
    ]:
        answer = client.get(f"/console/{rel}")
        assert answer.status_code == 200, rel
        assert answer.headers["content-type"].startswith(media), rel
        _secure(answer.headers)
    redirect = client.get("/console", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"] == "/console/"


def test_an_unknown_file_is_the_apis_not_found(client: TestClient) -> None:
    answer = client.get("/console/nope.js")
    assert answer.status_code == 404 and answer.json()["code"] == "NotFound"


@pytest.mark.parametrize("rel", ["nope.js", "../api.py", "..%2F__init__.py", "vendor/../../api.py"])
def test_nothing_but_the_console_files(client: TestClient, rel: str) -> None:
    answer = client.get(f"/console/{rel}")
    assert answer.status_code == 404
    assert "from __future__" not in answer.text


def test_the_page_holds_no_inline_script_or_style() -> None:
    # The CSP refuses them; this keeps the page from depending on them.
    page = (STATIC / "index.html").read_text()
    assert "<script>" not in page and "<style" not in page and " style=" not in page
    assert 'type="module" src="app.js"' in page


def test_every_module_the_console_imports_is_shipped() -> None:
    for module in STATIC.glob("*.js"):
        for target in re.findall(r'from "\./([^"]+)"', module.read_text()):
            assert (STATIC / target).is_file(), f"{module.name} imports {target}"
    assert Path(STATIC / "vendor" / "uPlot.LICENSE").read_text().startswith("The MIT License")


def test_the_console_url_for_the_log_line() -> None:
    assert console_url("0.0.0.0", 8080) == "http://127.0.0.1:8080/console/"
    assert console_url("10.0.0.5", 80) == "http://10.0.0.5:80/console/"
    assert console_url("::1", 81) == "http://[::1]:81/console/"


def test_the_wheel_ships_every_console_file() -> None:
    root = Path(__file__).parents[2]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = data["package-data"]["openeas.platform.console"]
    for path in STATIC.rglob("*"):
        if path.is_file():
            rel = PurePosixPath(path.relative_to(STATIC.parent).as_posix())
            # setuptools' globs, like PurePath.match's, do not let * cross a "/"
            assert any(rel.match(g) for g in globs), f"{rel} is not package data"
