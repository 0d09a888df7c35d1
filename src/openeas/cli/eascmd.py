"""``eascmd``: the EAS command line, a thin client of the control-plane API.

Read commands take ``--json`` for scripts; every failure prints ``[FAILED] ...`` (or an
error message) and exits non-zero.  Also reachable as ``openeas eas ...``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from openeas.cli.tables import grid_table, key_value_table
from openeas.platform.auth import AccessKey
from openeas.platform.client import PlatformClient, save_client_config
from openeas.platform.elastic.autoscaler import apply_overrides, parse_autoscaler
from openeas.platform.errors import NotFoundError, PlatformError, SpecError
from openeas.platform.groups import MAX_WEIGHT, MIN_WEIGHT
from openeas.platform.spec import merge_spec, parse_assignment, parse_spec_text
from openeas.platform.status import Desired, ServiceStatus, TrafficMode, TrafficState

_JSON = click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")


def _fail(message: str) -> NoReturn:
    click.echo(f"[FAILED] {message}", err=True)
    sys.exit(1)


def _client() -> PlatformClient:
    try:
        return PlatformClient.from_config()
    except PlatformError as exc:
        _fail(str(exc))


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except SpecError as exc:
        lines = "\n".join(f"  {e}" for e in exc.errors)
        _fail(f"invalid service spec:\n{lines}" if lines else exc.message)
    except PlatformError as exc:
        _fail(exc.message)


def _print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, ensure_ascii=False))


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text() if path != "-" else sys.stdin.read()
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}")


def _read_spec(path: str) -> dict[str, Any]:
    try:
        return parse_spec_text(_read_text(path))
    except SpecError as exc:
        _fail(f"{path}: {exc.errors[0].reason}")


def _read_json(path: str) -> Any:
    """Any JSON document (the platform names the field when it is the wrong type)."""
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")


def _counts(view: dict[str, Any]) -> str:
    c = view["instances"]
    return f"[Total: {c['total']}, Pending: {c['pending']}, Running: {c['running']}]"


def _watch(
    client: PlatformClient, name: str, after: int, timeout: float, until: Desired = Desired.RUNNING
) -> None:
    """Stream ``[OK]`` progress lines until the service reaches ``until`` or fails."""
    deadline = time.monotonic() + timeout
    synced = False
    last = ""
    while time.monotonic() < deadline:
        try:
            view = client.describe(name)
            events = client.events(name, after)
        except NotFoundError:
            if until == Desired.DELETED:
                click.echo("[OK] Service is deleted")
                return
            raise
        if events:
            after = events[-1]["id"]
        if not synced and any(e["reason"] == "SyncSucceeded" for e in events):
            synced = True
            click.echo("[OK] Successfully synchronized resources")
        status = view["status"]
        if status == ServiceStatus.FAILED and until == Desired.RUNNING:
            reason = view["reason"] or "Failed"
            _fail(f"{reason}: {view['message']}" if view["message"] else reason)
        if until == Desired.RUNNING and status != ServiceStatus.CREATING:
            line = f"[OK] {status} {_counts(view)}"
            if line != last:
                click.echo(line)
                last = line
            c = view["instances"]
            if status == ServiceStatus.RUNNING and c["running"] == c["total"]:
                click.echo("[OK] Service is running")
                return
        elif until == Desired.STOPPED and status == ServiceStatus.STOPPED:
            click.echo("[OK] Service is stopped")
            return
        time.sleep(0.2)
    _fail(f"timed out after {timeout:.0f}s waiting for service {name} ({until})")


def _last_event(client: PlatformClient, name: str) -> int:
    events = client.events(name)
    return events[-1]["id"] if events else 0


_WAIT = click.option(
    "--wait/--no-wait", default=True, show_default=True, help="stream progress until done"
)
_TIMEOUT = click.option(
    "--timeout", type=float, default=600.0, show_default=True, help="seconds to wait"
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Manage OpenEAS services (EAS's eascmd)."""


@main.command()
@click.option("-i", "access_key_id", required=True, help="access key id")
@click.option("-k", "access_key_secret", required=True, help="access key secret")
@click.option(
    "-e",
    "endpoint",
    default="http://127.0.0.1:9090",
    show_default=True,
    help="control-plane endpoint",
)
def config(access_key_id: str, access_key_secret: str, endpoint: str) -> None:
    """Save the access key pair and endpoint eascmd uses."""
    path = save_client_config(AccessKey(access_key_id, access_key_secret), endpoint)
    click.echo(f"[OK] configuration saved to {path}")


