"""Control-plane restarts (crash and graceful) and models from the embedded object store."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from openeas.testing.server import free_port
from tests.integration.conftest import wait_until
from tests.integration.platform.conftest import (
    Platform,
    make_add_sub_repository,
    platform_running,
    service_doc,
)
from tests.integration.platform.test_eascmd import infer, running

NAME = "restartable"


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def test_upload_then_create_from_oss_with_a_storage_mount(platform: Platform) -> None:
    local = make_add_sub_repository(platform.home / "to-upload")
    out = platform.ok("upload", str(local), "--to", "oss://triton-model-repo/models/")
    assert out.splitlines()[-1] == "oss://triton-model-repo/models/"
    single = platform.home / "notes.txt"
    single.write_text("hello")
    out = platform.ok("upload", str(single), "--to", "oss://triton-model-repo/docs/")
    assert out.splitlines()[-1] == "oss://triton-model-repo/docs/notes.txt"
    stored = platform.home / "buckets" / "triton-model-repo"
    assert (stored / "docs" / "notes.txt").read_text() == "hello"
    assert (stored / "models" / "simple" / "config.pbtxt").is_file()
    doc = service_doc("from_oss", "oss://triton-model-repo/models")
    out = platform.ok("create", str(platform.write_spec(doc, "oss.json")))
    assert out.splitlines()[-1] == "[OK] Service is running"
    token = platform.json("desc", "from_oss")["token"]
    infer(platform, token, "from_oss")
    mounted = service_doc("mounted", "/models")
    mounted["storage"] = [
        {"mount_path": "/models", "oss": {"path": "oss://triton-model-repo/models/"}}
    ]
    out = platform.ok("create", str(platform.write_spec(mounted, "mounted.json")))
    assert out.splitlines()[-1] == "[OK] Service is running"
    infer(platform, platform.json("desc", "mounted")["token"], "mounted")
    missing = service_doc("missing_oss", "oss://no-such-bucket/models")
    result = platform.eascmd("create", str(platform.write_spec(missing, "missing.json")))
    assert result.returncode == 1 and "[FAILED] SyncFailed" in result.stderr
    assert "bucket 'no-such-bucket' does not exist" in result.stderr
    for name in ("from_oss", "mounted", "missing_oss"):
        platform.ok("delete", "-y", name)


def test_instances_survive_a_control_plane_crash_and_come_back_after_down_up(
    platform: Platform,
) -> None:
    repo = make_add_sub_repository(platform.home / "repo")
    platform.ok("create", str(platform.write_spec(service_doc(NAME, repo, instance=2))))
    token = platform.json("desc", NAME)["token"]
    before = {i["name"]: i["pid"] for i in running(platform, NAME)}
    assert len(before) == 2

    platform.stop(signal.SIGKILL)  # a crash: nothing is cleaned up
    assert all(_pid_alive(pid) for pid in before.values())
    platform.start()
    wait_until(lambda: len(running(platform, NAME)) == 2, timeout=60, what="re-adoption")
    assert {i["name"]: i["pid"] for i in running(platform, NAME)} == before
    assert platform.json("desc", NAME)["status"] == "Running"
    reasons = [e["reason"] for e in platform.json("events", NAME)]
    assert reasons.count("InstanceAdopted") == 2
    infer(platform, token, NAME)

    # A graceful stop (`openeas down`) stops the instances; `up` brings the service back.
    assert platform.process is not None
    down = platform.eascmd_platform("down")
    assert down.returncode == 0 and "[OK] OpenEAS is down" in down.stdout
    assert platform.process.wait(60) == 0
    wait_until(lambda: not any(_pid_alive(p) for p in before.values()), what="instances stopped")
    platform.start()
    wait_until(lambda: len(running(platform, NAME)) == 2, timeout=90, what="service back after up")
    after = {i["pid"] for i in running(platform, NAME)}
    assert not after & set(before.values())
    wait_until(lambda: platform.json("desc", NAME)["status"] == "Running", what="Running")
    infer(platform, token, NAME)
    platform.ok("delete", "-y", NAME)


def test_up_refuses_a_second_platform_and_a_taken_port(platform: Platform, tmp_path: Path) -> None:
    again = platform.eascmd_platform("up", "--api-port", str(platform.api_port))
    assert again.returncode == 1 and "already running" in again.stderr
    taken = subprocess.run(
        [
            sys.executable,
            "-m",
            "openeas.cli.main",
            "up",
            f"--api-port={platform.api_port}",
            f"--http-port={free_port()}",
            f"--grpc-port={free_port()}",
        ],
        env={**platform.env, "OPENEAS_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert taken.returncode == 1, taken.stderr
    assert f"failed to bind 127.0.0.1:{platform.api_port}: Address already in use" in taken.stderr


def test_up_after_a_crash_waits_for_the_old_components_to_be_gone(tmp_path: Path) -> None:
    """A component of a killed platform that is still dying (holding the API port for a
    moment) does not make the next `openeas up` fail: it waits for it."""
    api = free_port()
    dying = subprocess.Popen(
        [sys.executable, "-c", _HOLD_PORT, str(api), "1.5"], stdout=subprocess.PIPE, text=True
    )
    assert dying.stdout is not None and dying.stdout.readline() == "listening\n"
    supervisor = subprocess.Popen(["true"])  # the crashed supervisor: its pid is gone
    supervisor.wait()
    record = {"pid": dying.pid, "started_at": psutil.Process(dying.pid).create_time()}
    (tmp_path / "platform.json").write_text(
        json.dumps({"pid": supervisor.pid, "components": {"control-plane": record}})
    )
    args = [f"--api-port={api}", f"--http-port={free_port()}", f"--grpc-port={free_port()}"]
    with platform_running(Platform(tmp_path, api, 0, 0, args)) as plat:
        assert dying.poll() is not None
        assert f"control-plane (pid {dying.pid}) exited" in plat.log()
    dying.wait()


#: a process that holds a port (argv[1]) for a while (argv[2] seconds), then exits
_HOLD_PORT = """
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("listening", flush=True)
time.sleep(float(sys.argv[2]))
"""
