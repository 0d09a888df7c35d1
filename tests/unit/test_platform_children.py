"""Children that die with their parent, and the leftovers of a crashed platform (real
processes, short timeouts)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from openeas.platform.children import wait_for_leftovers


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


#: a parent that starts `sleep` armed to die with it, prints the child's pid and waits
_PARENT = """
import signal, subprocess, sys, time
from openeas.platform.children import parent_death_signal
arm = parent_death_signal(signal.SIGKILL) if sys.argv[1] == "armed" else None
child = subprocess.Popen(["sleep", "60"], preexec_fn=arm)
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("armed", [True, False])
def test_a_child_armed_with_the_parent_death_signal_dies_with_its_parent(armed: bool) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, "armed" if armed else "plain"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        parent.kill()
        parent.wait()
        assert _gone(child, timeout=5 if armed else 0.5) is armed
    finally:
        if not _gone(child, timeout=0):
            os.kill(child, signal.SIGKILL)


def _record(tmp_path: Path, **components: dict[str, float]) -> Path:
    path = tmp_path / "platform.json"
    path.write_text(json.dumps({"pid": 1, "components": components}))
    return path


def test_leftovers_are_waited_for_then_killed(tmp_path: Path) -> None:
    slow = subprocess.Popen(["sleep", "0.3"])  # dies within the wait
    stuck = subprocess.Popen(["sleep", "60"])  # would outlive it
    started = {p.pid: psutil.Process(p.pid).create_time() for p in (slow, stuck)}
    path = _record(
        tmp_path,
        **{
            "control-plane": {"pid": slow.pid, "started_at": started[slow.pid]},
            "gateway": {"pid": stuck.pid, "started_at": started[stuck.pid]},
        },
    )
    lines = wait_for_leftovers(path, timeout=1.0)
    assert lines == [
        f"control-plane (pid {slow.pid}) exited",
        f"gateway (pid {stuck.pid}) still ran 1s on: killed",
    ]
    assert stuck.wait(5) == -signal.SIGKILL
    slow.wait(5)


def test_a_pid_that_now_names_another_process_is_left_alone(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "60"])
    try:
        # platform.json recorded this pid for a process that started an hour earlier.
        then = psutil.Process(other.pid).create_time() - 3600
        path = _record(tmp_path, gateway={"pid": other.pid, "started_at": then})
        assert wait_for_leftovers(path, timeout=0.2) == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("content", [None, "", "{not json", '{"components": 3}', "[]"])
def test_no_or_a_broken_record_means_no_leftovers(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "platform.json"
    if content is not None:
        path.write_text(content)
    assert wait_for_leftovers(path, timeout=0.1) == []