@main.command()
@click.argument("spec_file")
@_WAIT
@_TIMEOUT
def create(spec_file: str, wait: bool, timeout: float) -> None:
    """Create a service from its JSON file and stream its deployment."""
    doc = _read_spec(spec_file)
    client = _client()
    view = _call(client.create, doc)
    click.echo(
        key_value_table(
            [
                ("Internet Endpoint", view["internet_endpoint"]),
                ("Intranet Endpoint", view["intranet_endpoint"]),
                ("Token", view["token"]),
            ]
        )
    )
    click.echo("[OK] Service is now deploying")
    if wait:
        _call(_watch, client, view["name"], 0, timeout)


@main.command()
@click.argument("name")
@_JSON
def desc(name: str, as_json: bool) -> None:
    """Describe a service."""
    view = _call(_client().describe, name)
    if as_json:
        _print_json(view)
        return
    c = view["instances"]
    rows = [
        ("ServiceName", view["name"]),
        ("Status", view["status"]),
        ("Reason", view["reason"]),
        ("Message", view["message"]),
        ("TotalInstance", c["total"]),
        ("PendingInstance", c["pending"]),
        ("RunningInstance", c["running"]),
        ("CPU", view["cpu"]),
        ("Memory", f"{view['memory']}M" if view["memory"] else ""),
        ("GPU", view["gpu"]),
        ("Resource", view["resource"]),
        ("Processor", view["processor"]),
        ("Group", view.get("group") or ""),
        ("TrafficState", view.get("traffic_state") or ""),
        ("Weight", "" if view.get("weight") is None else view["weight"]),
        ("CurrentVersion", view["current_version"]),
        ("LatestVersion", view["latest_version"]),
        ("InternetEndpoint", view["internet_endpoint"]),
        ("IntranetEndpoint", view["intranet_endpoint"]),
        ("Token", view["token"]),
        ("CreateTime", view["create_time"]),
        ("UpdateTime", view["update_time"]),
    ]
    for key, field in (("Autoscaler", "autoscaler"), ("CronScaler", "cronscaler")):
        if view.get(field) is not None:  # as the user wrote it, on one line
            rows.append((key, json.dumps(view[field], ensure_ascii=False)))
    rows.extend(_scaling_rows(view.get("scaling")))
    click.echo(key_value_table(rows))


