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
from openeas.platform.errors import NotFoundError
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


def _old_services_table(db: Path) -> None:
    """A platform.db from before services had a replica count and a cron time."""
    with sqlite3.connect(db) as conn:
        conn.executescript(
            """
            CREATE TABLE services (name TEXT PRIMARY KEY, token TEXT NOT NULL,
                desired TEXT NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
                message TEXT NOT NULL DEFAULT '', current_version INTEGER NOT NULL,
                latest_version INTEGER NOT NULL, created_at REAL NOT NULL,
                updated_at REAL NOT NULL);
            CREATE TABLE versions (service TEXT NOT NULL REFERENCES services(name)
                ON DELETE CASCADE, version INTEGER NOT NULL, spec TEXT NOT NULL,
                created_at REAL NOT NULL, PRIMARY KEY (service, version));
            INSERT INTO services VALUES ('three', 'token-one-123', 'Running', 'Running', '', '',
                2, 2, 0, 0);
            INSERT INTO versions VALUES ('three', 1, '{"metadata": {"instance": 1}}', 0);
            INSERT INTO versions VALUES ('three', 2, '{"metadata": {"instance": 3}}', 0);
            INSERT INTO services VALUES ('plain', 'token-one-123', 'Stopped', 'Stopped', '', '',
                1, 1, 0, 0);
            INSERT INTO versions VALUES ('plain', 1, '{"name": "plain"}', 0);
            """
        )


def test_an_older_database_gains_replicas_from_the_current_versions_instance_count(
    tmp_path: Path,
) -> None:
    db = tmp_path / "platform.db"
    _old_services_table(db)
    store = Store(db)
    three, plain = store.service("three"), store.service("plain")
    assert (three.replicas, three.cron_set_at) == (3, None)  # the current version's, not v1's
    assert (plain.replicas, plain.cron_set_at) == (1, None)  # metadata.instance's default
    store.set_replicas("three", 5, "AutoscalerScaled", "3 -> 5")
    store.update_service("three", cron_set_at=123.5)
    store.close()
    reopened = Store(db)  # no second migration: the values stay
    assert (reopened.service("three").replicas, reopened.service("three").cron_set_at) == (5, 123.5)
    assert reopened.check() == []
    reopened.close()


def test_create_takes_the_specs_instance_count_and_the_cron_time(tmp_path: Path) -> None:
    store = Store(tmp_path / "platform.db")
    store.create_service("svc", "token-one-123", {**SPEC, "metadata": {"instance": 4}}, 99.0)
    record = store.service("svc")
    assert (record.replicas, record.cron_set_at) == (4, 99.0)
    store.create_service("bare", "token-one-123", {**SPEC, "name": "bare"})
    assert (store.service("bare").replicas, store.service("bare").cron_set_at) == (1, None)
    assert store.add_version("svc", SPEC, replicas=2, cron_set_at=None) == 2
    assert (store.service("svc").replicas, store.service("svc").cron_set_at) == (2, None)
    store.close()


def test_set_replicas_writes_the_count_and_its_event_together(tmp_path: Path) -> None:
    store = Store(tmp_path / "platform.db")
    store.create_service("svc", "token-one-123", SPEC)
    store.set_replicas("svc", 3, "AutoscalerScaled", "qps 23/instance -> 3")
    [event] = store.events("svc")
    assert store.service("svc").replicas == 3
    assert (event.reason, event.message, event.type) == (
        "AutoscalerScaled",
        "qps 23/instance -> 3",
        "Normal",
    )

    def boom(*_args: object, **_kwargs: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    store.add_event = boom  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError):
        store.set_replicas("svc", 7, "AutoscalerScaled", "3 -> 7", type="Warning")
    del store.add_event
    assert store.service("svc").replicas == 3  # the count rolled back with its event
    assert len(store.events("svc")) == 1
    with pytest.raises(NotFoundError):
        store.set_replicas("nobody", 1, "AutoscalerScaled", "x")
    assert store.events("nobody") == []
    with pytest.raises(ValueError, match="replicas must be >= 0"):
        store.set_replicas("svc", -1, "AutoscalerScaled", "x")
    store.close()


def test_a_kill_inside_set_replicas_leaves_neither_the_count_nor_the_event(tmp_path: Path) -> None:
    db = tmp_path / "platform.db"
    store = Store(db)
    store.create_service("svc", "token-one-123", SPEC)
    store.close()
    # A real process updates the count, then is SIGKILLed before the event is written.
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from openeas.platform.store import Store
        store = Store(Path({str(db)!r}))
        store.add_event = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        store.set_replicas("svc", 6, "AutoscalerScaled", "1 -> 6")
        """
    )
    child = subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    assert child.returncode == -9
    store = Store(db)
    assert store.service("svc").replicas == 1
    assert store.events("svc") == []
    store.close()
