"""Child processes that die with their parent, and the leftovers of a parent that died.

Linux's ``prctl(PR_SET_PDEATHSIG)`` has the kernel signal a process when the thread that
forked it dies.  The supervisor arms it in every component (the control plane, the
gateway, the embedded S3 server's ``weed`` processes, which cannot arm it themselves) and
the local runtime in every instance it starts with ``die_with_parent``.  It is armed
between fork and exec (a ``preexec_fn``), so that no component runs a moment unarmed.

A component signalled that way is not gone at once: a process that is busy in the kernel
(an fsync of the platform database on a loaded machine) finishes that first, and until
then it holds its listening ports.  :func:`wait_for_leftovers` is what ``openeas up``
does about it after a crash: it waits for the components that ``platform.json`` names,
then kills what is left, before it binds its own ports.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

#: prctl(2): the signal a process gets when the thread that forked it dies
_PR_SET_PDEATHSIG = 1
#: how far a process's start time may lie from the time platform.json recorded for it
#: (the record is written just after the fork; a pid reused since starts much later)
_SAME_START = 2.0


def parent_death_signal(sig: signal.Signals) -> Callable[[], None]:
    """A ``preexec_fn`` that has the child get ``sig`` when this process (the thread that
    forks it) dies; a child whose parent died before it was armed exits at once."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork
    parent = os.getpid()

    def arm() -> None:  # runs in the child between fork and exec
        prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:
            os._exit(1)

    return arm


def wait_for_leftovers(info_path: Path, timeout: float = 10.0) -> list[str]:
    """Wait up to ``timeout`` seconds for the components that ``info_path`` (the
    platform.json of a platform whose supervisor is gone) names and that still run, then
    SIGKILL the rest; returns a line for each one there was, for the log."""
    leftovers = _leftovers(info_path)
    if not leftovers:
        return []
    _wait(leftovers.values(), timeout)
    lines = []
    for name, process in leftovers.items():
        if _alive(process):
            process.kill()  # psutil checks that the pid is still this process
            lines.append(f"{name} (pid {process.pid}) still ran {timeout:.0f}s on: killed")
        else:
            lines.append(f"{name} (pid {process.pid}) exited")
    _wait(leftovers.values(), 5.0)
    return lines


def _wait(processes: Iterable[psutil.Process], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in processes):
        time.sleep(0.05)


def _leftovers(info_path: Path) -> dict[str, psutil.Process]:
    """The components ``info_path`` names that are still this process (pid and start)."""
    try:
        components = json.loads(info_path.read_text()).get("components")
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(components, dict):
        return {}
    found = {}
    for name, record in components.items():
        try:
            process = psutil.Process(int(record["pid"]))
            started = float(record["started_at"])
            if abs(process.create_time() - started) <= _SAME_START and _alive(process):
                found[name] = process
        except (psutil.Error, KeyError, TypeError, ValueError):
            continue
    return found


def _alive(process: psutil.Process) -> bool:
    """Running and not a zombie (a zombie has closed its files: its ports are free)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