def _scaling_rows(scaling: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """The scaling controller's live state: its last decision and the cron target."""
    if not scaling:
        return []
    rows: list[tuple[str, Any]] = []
    decision = scaling.get("lastDecision")
    if decision:
        rows.append(("LastScalingDecision", f"{decision['time']} {decision['reason']}"))
    cron = scaling.get("cron")
    if cron:
        rows.append(("CronTarget", "" if cron["target"] is None else cron["target"]))
        upcoming = cron.get("next")
        if upcoming:
            rows.append(
                (
                    "NextCronJob",
                    f"{upcoming['job']} at {upcoming['time']}: {upcoming['targetSize']}",
                )
            )
    return rows


@main.command("list")
@_JSON
def list_services(as_json: bool) -> None:
    """List services."""
    views = _call(_client().list)
    if as_json:
        _print_json(views)
        return
    rows = [
        (
            v["name"],
            v["status"],
            f"{v['instances']['running']}/{v['instances']['total']}",
            v["cpu"],
            v["memory"] or "",
            v["gpu"],
            v["current_version"],
            v["create_time"],
        )
        for v in views
    ]
    headers = [
        "ServiceName",
        "Status",
        "Running/Total",
        "CPU",
        "Memory",
        "GPU",
        "Version",
        "CreateTime",
    ]
    click.echo(grid_table(headers, rows))


@main.command()
@click.argument("name")
@click.option(
    "-D", "assignments", multiple=True, metavar="KEY=VALUE", help="set one field (repeatable)"
)
@click.option("-s", "spec_file", help="JSON file merged into the service spec")
@click.option("--replace", is_flag=True, help="with -s: replace the spec instead of merging")
@_WAIT
@_TIMEOUT
def modify(
    name: str,
    assignments: tuple[str, ...],
    spec_file: str | None,
    replace: bool,
    wait: bool,
    timeout: float,
) -> None:
    """Update a service (a new version): -Dmetadata.instance=3 or -s FILE."""
    if not assignments and not spec_file:
        _fail("nothing to change: give -D key=value and/or -s FILE")
    patch: dict[str, Any] = _read_spec(spec_file) if spec_file else {}
    for text in assignments:
        patch = merge_spec(patch, _call(parse_assignment, text))
    client = _client()
    after = _call(_last_event, client, name)
    view = _call(client.modify, name, patch, "replace" if replace else "merge")
    click.echo(f"[OK] Service {name} is now version {view['current_version']}")
    if wait:
        _call(_watch, client, name, after, timeout)


main.add_command(modify, name="update")


def _elastic_target(words: tuple[str, ...], off: bool) -> tuple[str, bool]:
    """``NAME`` or EAS's ``rm NAME`` (which is ``--off``)."""
    if len(words) == 2 and words[0] == "rm":
        return words[1], True
    if len(words) != 1:
        _fail(f"expected NAME or rm NAME, got {' '.join(words) or 'nothing'}")
    return words[0], off


_OFF = click.option("--off", is_flag=True, help="turn it off (EAS: rm NAME); the count stays")


@main.command()
@click.argument("words", nargs=-1, metavar="NAME | rm NAME")
@click.option(
    "-s", "spec_file", metavar="FILE", help="autoscaler JSON file (either EAS form), set as written"
)
@click.option(
    "-D",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="min, max, strategies.qps, strategies.cpu, behavior.scaleUp.stabilizationWindowSeconds, "
    "... (repeatable; edits the current autoscaler, or the -s file)",
)
@_OFF
def autoscale(
    words: tuple[str, ...], spec_file: str | None, assignments: tuple[str, ...], off: bool
) -> None:
    """Set, edit or turn off a service's autoscaler (its instances keep running).

    \b
    eascmd autoscale NAME -s autoscaler.json
    eascmd autoscale NAME -Dmin=1 -Dmax=8 -Dstrategies.qps=100 -Dstrategies.cpu=80
    eascmd autoscale NAME --off          (or: eascmd autoscale rm NAME)

    Fields and rules: docs/elastic.md.
    """
    name, off = _elastic_target(words, off)
    client = _client()
    if off:
        if spec_file or assignments:
            _fail("--off (rm) takes no -s or -D")
        _call(client.remove_elastic, name, "autoscaler")
        click.echo(f"[OK] Service {name}: autoscaler is off")
        return
    if not spec_file and not assignments:
        _fail("nothing to change: give -s FILE, -D key=value or --off")
    doc = _read_json(spec_file) if spec_file else None
    if assignments:
        doc = _call(_overridden_autoscaler, client, name, doc, assignments)
    view = _call(client.set_elastic, name, "autoscaler", doc)
    click.echo(f"[OK] Service {name}: autoscaler set (version {view['current_version']})")


def _overridden_autoscaler(
    client: PlatformClient, name: str, doc: Any, assignments: tuple[str, ...]
) -> dict[str, Any]:
    """``-D`` applied to ``doc`` (from -s), else to the service's current autoscaler."""
    if doc is None:
        doc = client.describe(name)["autoscaler"]
    base = parse_autoscaler(doc) if doc is not None else None
    return apply_overrides(base, assignments).to_json()


@main.command()
@click.argument("words", nargs=-1, metavar="NAME | rm NAME")
@click.option(
    "-s", "spec_file", metavar="FILE", help="cronscaler JSON file ({ScaleJobs, ExcludeDates})"
)
@_OFF
def cronscale(words: tuple[str, ...], spec_file: str | None, off: bool) -> None:
    """Set or turn off a service's scheduled scaling (cronscaler).

    \b
    eascmd cronscale NAME -s cron.json
    eascmd cronscale NAME --off          (or: eascmd cronscale rm NAME)

    A job takes effect at its first firing after it is set. Fields and rules:
    docs/elastic.md.
    """
    name, off = _elastic_target(words, off)
    client = _client()
    if off:
        if spec_file:
            _fail("--off (rm) takes no -s")
        _call(client.remove_elastic, name, "cronscaler")
        click.echo(f"[OK] Service {name}: cronscaler is off")
        return
    if not spec_file:
        _fail("nothing to change: give -s FILE or --off")
    view = _call(client.set_elastic, name, "cronscaler", _read_json(spec_file))
    click.echo(f"[OK] Service {name}: cronscaler set (version {view['current_version']})")


@main.command()
@click.argument("name")
@_JSON
def version(name: str, as_json: bool) -> None:
    """List a service's versions."""
    versions = _call(_client().versions, name)
    if as_json:
        _print_json(versions)
        return
    rows = [
        (
            v["version"],
            "*" if v["current"] else "",
            v["spec"]["metadata"].get("instance", 1),
            v["spec"]["metadata"].get("cpu", 1),
            v["spec"]["metadata"].get("memory", ""),
            v["created_at"],
        )
        for v in versions
    ]
    click.echo(grid_table(["Version", "Current", "Instance", "CPU", "Memory", "CreateTime"], rows))


@main.command()
@click.argument("name")
@click.argument("version_number", metavar="VERSION", type=int)
@_WAIT
@_TIMEOUT
def switch(name: str, version_number: int, wait: bool, timeout: float) -> None:
    """Make another version of a service current (roll back or forward)."""
    client = _client()
    after = _call(_last_event, client, name)
    _call(client.switch, name, version_number)
    click.echo(f"[OK] Service {name} is switching to version {version_number}")
    if wait:
        _call(_watch, client, name, after, timeout)


@main.command()
@click.argument("name")
@_WAIT
@_TIMEOUT
def stop(name: str, wait: bool, timeout: float) -> None:
    """Stop a service's instances (the service and its versions stay)."""
    client = _client()
    _call(client.stop, name)
    click.echo(f"[OK] Service {name} is stopping")
    if wait:
        _call(_watch, client, name, 0, timeout, Desired.STOPPED)


@main.command()
@click.argument("name")
@_WAIT
@_TIMEOUT
def start(name: str, wait: bool, timeout: float) -> None:
    """Start a stopped (or failed) service."""
    client = _client()
    after = _call(_last_event, client, name)
    _call(client.start, name)
    click.echo(f"[OK] Service {name} is starting")
    if wait:
        _call(_watch, client, name, after, timeout)


@main.command()
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="do not ask for confirmation")
@_WAIT
@_TIMEOUT
def delete(name: str, yes: bool, wait: bool, timeout: float) -> None:
    """Delete a service and its instances."""
    if not yes and not click.confirm(f"Are you sure to delete the service [{name}]?"):
        _fail("cancelled")
    client = _client()
    _call(client.delete, name)
    click.echo(f"[OK] Service {name} is being deleted")
    if wait:
        _call(_watch, client, name, 0, timeout, Desired.DELETED)


