"""The platform's store: multi-row changes are atomic, start-up checks repair, and the
state directory is owner-only.  Real SQLite files and a real process killed mid-write."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from openeas.home import secure_home
from openeas.platform.store import Store

SPEC = {"name": "svc", "token": "token-one-123", "processor": "triton"}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_kill_between_the_statements_of_add_version_leaves_the_service_modifiable(
    tmp_path: Path,
) -> None:
    db = tmp_path / "platform.db"
    store = Store(db)
    store.create_service("svc", "token-one-123", SPEC)
    store.close()
    # A real process writes the version row, then is SIGKILLed before the service row.
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from openeas.platform.store import Store
        store = Store(Path({str(db)!r}))
        store.update_service = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        store.add_version("svc", {{**{SPEC!r}, "token": "token-two-456"}})
        """
    )
    child = subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    assert child.returncode == -9
    store = Store(db)
    assert [v["version"] for v in store.versions("svc")] == [1]
    assert store.add_version("svc", {**SPEC, "token": "token-three-789"}) == 2
    record = store.service("svc")
    assert (record.current_version, record.latest_version) == (2, 2)
    assert record.token == "token-three-789"  # the token moves with the version
    assert store.check() == []


def test_a_failing_statement_rolls_back_the_whole_change(tmp_path: Path) -> None:
    store = Store(tmp_path / "platform.db")
    store.create_service("svc", "token-one-123", SPEC)

    def boom(*_args: object, **_kwargs: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    store.update_service = boom  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError):
        store.add_version("svc", SPEC)
    del store.update_service
    assert store.add_version("svc", SPEC) == 2


def test_the_start_up_check_repairs_a_half_written_update_and_orphans(tmp_path: Path) -> None:
    db = tmp_path / "platform.db"
    store = Store(db)
    store.create_service("svc", "token-one-123", SPEC)
    store.create_service("gone", "token-one-123", {**SPEC, "name": "gone"})
    store.close()
    # What the two autocommitted statements of an older add_version left behind, and
    # services whose rows point at versions that do not exist.
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO versions VALUES ('svc', 2, '{}', 0)")
        conn.execute("UPDATE services SET current_version = 7 WHERE name = 'gone'")
        conn.execute(
            "INSERT INTO instances (id, service, version, status, host, http_port, grpc_port,"
            " metrics_port, log_path, created_at) VALUES ('x-1', 'nobody', 1, 'Running',"
            " '127.0.0.1', 1, 2, 3, '/tmp/x.log', 0)"
        )
    store = Store(db)
    repairs = store.check()
    assert any("'svc': dropped unfinished version(s) [2]" in r for r in repairs), repairs
    assert any("'gone': current/latest version 7/1 -> 1/1" in r for r in repairs), repairs
    assert any("1 instance row(s)" in r for r in repairs), repairs
    assert store.add_version("svc", SPEC) == 2
    assert store.service("gone").current_version == 1
    assert store.instances() == []
    assert store.check() == []


def test_secure_home_makes_secrets_owner_only_and_reports_what_it_fixed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    Store(home / "platform.db").close()
    for name in ("platform.db", "credentials"):
        (home / name).touch()
        (home / name).chmod(0o644)
    instance_log = home / "logs" / "instances" / "svc" / "svc-1.log"
    instance_log.parent.mkdir(parents=True)
    instance_log.touch()
    instance_log.chmod(0o644)
    fixed = secure_home(home)
    assert any(str(home / "platform.db") in line and "0644" in line for line in fixed), fixed
    assert _mode(home) == 0o700
    assert _mode(home / "platform.db") == 0o600
    assert _mode(home / "credentials") == 0o600
    assert _mode(instance_log) == 0o600
    assert _mode(instance_log.parent) == 0o700
    assert secure_home(home) == []


def test_a_new_database_and_its_wal_are_owner_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "platform.db")
    store.create_service("svc", "token-one-123", SPEC)
    for suffix in ("", "-wal", "-shm"):
        path = tmp_path / f"platform.db{suffix}"
        assert path.exists() and _mode(path) == 0o600, suffix
    store.close()


def test_eascmd_config_rewrites_an_old_readable_file_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openeas.platform.auth import AccessKey
    from openeas.platform.client import save_client_config

    monkeypatch.setenv("OPENEAS_HOME", str(tmp_path / "home"))
    path = save_client_config(AccessKey("AKID", "secret-one"), "http://127.0.0.1:9090")
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    path.chmod(0o644)
    save_client_config(AccessKey("AKID", "secret-two"), "http://127.0.0.1:9090")
    assert _mode(path) == 0o600


def test_an_older_database_gains_the_runtime_address_columns(tmp_path: Path) -> None:
    """A platform.db from before instances had a node and a Unix socket opens, keeps its
    rows, and stores both from then on; statuses read back as the enums."""
    from openeas.platform.status import Desired, InstanceStatus, ServiceStatus
    from openeas.platform.store import InstanceRecord

    db = tmp_path / "platform.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(
            """
            CREATE TABLE instances (id TEXT PRIMARY KEY, service TEXT NOT NULL,
                version INTEGER NOT NULL, status TEXT NOT NULL, ready INTEGER NOT NULL DEFAULT 0,
                restarts INTEGER NOT NULL DEFAULT 0, host TEXT NOT NULL,
                http_port INTEGER NOT NULL, grpc_port INTEGER NOT NULL,
                metrics_port INTEGER NOT NULL, pid INTEGER, cpus TEXT NOT NULL DEFAULT '[]',
                log_path TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
                created_at REAL NOT NULL, started_at REAL);
            INSERT INTO instances VALUES ('svc-1', 'svc', 1, 'Running', 1, 0, '127.0.0.1',
                1, 2, 3, 42, '[0]', '/x.log', '', 0, 0);
            """
        )
    store = Store(db)
    store.create_service("svc", "token-one-123", SPEC)
    [old] = store.instances()
    assert (old.node, old.unix_socket, old.internal_token) == ("", "", "")
    assert old.status is InstanceStatus.RUNNING
    store.put_instance(InstanceRecord(**{**old.to_json(), "node": "n1", "unix_socket": "@s"}))
    [new] = store.instances()
    assert (new.node, new.unix_socket) == ("n1", "@s")
    service = store.service("svc")
    assert (service.desired, service.status) == (Desired.RUNNING, ServiceStatus.CREATING)
    store.close()
