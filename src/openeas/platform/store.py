"""The platform's state in one SQLite database: services, versions, instances, events.

Everything the control plane needs to come back after a restart is here: the desired
state and version of every service, the specs of all its versions, and the processes
(pid, ports, log) of its instances so they can be re-adopted.  Times are Unix seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from openeas.platform.errors import (
    ConflictError,
    FieldError,
    NotFoundError,
    PlatformError,
    SpecError,
)
from openeas.platform.spec import generate_token
from openeas.platform.status import (
    Desired,
    InstanceStatus,
    ServiceStatus,
    TrafficMode,
    TrafficState,
)

#: SQLite's companion files of the database (WAL, shared memory, rollback journal).
DB_SUFFIXES = ("", "-wal", "-shm", "-journal")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS services (
    name TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    desired TEXT NOT NULL,            -- openeas.platform.status.Desired
    status TEXT NOT NULL,             -- openeas.platform.status.ServiceStatus
    reason TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    current_version INTEGER NOT NULL,
    latest_version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    replicas INTEGER NOT NULL DEFAULT 1,  -- the instance count the reconciler drives towards
    cron_set_at REAL,                     -- when the current cronscaler was set (wall time)
    group_name TEXT NOT NULL DEFAULT '',  -- its service group ('' for none)
    traffic_state TEXT NOT NULL DEFAULT 'standalone',  -- openeas.platform.status.TrafficState
    weight INTEGER NOT NULL DEFAULT -1    -- its Weight in the group (-1: unset)
);
CREATE TABLE IF NOT EXISTS groups (
    name TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    traffic_mode TEXT NOT NULL,       -- openeas.platform.status.TrafficMode
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    service TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    spec TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (service, version)
);
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,             -- openeas.platform.status.InstanceStatus
    ready INTEGER NOT NULL DEFAULT 0,
    restarts INTEGER NOT NULL DEFAULT 0,
    host TEXT NOT NULL,
    http_port INTEGER NOT NULL,
    grpc_port INTEGER NOT NULL,
    metrics_port INTEGER NOT NULL,
    pid INTEGER,
    cpus TEXT NOT NULL DEFAULT '[]',
    log_path TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    started_at REAL,
    internal_token TEXT NOT NULL DEFAULT '',  -- what the instance requires of the gateway
    node TEXT NOT NULL DEFAULT '',            -- the runtime's node id ('' for local)
    unix_socket TEXT NOT NULL DEFAULT ''      -- the instance's Unix socket, if any
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    time REAL NOT NULL,
    type TEXT NOT NULL,               -- Normal | Warning
    reason TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_service ON events(service, id);
"""


@dataclass
class ServiceRecord:
    name: str
    token: str
    desired: Desired
    status: ServiceStatus
    reason: str
    message: str
    current_version: int
    latest_version: int
    created_at: float
    updated_at: float
    #: the instance count the reconciler drives towards: the spec's ``metadata.instance``
    #: at create and when an update names it; the autoscaler/cron controller's since
    replicas: int = 1
    #: wall time the current ``cronscaler`` was set (its firings before do not count);
    #: ``None`` without one
    cron_set_at: float | None = None
    #: its service group ('' for none): the current version's ``metadata.group``
    group_name: str = ""
    #: in its group: whether it takes the group's traffic, and its Weight (-1: unset)
    traffic_state: TrafficState = TrafficState.STANDALONE
    weight: int = -1

    def __post_init__(self) -> None:
        self.desired = Desired(self.desired)
        self.status = ServiceStatus(self.status)
        self.traffic_state = TrafficState(self.traffic_state)


@dataclass
class GroupRecord:
    """A service group (EAS): one endpoint and token in front of its member services."""

    name: str
    token: str = field(repr=False)
    traffic_mode: TrafficMode
    created_at: float
    updated_at: float

    def __post_init__(self) -> None:
        self.traffic_mode = TrafficMode(self.traffic_mode)