@main.command()
@click.argument("name")
@_JSON
def instances(name: str, as_json: bool) -> None:
    """A service's instances."""
    insts = _call(_client().instances, name)
    if as_json:
        _print_json(insts)
        return
    rows = [
        (
            i["name"],
            i["status"],
            "true" if i["ready"] else "false",
            i["restarts"],
            f"{i['ip']}:{i['port']}",
            _node(i.get("node", "")),
            i["version"],
            i["started"] or "",
            i["reason"],
        )
        for i in insts
    ]
    headers = [
        "InstanceName",
        "Status",
        "Ready",
        "Restarts",
        "IP:Port",
        "Node",
        "Version",
        "Started",
        "Reason",
    ]
    click.echo(grid_table(headers, rows))


def _node(node: str) -> str:
    """A node as the table shows it: the start of a Ray node id (--json has all of it);
    ``local`` for this machine (the local runtime)."""
    return node[:12] if node else "local"


@main.group()
def resource() -> None:
    """Resource groups (the capacity services are placed in)."""


@resource.command("list")
@_JSON
def resource_list(as_json: bool) -> None:
    """Each resource group: its nodes, cpu/memory/gpu in total and free."""
    groups = _call(_client().resources)
    if as_json:
        _print_json(groups)
        return
    rows = [
        (
            g["name"],
            g.get("nodes", 1),
            f"{g['cpu'] - g['used_cpu']}/{g['cpu']}",
            f"{g['memory'] - g['used_memory']}/{g['memory']}",
            f"{g['gpu'] - g['used_gpu']}/{g['gpu']}",
            g["instances"],
        )
        for g in groups
    ]
    headers = ["Resource", "Nodes", "CPU free/total", "Memory MB free/total", "GPU free/total"]
    click.echo(grid_table([*headers, "Instances"], rows))


@main.group()
def group() -> None:
    """Service groups: one endpoint and token in front of several services
    (docs/groups.md). A group is created by the first service whose metadata.group names
    it and deleted with its last member."""


@group.command("list")
@_JSON
def group_list(as_json: bool) -> None:
    """Each service group: its traffic mode and members."""
    groups = _call(_client().groups)
    if as_json:
        _print_json(groups)
        return
    rows = [
        (
            g["Name"],
            g["TrafficMode"],
            ", ".join(m["ServiceName"] for m in g["Members"]),
            g["InternetEndpoint"],
            g["CreateTime"],
        )
        for g in groups
    ]
    headers = ["GroupName", "TrafficMode", "Members", "InternetEndpoint", "CreateTime"]
    click.echo(grid_table(headers, rows))


