"""The control plane's operations (what the REST API exposes), on top of the store.

Each call records the desired state and wakes the reconciler; nothing here waits for
processes.  Views are plain JSON-ready dicts, the shapes the API returns.
"""

from __future__ import annotations

import builtins  # ControlPlane.list shadows the builtin in the class body
import copy
import json
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
from openeas.platform.groups import MAX_WEIGHT, MIN_WEIGHT, shares
from openeas.platform.reconciler import Reconciler, counts
from openeas.platform.resources import ResourceGroup
from openeas.platform.scaling import ScalingController
from openeas.platform.spec import ELASTIC_FIELDS, ServiceSpec, merge_spec, validate_spec
from openeas.platform.status import (
    Desired,
    InstanceStatus,
    ServiceStatus,
    TrafficMode,
    TrafficState,
)
from openeas.platform.store import GroupRecord, ServiceRecord, Store
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


def _names_instance(patch: dict[str, Any]) -> bool:
    """Whether an update sets ``metadata.instance`` explicitly (a manual count)."""
    metadata = patch.get("metadata")
    return isinstance(metadata, dict) and "instance" in metadata


def _keep_count(doc: dict[str, Any], old: ServiceSpec, replicas: int) -> None:
    """When an update turns the last of autoscaler and cronscaler off, the service keeps
    the count they set: the new version's ``metadata.instance`` records it (so that the
    spec says again what runs)."""
    was_elastic = old.autoscaler is not None or old.cronscaler is not None
    is_elastic = any(doc.get(field) is not None for field in ELASTIC_FIELDS)
    if was_elastic and not is_elastic and isinstance(doc.get("metadata", {}), dict):
        doc.setdefault("metadata", {})["instance"] = replicas


def _elastic_events(old: ServiceSpec, new: ServiceSpec) -> list[tuple[str, str]]:
    """``AutoscalerSet``/``AutoscalerRemoved``/``CronScalerSet``/``CronScalerRemoved``
    events for what an update changed of the two documents."""
    events = []
    for field, label in (("autoscaler", "Autoscaler"), ("cronscaler", "CronScaler")):
        before, after = getattr(old, field), getattr(new, field)
        if after is None and before is not None:
            events.append((f"{label}Removed", f"{field} removed; the count stays"))
        elif after is not None and after != before:
            events.append((f"{label}Set", f"{field} set: {json.dumps(after, sort_keys=True)}"))
    return events


def _release_args(body: Any) -> tuple[int | None, TrafficState | None]:
    """``{"Weight": -1..1000, "TrafficState": "grouping"|"standalone"}`` (either, at
    least one), or a 400 naming the field."""
    if not isinstance(body, dict):
        raise PlatformError('the body must be a JSON object: {"Weight": N, "TrafficState": S}')
    unknown = sorted(set(body) - {"Weight", "TrafficState"})
    if unknown:
        raise PlatformError(f"{unknown[0]}: unknown field (Weight, TrafficState)")
    if not body:
        raise PlatformError("nothing to release: give Weight and/or TrafficState")
    weight, state = body.get("Weight"), body.get("TrafficState")
    if "Weight" in body and (
        not isinstance(weight, int)
        or isinstance(weight, bool)
        or not MIN_WEIGHT <= weight <= MAX_WEIGHT
    ):
        raise PlatformError(
            f"Weight: must be an integer from {MIN_WEIGHT} to {MAX_WEIGHT}, got {weight!r}"
        )
    if "TrafficState" in body and state not in list(TrafficState):
        raise PlatformError(
            f"TrafficState: must be one of {', '.join(TrafficState)}, got {state!r}"
        )
    return weight, None if state is None else TrafficState(state)


