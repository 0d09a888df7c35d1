"""The control plane's operations (what the REST API exposes), on top of the store.

Each call records the desired state and wakes the reconciler; nothing here waits for
processes.  Views are plain JSON-ready dicts, the shapes the API returns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from openeas.platform.errors import (
    ConflictError,
    FieldError,
    NotFoundError,
    PlatformError,
    SpecError,
)
from openeas.platform.reconciler import Reconciler, counts
from openeas.platform.resources import ResourceGroup
from openeas.platform.spec import ServiceSpec, merge_spec, validate_spec
from openeas.platform.status import Desired, InstanceStatus, ServiceStatus
from openeas.platform.store import ServiceRecord, Store
from openeas.platform.traffic import TrafficBook


@dataclass(frozen=True)
class Endpoints:
    """Where the gateway answers, as printed in endpoint URLs."""

    public_host: str
    intranet_host: str
    http_port: int
    grpc_port: int
    #: the gateway serves TLS (``openeas up --tls-cert``): HTTPS URLs, gRPC over TLS
    tls: bool = False

    def for_service(self, name: str) -> dict[str, str]:
        scheme = "https" if self.tls else "http"
        path = f"{self.http_port}/api/predict/{name}"
        return {
            "internet_endpoint": f"{scheme}://{self.public_host}:{path}",
            "intranet_endpoint": f"{scheme}://{self.intranet_host}:{path}",
            "grpc_endpoint": f"{self.public_host}:{self.grpc_port}",
        }


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class ControlPlane:
    def __init__(
        self,
        store: Store,
        reconciler: Reconciler,
        endpoints: Endpoints,
    ) -> None:
        self.store = store
        self.reconciler = reconciler
        self.endpoints = endpoints
        #: the gateways' traffic reports (``POST /api/v1/gateway/traffic``), which the
        #: autoscaler samples; set ``traffic.on_waiting`` to hear of held requests at once
        self.traffic = TrafficBook()

    @property
    def groups(self) -> dict[str, ResourceGroup]:
        """The resource groups services can name (a cluster's change as nodes come and go)."""
        return self.reconciler.groups()

    # -- helpers ----------------------------------------------------------------------

    def _validate(self, doc: Any) -> ServiceSpec:
        spec = validate_spec(doc)
        if spec.metadata.resource not in self.groups:
            known = ", ".join(sorted(self.groups))
            raise SpecError(
                [
                    FieldError(
                        "metadata.resource",
                        f"resource group {spec.metadata.resource!r} does not exist (known: {known})",
                    )
                ]
            )
        return spec

    def _existing(self, name: str, deleting_ok: bool = False) -> ServiceRecord:
        record = self.store.service(name)
        if record.desired == Desired.DELETED and not deleting_ok:
            raise NotFoundError(f"service {name!r} is being deleted")
        return record

    def view(self, record: ServiceRecord) -> dict[str, Any]:
        spec = self.reconciler.spec(record.name, record.current_version)
        m = spec.metadata
        insts = self.store.instances(record.name)
        target = m.instance if record.desired == Desired.RUNNING else 0
        return {
            "name": record.name,
            "status": record.status,
            "reason": record.reason,
            "message": record.message,
            "desired": record.desired,
            **self.endpoints.for_service(record.name),
            "token": record.token,
            "instances": counts(insts, record.current_version, target),
            "cpu": m.cpu,
            "memory": m.memory,
            "gpu": m.gpu,
            "resource": m.resource,
            "processor": spec.processor,
            "current_version": record.current_version,
            "latest_version": record.latest_version,
            "create_time": _iso(record.created_at),
            "update_time": _iso(record.updated_at),
        }

    # -- operations -------------------------------------------------------------------

    def create(self, doc: Any) -> dict[str, Any]:
        spec = self._validate(doc)
        try:
            existing = self.store.service(spec.name)
        except NotFoundError:
            existing = None
        if existing is not None:
            raise ConflictError(f"service {spec.name!r} already exists")
        record = self.store.create_service(spec.name, spec.token, spec.to_json())
        self.store.add_event(spec.name, "ServiceCreated", "Service is now deploying")
        self.reconciler.wake()
        return self.view(record)

    def describe(self, name: str) -> dict[str, Any]:
        return self.view(self._existing(name, deleting_ok=True))

    def list(self) -> list[dict[str, Any]]:
        return [self.view(r) for r in self.store.services()]

    def modify(self, name: str, patch: Any, mode: str = "merge") -> dict[str, Any]:
        """Merge (or replace with) ``patch``; a new version that becomes current."""
        record = self._existing(name)
        if not isinstance(patch, dict):
            raise SpecError([FieldError("", "the update must be a JSON object")])
        if mode not in ("merge", "replace"):
            raise PlatformError(f"unknown update mode {mode!r} (merge or replace)")
        base = self.store.spec(name, record.current_version)
        doc = merge_spec(base, patch) if mode == "merge" else dict(patch)
        doc.setdefault("name", name)
        if doc.get("name") != name:
            raise SpecError([FieldError("name", f"cannot rename service {name!r}")])
        if mode == "replace" and "token" not in patch:
            doc["token"] = record.token
        spec = self._validate(doc)
        version = self.store.add_version(name, spec.to_json())
        self._activate(name, record, version, spec)
        self.store.add_event(name, "ServiceUpdated", f"version {version} is now current")
        return self.view(self.store.service(name))

    def _activate(self, name: str, record: ServiceRecord, version: int, spec: ServiceSpec) -> None:
        self.store.update_service(name, current_version=version, token=spec.token)
        same = self.reconciler.relabel(name, record.current_version, version)
        if record.status == ServiceStatus.FAILED:
            self.reconciler.reset_failures(name)
            self.store.set_status(name, ServiceStatus.UPDATING)
        elif record.desired == Desired.RUNNING and not same:
            self.store.set_status(name, ServiceStatus.UPDATING)
        elif record.desired == Desired.RUNNING:
            before = self.reconciler.spec(name, record.current_version).metadata.instance
            if spec.metadata.instance != before:
                self.store.set_status(name, ServiceStatus.SCALING)
        self.reconciler.wake()

    def versions(self, name: str) -> list[dict[str, Any]]:
        record = self._existing(name)
        return [
            {
                **v,
                "created_at": _iso(v["created_at"]),
                "current": v["version"] == record.current_version,
            }
            for v in self.store.versions(name)
        ]

    def switch(self, name: str, version: int) -> dict[str, Any]:
        record = self._existing(name)
        spec = ServiceSpec.model_validate(self.store.spec(name, version))
        if version != record.current_version:
            self._activate(name, record, version, spec)
            self.store.add_event(name, "ServiceSwitched", f"switched to version {version}")
        return self.view(self.store.service(name))

    def stop(self, name: str) -> dict[str, Any]:
        self._existing(name)
        self.store.update_service(name, desired=Desired.STOPPED)
        self.store.set_status(name, ServiceStatus.STOPPING)
        self.reconciler.wake()
        return self.describe(name)

    def start(self, name: str) -> dict[str, Any]:
        record = self._existing(name)
        if record.desired == Desired.RUNNING and record.status != ServiceStatus.FAILED:
            raise ConflictError(f"service {name!r} is already running (status {record.status})")
        self.reconciler.reset_failures(name)
        self.store.update_service(name, desired=Desired.RUNNING)
        self.store.set_status(name, ServiceStatus.WAITING)
        self.store.add_event(name, "ServiceStarted", "service started")
        self.reconciler.wake()
        return self.describe(name)

    def delete(self, name: str) -> None:
        self._existing(name)
        self.store.update_service(name, desired=Desired.DELETED)
        self.reconciler.wake()

    def instances(self, name: str) -> list[dict[str, Any]]:
        self._existing(name, deleting_ok=True)
        return [
            {
                "name": i.id,
                "status": i.status,
                "ready": i.ready,
                "restarts": i.restarts,
                "ip": i.host,
                "port": i.http_port,
                "grpc_port": i.grpc_port,
                "pid": i.pid,
                "node": i.node,
                "version": i.version,
                "reason": i.reason,
                "started": _iso(i.started_at),
            }
            for i in self.store.instances(name)
        ]

    def events(self, name: str, after: int = 0) -> list[dict[str, Any]]:
        self._existing(name, deleting_ok=True)
        return [
            {
                "id": e.id,
                "time": _iso(e.time),
                "type": e.type,
                "reason": e.reason,
                "message": e.message,
            }
            for e in self.store.events(name, after)
        ]

    def logs(
        self, name: str, instance: str | None, tail: int | None, offset: int | None
    ) -> tuple[str, int]:
        """Log text of one instance (default: the newest) and the file offset reached."""
        self._existing(name)
        insts = self.store.instances(name)
        if instance is not None:
            insts = [i for i in insts if i.id == instance]
            if not insts:
                raise NotFoundError(f"service {name!r} has no instance {instance!r}")
        if not insts:
            raise NotFoundError(f"service {name!r} has no instances")
        return self.reconciler.runtime.read_log(name, insts[-1].id, tail=tail, offset=offset)

    def resources(self) -> list[dict[str, Any]]:
        out = []
        for group in self.groups.values():
            used = [
                i
                for r in self.store.services()
                for i in self.reconciler.instances(r.name)
                if i.rec.status != InstanceStatus.FAILED
                and self.reconciler.spec(r.name, i.rec.version).metadata.resource == group.name
            ]
            out.append(
                {
                    **group.to_json(),
                    "used_cpu": sum(i.demand.cpu for i in used),
                    "used_memory": sum(i.demand.memory for i in used),
                    "used_gpu": sum(i.demand.gpu for i in used),
                    "instances": len(used),
                }
            )
        return out
