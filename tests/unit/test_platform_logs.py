"""The platform's log files: rotation by size and the access log's modes (real files)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from openeas.gateway.metrics import access_log
from openeas.platform.logs import LogOptions, configure


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, access_log.level, access_log.propagate)
    yield
    for handler in root.handlers:
        handler.close()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for handler in access_log.handlers:
        handler.close()
    access_log.handlers.clear()
    access_log.filters.clear()
    access_log.setLevel(saved[2])
    access_log.propagate = saved[3]
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def _access(n: int) -> None:
    for i in range(n):
        if access_log.isEnabledFor(logging.INFO):
            access_log.info("service=%s status=%d request=%d", "svc", 200, i)


def test_platform_log_rotates_by_size_and_keeps_its_backups(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "platform.log"
    configure(LogOptions(file=log, max_bytes=2000, backups=2))
    for i in range(200):
        logging.getLogger("openeas.platform").info("line %d %s", i, "x" * 40)
    files = sorted(p.name for p in log.parent.iterdir())
    assert files == ["platform.log", "platform.log.1", "platform.log.2"]
    assert all(p.stat().st_size <= 2000 for p in log.parent.iterdir())
    assert "line 199" in log.read_text()


def test_probes_and_httpx_request_lines_stay_out_of_the_info_log(tmp_path: Path) -> None:
    log = tmp_path / "platform.log"
    configure(LogOptions(file=log))
    logging.getLogger("httpx").info('HTTP Request: GET http://x/v2/health/ready "200 OK"')
    logging.getLogger("openeas.platform").debug("probe http://x/v2/health/ready: 200")
    logging.getLogger("openeas.platform").info("kept")
    assert log.read_text().count("\n") == 1 and "kept" in log.read_text()


def test_the_access_log_is_off_by_default_and_builds_nothing(tmp_path: Path) -> None:
    listener = configure(LogOptions(file=tmp_path / "platform.log", access_file=tmp_path / "a"))
    assert listener is None
    assert not access_log.isEnabledFor(logging.INFO)
    _access(10)
    assert not (tmp_path / "a").exists()
    assert "svc" not in (tmp_path / "platform.log").read_text()


@pytest.mark.parametrize(("mode", "lines"), [("all", 50), ("sampled", 5)])
def test_the_access_log_goes_to_its_own_file(tmp_path: Path, mode: str, lines: int) -> None:
    access = tmp_path / "access.log"
    listener = configure(
        LogOptions(
            file=tmp_path / "platform.log", access=mode, access_sample=10, access_file=access
        )
    )
    assert listener is not None
    _access(50)
    listener.stop()  # flushes the queue
    text = access.read_text()
    assert text.count("service=svc status=200") == lines
    assert "request=0\n" in text
    assert "svc" not in (tmp_path / "platform.log").read_text()
