"""The platform's own logs: ``platform.log`` and the gateway's access log.

``platform.log`` rotates by size (:class:`~logging.handlers.RotatingFileHandler`).  The
gateway's access log (one line per request, logger ``openeas.gateway.access``) is a
choice: ``off`` (the default: the gateway's ``isEnabledFor`` check skips it, nothing is
built per request), ``all`` or ``sampled`` (one request in N), written to its own rotating
``access.log``.  Access records are queued as they are and formatted and written by a
thread, so the gateway's event loop never waits for the disk.  Readiness probes are
DEBUG lines (httpx's own per-request INFO lines are silenced).
"""

from __future__ import annotations

import itertools
import logging
import logging.handlers
import queue
import sys
from dataclasses import dataclass
from pathlib import Path

ACCESS_MODES = ("off", "all", "sampled")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class LogOptions:
    """``openeas up``'s logging flags."""

    level: str = "info"
    #: platform.log; None logs to stderr (``openeas up`` in the foreground)
    file: Path | None = None
    max_bytes: int = 10 * 2**20
    backups: int = 5
    access: str = "off"
    #: with ``sampled``: one request in this many is logged
    access_sample: int = 100
    access_file: Path | None = None


class _Sample(logging.Filter):
    """Passes one record in ``every`` (a counter: no randomness, no lock needed on the
    single event loop that logs access lines)."""

    def __init__(self, every: int) -> None:
        super().__init__()
        self._count = itertools.cycle(range(every))

    def filter(self, record: logging.LogRecord) -> bool:
        return next(self._count) == 0


class _Enqueue(logging.handlers.QueueHandler):
    """Queues the record untouched: formatting happens in the listener's thread (the
    access log's arguments are immutable str/int/float values)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class _Formatter(logging.Formatter):
    """The platform's line format; a record logged with ``extra={"verbatim": True}`` is
    written as it is (a line a component process already formatted, see
    :mod:`openeas.platform.supervisor`)."""

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "verbatim", False):
            return record.getMessage()
        return super().format(record)


def _rotating(path: Path, options: LogOptions) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=options.max_bytes, backupCount=options.backups, encoding="utf-8"
    )
    handler.setFormatter(_Formatter(_FORMAT))
    return handler


def configure(options: LogOptions) -> logging.handlers.QueueListener | None:
    """Set up the root logger and the access log; the access log's writer thread (stop
    it at exit so queued lines are flushed), or None when the access log is off."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if options.file is not None:
        root.addHandler(_rotating(options.file, options))
    else:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(_Formatter(_FORMAT))
        root.addHandler(stream)
    root.setLevel(options.level.upper())
    for noisy in ("httpx", "httpcore"):  # one INFO line per readiness probe otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return _configure_access(options)


def _configure_access(options: LogOptions) -> logging.handlers.QueueListener | None:
    from openeas.gateway.metrics import access_log

    for handler in list(access_log.handlers):
        access_log.removeHandler(handler)
    for old in list(access_log.filters):
        access_log.removeFilter(old)
    access_log.propagate = False
    if options.access == "off" or options.access_file is None:
        access_log.setLevel(logging.WARNING)  # isEnabledFor(INFO) is False: no record
        return None
    access_log.setLevel(logging.INFO)
    if options.access == "sampled" and options.access_sample > 1:
        access_log.addFilter(_Sample(options.access_sample))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    access_log.addHandler(_Enqueue(records))
    listener = logging.handlers.QueueListener(records, _rotating(options.access_file, options))
    listener.start()
    return listener