@dataclass
class InstanceRecord:
    id: str
    service: str
    version: int
    status: InstanceStatus
    ready: bool
    restarts: int
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    pid: int | None
    cpus: list[int]
    log_path: str
    reason: str
    created_at: float
    started_at: float | None
    #: the token the instance requires on every request (openeas.protocol.instance_token);
    #: a secret: never shown by the API
    internal_token: str = field(default="", repr=False)
    #: the node the runtime placed it on ('' for the local runtime)
    node: str = ""
    #: a Unix-domain socket it also serves HTTP on ('' when none)
    unix_socket: str = ""

    def __post_init__(self) -> None:
        self.status = InstanceStatus(self.status)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Event:
    id: int
    service: str
    time: float
    type: str
    reason: str
    message: str


def spec_group(spec: dict[str, Any]) -> str:
    """A stored spec's ``metadata.group`` ('' when it names none)."""
    metadata = spec.get("metadata")
    group = metadata.get("group") if isinstance(metadata, dict) else None
    return group if isinstance(group, str) else ""


def spec_instances(spec: dict[str, Any]) -> int:
    """A stored spec's ``metadata.instance`` (1, the spec's default, when absent)."""
    metadata = spec.get("metadata")
    count = metadata.get("instance", 1) if isinstance(metadata, dict) else 1
    return count if isinstance(count, int) else 1


def _instance(row: sqlite3.Row) -> InstanceRecord:
    data = dict(row)
    data["ready"] = bool(data["ready"])
    data["cpus"] = json.loads(data["cpus"])
    return InstanceRecord(**data)