def _traffic_mode(body: Any) -> TrafficMode:
    """``{"TrafficMode": "auto"|"customized"}``, or a 400 naming the field."""
    if not isinstance(body, dict):
        raise PlatformError('the body must be a JSON object: {"TrafficMode": "auto"}')
    unknown = sorted(set(body) - {"TrafficMode"})
    if unknown:
        raise PlatformError(f"{unknown[0]}: unknown field (TrafficMode)")
    mode = body.get("TrafficMode")
    if mode not in list(TrafficMode):
        raise PlatformError(f"TrafficMode: must be one of {', '.join(TrafficMode)}, got {mode!r}")
    return TrafficMode(mode)


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
        #: the scaling controller (set by the daemon): its live state is part of desc
        self.scaling: ScalingController | None = None

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
        target = record.replicas if record.desired == Desired.RUNNING else 0
        return {
            "name": record.name,
            "status": record.status,
            "reason": record.reason,
            "message": record.message,
            "desired": record.desired,
            **self.endpoints.for_service(record.name),
            "token": record.token,
            "instances": counts(insts, record.current_version, target),
            "replicas": record.replicas,
            "autoscaler": spec.autoscaler,
            "cronscaler": spec.cronscaler,
            "cron_set_time": _iso(record.cron_set_at),
            "scaling": self.scaling.describe(record.name) if self.scaling else None,
            "cpu": m.cpu,
            "memory": m.memory,
            "gpu": m.gpu,
            "resource": m.resource,
            "processor": spec.processor,
            **self._membership(record),
            "current_version": record.current_version,
            "latest_version": record.latest_version,
            "create_time": _iso(record.created_at),
            "update_time": _iso(record.updated_at),
        }

    @staticmethod
    def _membership(record: ServiceRecord) -> dict[str, Any]:
        """A service's group, TrafficState and Weight (None for all three without one)."""
        if not record.group_name:
            return {"group": None, "traffic_state": None, "weight": None}
        return {
            "group": record.group_name,
            "traffic_state": record.traffic_state,
            "weight": record.weight,
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
        cron_set_at = time.time() if spec.cronscaler is not None else None
        record = self.store.create_service(spec.name, spec.token, spec.to_json(), cron_set_at)
        self.store.add_event(spec.name, "ServiceCreated", "Service is now deploying")
        self.reconciler.publish_groups()
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
        doc = merge_spec(base, patch) if mode == "merge" else copy.deepcopy(patch)
        doc.setdefault("name", name)
        if doc.get("name") != name:
            raise SpecError([FieldError("name", f"cannot rename service {name!r}")])
        if mode == "replace" and "token" not in patch:
            doc["token"] = record.token
        return self._update(record, doc, names_instance=_names_instance(patch))

    def set_elastic(self, name: str, field: str, value: Any) -> dict[str, Any]:
        """Set a service's ``autoscaler`` or ``cronscaler`` to ``value`` (replaced whole,
        either EAS form): a new version whose instances are the running ones."""
        record = self._existing(name)
        if value is None:
            raise SpecError([FieldError(field, "must be a JSON object, got null")])
        doc = copy.deepcopy(self.store.spec(name, record.current_version))
        doc[field] = value
        return self._update(record, doc, names_instance=False)

    def remove_elastic(self, name: str, field: str) -> dict[str, Any]:
        """Turn a service's ``autoscaler`` or ``cronscaler`` off (nothing to do without one)."""
        record = self._existing(name)
        doc = copy.deepcopy(self.store.spec(name, record.current_version))
        if doc.pop(field, None) is None:
            return self.view(record)
        return self._update(record, doc, names_instance=False)

    def _update(
        self, record: ServiceRecord, doc: dict[str, Any], names_instance: bool
    ) -> dict[str, Any]:
        """Validate ``doc`` and make it the current version, with the count and cron
        bookkeeping it implies (:meth:`_service_changes`)."""
        name = record.name
        old = self.reconciler.spec(name, record.current_version)
        if not names_instance:
            _keep_count(doc, old, record.replicas)
        spec = self._validate(doc)
        changes = self._service_changes(record, old, spec, names_instance)
        version = self.store.add_version(name, spec.to_json(), **changes)
        self._activate(name, record, version, spec, changes)
        self.store.add_event(name, "ServiceUpdated", f"version {version} is now current")
        for event in _elastic_events(old, spec):
            self.store.add_event(name, *event)
        return self.view(self.store.service(name))

    @staticmethod
    def _service_changes(
        record: ServiceRecord, old: ServiceSpec, new: ServiceSpec, names_instance: bool
    ) -> dict[str, Any]:
        """The service columns a new current version changes.

        ``replicas`` follows ``metadata.instance`` when the update names it or it differs
        from the previous version's (a manual count; with an autoscaler on, EAS's rule:
        the current count, which the next decision may change).  ``cron_set_at`` is now
        for a new or changed ``cronscaler`` (its earlier firings do not count), ``None``
        without one.
        """
        changes: dict[str, Any] = {}
        if names_instance or new.metadata.instance != old.metadata.instance:
            changes["replicas"] = new.metadata.instance
        if new.cronscaler is None:
            if record.cron_set_at is not None:
                changes["cron_set_at"] = None
        elif new.cronscaler != old.cronscaler or record.cron_set_at is None:
            changes["cron_set_at"] = time.time()
        return changes

    def _activate(
        self,
        name: str,
        record: ServiceRecord,
        version: int,
        spec: ServiceSpec,
        changes: dict[str, Any],
    ) -> None:
        self.store.activate(name, version, token=spec.token, **changes)
        self.reconciler.publish_groups()  # a group joined, left, created or deleted
        same = self.reconciler.relabel(name, record.current_version, version)
        rescaled = changes.get("replicas", record.replicas) != record.replicas
        if record.status == ServiceStatus.FAILED:
            self.reconciler.reset_failures(name)
            self.store.set_status(name, ServiceStatus.UPDATING)
        elif record.desired == Desired.RUNNING and not same:
            self.store.set_status(name, ServiceStatus.UPDATING)
        elif record.desired == Desired.RUNNING and rescaled:
            self.store.set_status(name, ServiceStatus.SCALING)
        self.reconciler.wake()

    def versions(self, name: str) -> builtins.list[dict[str, Any]]:
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
            old = self.reconciler.spec(name, record.current_version)
            changes = self._service_changes(record, old, spec, names_instance=False)
            self._activate(name, record, version, spec, changes)
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

    def instances(self, name: str) -> builtins.list[dict[str, Any]]:
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

    def events(self, name: str, after: int = 0) -> builtins.list[dict[str, Any]]:
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

    # -- service groups ---------------------------------------------------------------

    def group_view(self, group: GroupRecord) -> dict[str, Any]:
        """EAS's DescribeGroup fields, plus the members with their current shares."""
        weights = self.reconciler.group_members(group)
        share = shares(weights)
        records = {s.name: s for s in self.store.members(group.name)}
        endpoints = self.endpoints.for_service(group.name)
        return {
            "Name": group.name,
            "CreateTime": _iso(group.created_at),
            "UpdateTime": _iso(group.updated_at),
            "InternetEndpoint": endpoints["internet_endpoint"],
            "IntranetEndpoint": endpoints["intranet_endpoint"],
            "AccessToken": group.token,
            "TrafficMode": group.traffic_mode,
            "Members": [
                {
                    "ServiceName": m.service,
                    "TrafficState": records[m.service].traffic_state,
                    "Weight": records[m.service].weight,
                    "ReadyInstances": self.reconciler.ready(m.service),
                    "EffectiveWeight": m.weight,
                    "TrafficShare": round(share[m.service], 2),
                }
                for m in weights
            ],
        }

    def list_groups(self) -> builtins.list[dict[str, Any]]:
        return [self.group_view(g) for g in self.store.groups()]

    def describe_group(self, name: str) -> dict[str, Any]:
        return self.group_view(self.store.group(name))

    def update_group(self, name: str, body: Any) -> dict[str, Any]:
        """EAS's UpdateGroup: ``{"TrafficMode": "auto"|"customized"}``."""
        self.store.group(name)  # 404 before 400
        self.store.set_traffic_mode(name, _traffic_mode(body))
        self.reconciler.publish_groups()
        return self.describe_group(name)

    def release(self, name: str, body: Any) -> dict[str, str]:
        """EAS's ReleaseService: a group member's Weight and/or TrafficState."""
        record = self._existing(name)
        weight, state = _release_args(body)
        if not record.group_name:
            raise PlatformError(f"service {name!r} is in no service group (metadata.group)")
        weight = record.weight if weight is None else weight
        state = record.traffic_state if state is None else state
        self.store.release(name, weight, state)
        self.reconciler.publish_groups()
        return {
            "Message": f"Releasing service [{name}] in group [{record.group_name}] with "
            f"weight [{weight}], traffic state [{state}], service status: [{record.status}]"
        }

    def resources(self) -> builtins.list[dict[str, Any]]:
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
