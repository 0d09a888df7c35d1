"""The web console: static HTML, CSS and ES modules under ``/console/`` on the API port.

The page signs every ``/api/v1`` request in the browser with the user's access key (see
``static/api.js`` and :mod:`openeas.platform.auth`), so the console itself needs no
session, cookie or server-side state: this module only serves the files in ``static/``
(a fixed list, read once) with headers that keep the page from running anything but
them (see docs/console.md, "Security").
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse, Response

from openeas.platform.errors import NotFoundError

PATH = "/console/"
STATIC = Path(__file__).parent / "static"

#: Only files this page loads, from this origin; no inline script or style (every
#: element's data goes in as text), no framing, no forms posting elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The files change with the package; a browser revalidates rather than mixing versions.
    "Cache-Control": "no-cache",
}
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".LICENSE": "text/plain; charset=utf-8",
}


def console_url(host: str, port: int) -> str:
    """The console's address for a log line: a wildcard bind is shown as localhost, where
    the browser's WebCrypto works over plain http (elsewhere it needs https)."""
    shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}{PATH}"


def _files(root: Path) -> dict[str, tuple[bytes, str]]:
    """Every servable file under ``root`` by its relative path: its bytes and type."""
    files = {}
    for path in sorted(root.rglob("*")):
        media = _MEDIA_TYPES.get(path.suffix)
        if path.is_file() and media is not None:
            files[path.relative_to(root).as_posix()] = (path.read_bytes(), media)
    return files


def mount(app: FastAPI, root: Path = STATIC) -> None:
    """Serve the console on ``app``: ``/console`` redirects to ``/console/`` (the page),
    ``/console/<file>`` answers one of the files under ``root`` (404 otherwise)."""
    files = _files(root)

    def answer(rel: str) -> Response:
        found = files.get(rel)
        if found is None:
            # A JSON 404 like the API's, with the same headers as the page's files.
            raise NotFoundError(f"the console has no file {rel!r}")
        return Response(found[0], media_type=found[1], headers=SECURITY_HEADERS)

    @app.get(PATH.rstrip("/"), include_in_schema=False)
    async def console_redirect() -> Response:
        return RedirectResponse(PATH, headers=SECURITY_HEADERS)

    @app.get(PATH, include_in_schema=False)
    async def console_page() -> Response:
        return answer("index.html")

    @app.get(PATH + "{rel:path}", include_in_schema=False)
    async def console_file(rel: str) -> Response:
        return answer(rel)