@group.command("desc")
@click.argument("name")
@_JSON
def group_desc(name: str, as_json: bool) -> None:
    """Describe a service group: endpoints, token, traffic mode, and each member's
    TrafficState, Weight, ready instances and current share of the group's requests."""
    view = _call(_client().describe_group, name)
    if as_json:
        _print_json(view)
        return
    keys = ["Name", "TrafficMode", "InternetEndpoint", "IntranetEndpoint", "AccessToken"]
    click.echo(key_value_table([(k, view[k]) for k in [*keys, "CreateTime", "UpdateTime"]]))
    rows = [
        (
            m["ServiceName"],
            m["TrafficState"],
            m["Weight"],
            m["ReadyInstances"],
            f"{m['TrafficShare']:g}%",
        )
        for m in view["Members"]
    ]
    headers = ["ServiceName", "TrafficState", "Weight", "ReadyInstances", "Share"]
    click.echo(grid_table(headers, rows))


@group.command("modify")
@click.argument("name")
@click.option(
    "--traffic-mode",
    required=True,
    type=click.Choice([m.value for m in TrafficMode]),
    help="auto: shares follow the members' ready instances; customized: their Weights",
)
def group_modify(name: str, traffic_mode: str) -> None:
    """Set a service group's traffic mode."""
    _call(_client().update_group, name, traffic_mode)
    click.echo(f"[OK] Group {name}: traffic mode {traffic_mode}")


@main.command()
@click.argument("name")
@click.option(
    "--weight",
    type=click.IntRange(MIN_WEIGHT, MAX_WEIGHT),
    help=f"the service's weight in its group ({MIN_WEIGHT}..{MAX_WEIGHT}; -1: unset, "
    "counts as 100); used in traffic mode customized",
)
@click.option(
    "--traffic-state",
    type=click.Choice([s.value for s in TrafficState]),
    help="grouping: take a share of the group's requests; standalone: none",
)
def release(name: str, weight: int | None, traffic_state: str | None) -> None:
    """Set a group member's weight and/or traffic state (EAS's canary release).

    \b
    eascmd release canary --traffic-state grouping --weight 10
    eascmd release canary --traffic-state standalone     (pull it out)
    """
    if weight is None and traffic_state is None:
        _fail("nothing to release: give --weight and/or --traffic-state")
    answer = _call(_client().release, name, weight, traffic_state)
    click.echo(f"[OK] {answer['Message']}")


@main.command()
@click.argument("name")
@_JSON
def events(name: str, as_json: bool) -> None:
    """A service's events, oldest first."""
    evs = _call(_client().events, name)
    if as_json:
        _print_json(evs)
        return
    click.echo(
        grid_table(
            ["Time", "Type", "Reason", "Message"],
            [(e["time"], e["type"], e["reason"], e["message"]) for e in evs],
        )
    )


@main.command()
@click.argument("name")
@click.option("--instance", help="instance name (default: the newest)")
@click.option("--tail", type=click.IntRange(0), help="only the last N lines")
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines")
def logs(name: str, instance: str | None, tail: int | None, follow: bool) -> None:
    """An instance's log."""
    client = _client()
    text, offset = _call(client.logs, name, instance, tail)
    click.echo(text, nl=False)
    try:
        while follow:
            time.sleep(0.5)
            text, offset = _call(client.logs, name, instance, None, offset)
            click.echo(text, nl=False)
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--to", "dest", help="destination oss:// URI [default: oss://eas-models/<name>/]")
def upload(path: str, dest: str | None) -> None:
    """Put a file, or a directory's contents, into the object store; prints the oss:// path.

    A directory's contents land directly below the destination, so the printed path is
    what ``--model-repository`` takes.
    """
    from openeas.storage import StorageError
    from openeas.storage.transfer import copy

    source = Path(path)
    target = dest or f"oss://eas-models/{source.resolve().name}/"
    try:
        if source.is_dir():
            target = target.rstrip("/") + "/"
            # The trailing slash asks for the directory's contents, not the directory.
            summary = copy(str(source).rstrip("/") + "/", target, recursive=True)
            printed = target
        else:
            summary = copy(str(source), target)
            printed = target + source.name if target.endswith("/") else target
    except StorageError as exc:
        _fail(str(exc))
    click.echo(f"[OK] uploaded {summary.files} file(s), {summary.bytes} bytes")
    click.echo(printed)


if __name__ == "__main__":
    main()