class Store:
    """Synchronous, small queries; the control plane calls it from its event loop."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Every service token is in here: owner-only from its first byte (SQLite creates
        # its -wal/-shm/-journal files with the database file's mode).
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Columns added since the first release, for databases created before them."""
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(instances)")}
        for column in ("internal_token", "node", "unix_socket"):
            if column not in columns:
                self._db.execute(
                    f"ALTER TABLE instances ADD COLUMN {column} TEXT NOT NULL DEFAULT ''"
                )
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(services)")}
        if "replicas" not in columns:
            self._add_replicas()
        if "cron_set_at" not in columns:
            self._db.execute("ALTER TABLE services ADD COLUMN cron_set_at REAL")
        added = {
            # no service of an older database is in a group (its specs had no group)
            "group_name": "TEXT NOT NULL DEFAULT ''",
            "traffic_state": f"TEXT NOT NULL DEFAULT '{TrafficState.STANDALONE}'",
            "weight": "INTEGER NOT NULL DEFAULT -1",
        }
        for column, kind in added.items():
            if column not in columns:
                self._db.execute(f"ALTER TABLE services ADD COLUMN {column} {kind}")

    def _add_replicas(self) -> None:
        """The replicas column, filled with each service's current ``metadata.instance``
        (what the reconciler drove towards before), in one transaction."""
        with self._transaction():
            self._db.execute("ALTER TABLE services ADD COLUMN replicas INTEGER NOT NULL DEFAULT 1")
            rows = self._db.execute(
                "SELECT s.name, v.spec FROM services s JOIN versions v "
                "ON v.service = s.name AND v.version = s.current_version"
            ).fetchall()
            for row in rows:
                self._db.execute(
                    "UPDATE services SET replicas = ? WHERE name = ?",
                    (spec_instances(json.loads(row["spec"])), row["name"]),
                )

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """All statements inside commit together or not at all (a kill in between
        leaves the database as before: SQLite rolls the journal back on open)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def check(self) -> list[str]:
        """Check the invariants between the tables and repair what breaks them; one line
        per repair (the platform logs them at start-up).

        - every service's ``current_version`` and ``latest_version`` exist, and no version
          is newer than ``latest_version`` (a half-written update is dropped);
        - every instance belongs to a service;
        - every service group has a member.
        """
        repairs: list[str] = []
        with self._transaction():
            for svc in self.services():
                repairs += self._repair_versions(svc)
            orphans = self._db.execute(
                "DELETE FROM instances WHERE service NOT IN (SELECT name FROM services)"
            ).rowcount
            if orphans:
                repairs.append(f"removed {orphans} instance row(s) of services that do not exist")
            empty = self._db.execute(
                "DELETE FROM groups WHERE name NOT IN (SELECT group_name FROM services)"
            ).rowcount
            if empty:
                repairs.append(f"removed {empty} service group(s) without a member")
        return repairs

    def _repair_versions(self, svc: ServiceRecord) -> list[str]:
        rows = self._db.execute(
            "SELECT version FROM versions WHERE service = ? ORDER BY version", (svc.name,)
        ).fetchall()
        have = [r["version"] for r in rows]
        repairs = []
        newer = [v for v in have if v > svc.latest_version]
        if newer:
            self._db.execute(
                "DELETE FROM versions WHERE service = ? AND version > ?",
                (svc.name, svc.latest_version),
            )
            have = [v for v in have if v <= svc.latest_version]
            repairs.append(f"service {svc.name!r}: dropped unfinished version(s) {newer}")
        if not have:
            self._db.execute("DELETE FROM services WHERE name = ?", (svc.name,))
            return [*repairs, f"service {svc.name!r}: no version left, removed the service"]
        latest = have[-1]
        current = svc.current_version if svc.current_version in have else latest
        if (current, latest) != (svc.current_version, svc.latest_version):
            self._db.execute(
                "UPDATE services SET current_version = ?, latest_version = ? WHERE name = ?",
                (current, latest, svc.name),
            )
            repairs.append(
                f"service {svc.name!r}: current/latest version {svc.current_version}/"
                f"{svc.latest_version} -> {current}/{latest}"
            )
        token = self.spec(svc.name, current).get("token")
        if token and token != svc.token:  # the gateway checks the current version's token
            self._db.execute("UPDATE services SET token = ? WHERE name = ?", (token, svc.name))
            repairs.append(f"service {svc.name!r}: token reset to version {current}'s")
        return repairs

    # -- services ---------------------------------------------------------------------

    def create_service(
        self, name: str, token: str, spec: dict[str, Any], cron_set_at: float | None = None
    ) -> ServiceRecord:
        """A new service at version 1; its count is the spec's ``metadata.instance``; in
        the same transaction it joins the spec's ``metadata.group`` (creating it)."""
        now = time.time()
        try:
            with self._transaction():
                if self._group_row(name) is not None:
                    raise SpecError(
                        [FieldError("name", f"{name!r} is the name of a service group")]
                    )
                self._db.execute(
                    "INSERT INTO services (name, token, desired, status, current_version, "
                    "latest_version, created_at, updated_at, replicas, cron_set_at) "
                    "VALUES (?, ?, ?, ?, 1, 1, ?, ?, ?, ?)",
                    (
                        name,
                        token,
                        Desired.RUNNING,
                        ServiceStatus.CREATING,
                        now,
                        now,
                        spec_instances(spec),
                        cron_set_at,
                    ),
                )
                self._db.execute(
                    "INSERT INTO versions VALUES (?, 1, ?, ?)", (name, json.dumps(spec), now)
                )
                self._regroup(name, spec_group(spec))
        except sqlite3.IntegrityError:
            raise ConflictError(f"service {name!r} already exists") from None
        return self.service(name)

    def service(self, name: str) -> ServiceRecord:
        row = self._db.execute("SELECT * FROM services WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"service {name!r} not found")
        return ServiceRecord(**dict(row))

    def services(self) -> list[ServiceRecord]:
        rows = self._db.execute("SELECT * FROM services ORDER BY name").fetchall()
        return [ServiceRecord(**dict(row)) for row in rows]

    def update_service(self, name: str, **changes: Any) -> None:
        allowed = {f.name for f in fields(ServiceRecord)} - {"name", "created_at"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"unknown service columns {sorted(unknown)}")
        changes["updated_at"] = time.time()
        columns = ", ".join(f"{key} = ?" for key in changes)
        self._db.execute(f"UPDATE services SET {columns} WHERE name = ?", (*changes.values(), name))

    def set_replicas(
        self, name: str, replicas: int, reason: str, message: str, type: str = "Normal"
    ) -> None:
        """Set the instance count and record its event, both or neither (the autoscaler's
        and the cron controller's decisions; a manual count comes with a new version)."""
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        with self._transaction():
            cur = self._db.execute(
                "UPDATE services SET replicas = ? WHERE name = ?", (replicas, name)
            )
            if cur.rowcount == 0:
                raise NotFoundError(f"service {name!r} not found")
            self.add_event(name, reason, message, type)

    def set_status(
        self, name: str, status: ServiceStatus, reason: str = "", message: str = ""
    ) -> bool:
        """Record a status change; True when something changed (updated_at untouched)."""
        cur = self._db.execute(
            "UPDATE services SET status = ?, reason = ?, message = ? WHERE name = ? "
            "AND (status != ? OR reason != ? OR message != ?)",
            (status, reason, message, name, status, reason, message),
        )
        return cur.rowcount > 0

    def delete_service(self, name: str) -> None:
        """The service, its versions, instances and events, all at once; its group too
        when it was the last member."""
        with self._transaction():
            self._regroup(name, "")
            self._db.execute("DELETE FROM services WHERE name = ?", (name,))
            self._db.execute("DELETE FROM instances WHERE service = ?", (name,))
            self._db.execute("DELETE FROM events WHERE service = ?", (name,))

    # -- versions ---------------------------------------------------------------------

    def add_version(self, name: str, spec: dict[str, Any], **service: Any) -> int:
        """Store a new version and make it current (with its token); its number.

        ``service`` are service columns changed in the same transaction (``replicas``,
        ``cron_set_at``)."""
        with self._transaction():
            record = self.service(name)
            version = record.latest_version + 1
            self._db.execute(
                "INSERT INTO versions VALUES (?, ?, ?, ?)",
                (name, version, json.dumps(spec), time.time()),
            )
            self.update_service(
                name,
                latest_version=version,
                current_version=version,
                token=spec.get("token") or record.token,
                **service,
            )
            self._regroup(name, spec_group(spec))
        return version

    def activate(self, name: str, version: int, **service: Any) -> None:
        """Make a stored version current (``switch``), with its ``metadata.group``
        (joining, leaving or creating a group) and ``service`` columns, all at once."""
        with self._transaction():
            spec = self.spec(name, version)
            self.update_service(name, current_version=version, **service)
            self._regroup(name, spec_group(spec))

    def spec(self, name: str, version: int) -> dict[str, Any]:
        row = self._db.execute(
            "SELECT spec FROM versions WHERE service = ? AND version = ?", (name, version)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"service {name!r} has no version {version}")
        return json.loads(row["spec"])

    def versions(self, name: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT version, spec, created_at FROM versions WHERE service = ? ORDER BY version",
            (name,),
        ).fetchall()
        return [
            {"version": r["version"], "created_at": r["created_at"], "spec": json.loads(r["spec"])}
            for r in rows
        ]

    # -- service groups ---------------------------------------------------------------

    def _group_row(self, name: str) -> GroupRecord | None:
        row = self._db.execute("SELECT * FROM groups WHERE name = ?", (name,)).fetchone()
        return None if row is None else GroupRecord(**dict(row))

    def group(self, name: str) -> GroupRecord:
        record = self._group_row(name)
        if record is None:
            raise NotFoundError(f"service group {name!r} not found")
        return record

    def groups(self) -> list[GroupRecord]:
        rows = self._db.execute("SELECT * FROM groups ORDER BY name").fetchall()
        return [GroupRecord(**dict(row)) for row in rows]

    def members(self, group: str) -> list[ServiceRecord]:
        rows = self._db.execute(
            "SELECT * FROM services WHERE group_name = ? ORDER BY name", (group,)
        ).fetchall()
        return [ServiceRecord(**dict(row)) for row in rows]

    def set_traffic_mode(self, group: str, mode: TrafficMode) -> None:
        cur = self._db.execute(
            "UPDATE groups SET traffic_mode = ?, updated_at = ? WHERE name = ?",
            (TrafficMode(mode), time.time(), group),
        )
        if cur.rowcount == 0:
            raise NotFoundError(f"service group {group!r} not found")

    def release(self, name: str, weight: int, state: TrafficState) -> None:
        """Set a member's Weight and TrafficState, with its ``TrafficReleased`` event."""
        with self._transaction():
            group = self.service(name).group_name
            if not group:
                raise PlatformError(f"service {name!r} is in no service group")
            self._db.execute(
                "UPDATE services SET weight = ?, traffic_state = ? WHERE name = ?",
                (weight, TrafficState(state), name),
            )
            self._touch_group(group)
            self.add_event(
                name,
                "TrafficReleased",
                f"group [{group}]: weight [{weight}], traffic state [{state}]",
            )

    def _touch_group(self, group: str) -> None:
        self._db.execute("UPDATE groups SET updated_at = ? WHERE name = ?", (time.time(), group))

    def _regroup(self, name: str, group: str) -> None:
        """Inside an open transaction: move service ``name`` into ``group`` ('' for
        none), creating a group with its first member and deleting it with its last."""
        old = self.service(name).group_name
        if old == group:
            return
        if old:
            self._leave(name, old)
        if group:
            self._join(name, group)

    def _join(self, name: str, group: str) -> None:
        if self._db.execute("SELECT 1 FROM services WHERE name = ?", (group,)).fetchone():
            raise SpecError([FieldError("metadata.group", f"{group!r} is the name of a service")])
        if self._group_row(group) is None:
            # the creator takes the group's traffic at once: it is the only member
            now = time.time()
            self._db.execute(
                "INSERT INTO groups VALUES (?, ?, ?, ?, ?)",
                (group, generate_token(), TrafficMode.AUTO, now, now),
            )
            state, how = TrafficState.GROUPING, "created it"
        else:
            # EAS: a new member gets none of the group's traffic until it is released
            state, how = TrafficState.STANDALONE, "standalone until released"
            self._touch_group(group)
        self._db.execute(
            "UPDATE services SET group_name = ?, traffic_state = ?, weight = -1 WHERE name = ?",
            (group, state, name),
        )
        self.add_event(name, "GroupJoined", f"joined service group [{group}] ({how})")

    def _leave(self, name: str, group: str) -> None:
        self._db.execute(
            "UPDATE services SET group_name = '', traffic_state = ?, weight = -1 WHERE name = ?",
            (TrafficState.STANDALONE, name),
        )
        left = self._db.execute(
            "SELECT 1 FROM services WHERE group_name = ? LIMIT 1", (group,)
        ).fetchone()
        if left is None:
            self._db.execute("DELETE FROM groups WHERE name = ?", (group,))
            self.add_event(name, "GroupLeft", f"left service group [{group}] (deleted with it)")
        else:
            self._touch_group(group)
            self.add_event(name, "GroupLeft", f"left service group [{group}]")

    # -- instances --------------------------------------------------------------------

    def put_instance(self, inst: InstanceRecord) -> None:
        data = inst.to_json()
        data["ready"] = int(inst.ready)
        data["cpus"] = json.dumps(inst.cpus)
        columns = ", ".join(data)
        marks = ", ".join("?" for _ in data)
        self._db.execute(
            f"INSERT OR REPLACE INTO instances ({columns}) VALUES ({marks})",
            tuple(data.values()),
        )

    def remove_instance(self, instance_id: str) -> None:
        self._db.execute("DELETE FROM instances WHERE id = ?", (instance_id,))

    def instances(self, service: str | None = None) -> list[InstanceRecord]:
        if service is None:
            rows = self._db.execute("SELECT * FROM instances ORDER BY created_at").fetchall()
        else:
            rows = self._db.execute(
                "SELECT * FROM instances WHERE service = ? ORDER BY created_at", (service,)
            ).fetchall()
        return [_instance(row) for row in rows]

    # -- events -----------------------------------------------------------------------

    def add_event(self, service: str, reason: str, message: str, type: str = "Normal") -> None:
        self._db.execute(
            "INSERT INTO events (service, time, type, reason, message) VALUES (?, ?, ?, ?, ?)",
            (service, time.time(), type, reason, message),
        )

    def events(self, service: str, after: int = 0, limit: int = 1000) -> list[Event]:
        rows = self._db.execute(
            "SELECT * FROM events WHERE service = ? AND id > ? ORDER BY id DESC LIMIT ?",
            (service, after, limit),
        ).fetchall()
        return [Event(**dict(row)) for row in reversed(rows)]

    def delete_events(self, service: str) -> None:
        self._db.execute("DELETE FROM events WHERE service = ?", (service,))

    def __iter__(self) -> Iterator[ServiceRecord]:
        return iter(self.services())
