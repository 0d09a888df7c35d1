"""``openeas up`` / ``down`` / ``status``: the platform on this machine (a supervisor with
a control-plane process and a gateway process, see :mod:`openeas.platform.supervisor`)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from openeas.home import openeas_home
from openeas.platform.logs import ACCESS_MODES, LogOptions
from openeas.platform.logs import configure as configure_logs

if TYPE_CHECKING:
    from openeas.gateway import GatewayTls

_PORT = click.IntRange(1, 65535)


def _wait_answering(api: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise click.ClickException(
                f"the platform exited with status {process.returncode}:\n{tail}"
            )
        try:
            if httpx.get(f"{api}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise click.ClickException(f"the platform did not answer within {timeout:.0f}s (log: {log})")


_PEM = click.Path(exists=True, dir_okay=False, resolve_path=True)


def tls_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--tls-cert``/``--tls-key`` (turn them into a GatewayTls with :func:`gateway_tls`)."""
    command = click.option("--tls-key", type=_PEM, help="the private key (PEM) of --tls-cert")(
        command
    )
    return click.option(
        "--tls-cert",
        type=_PEM,
        help="serve HTTPS and gRPC over TLS on the gateway's ports with this certificate "
        "chain (PEM; needs --tls-key)",
    )(command)


def gateway_tls(cert: str | None, key: str | None) -> GatewayTls | None:
    """The gateway's TLS files, loaded once now so that a bad one names its flag."""
    from openeas.gateway import GatewayTls

    if cert is None and key is None:
        return None
    if cert is None:
        raise click.UsageError("--tls-key needs --tls-cert")
    if key is None:
        raise click.UsageError("--tls-cert needs --tls-key")
    tls = GatewayTls(cert, key)
    try:
        tls.contexts()
    except OSError as exc:
        raise click.BadParameter(str(exc), param_hint="'--tls-cert' / '--tls-key'") from None
    return tls


@click.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="bind address of the API and the gateway"
)
@click.option(
    "--api-port", type=_PORT, default=9090, show_default=True, help="control-plane REST API port"
)
@click.option("--http-port", type=_PORT, default=8080, show_default=True, help="gateway HTTP port")
@click.option("--grpc-port", type=_PORT, default=8081, show_default=True, help="gateway gRPC port")
@click.option("--public-host", help="host name in Internet endpoints [default: the bind address]")
@click.option("--intranet-host", help="host name in Intranet endpoints [default: the bind address]")
@click.option(
    "--cpus",
    type=click.IntRange(1),
    help="CPU capacity of the local resource group [default: cores]",
)
@click.option(
    "--memory", type=click.IntRange(64), help="memory capacity in MB [default: machine memory]"
)
@click.option("--gpus", type=click.IntRange(0), help="GPU capacity [default: detected devices]")
@click.option(
    "--runtime",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="where instances run: processes on this machine, or actors on a Ray cluster's "
    "nodes (resource groups are then the nodes' openeas_group_<name> resources; "
    "see docs/cluster.md)",
)
@click.option(
    "--ray-address",
    envvar="RAY_ADDRESS",
    help="with --runtime ray: the cluster's head, HOST:6379 (this machine must be one of "
    "its nodes) or ray://HOST:10001 [env: RAY_ADDRESS]",
)
@click.option(
    "--storage-port",
    type=_PORT,
    default=8333,
    show_default=True,
    help="with --runtime ray and no OPENEAS_STORAGE_ENDPOINT: the port of the S3 server "
    "the platform runs for oss:// and s3:// (on --host; see docs/cluster.md)",
)
@click.option(
    "--restart-backoff", type=float, default=1.0, hidden=True, help="first restart delay (s)"
)
@click.option(
    "--restart-backoff-reset",
    type=float,
    default=600.0,
    hidden=True,
    help="seconds of readiness after which an instance's crash streak is forgotten",
)
@click.option("--crashloop-restarts", type=click.IntRange(0), default=3, hidden=True)
@click.option(
    "--detach", "-d", is_flag=True, help="run in the background and return once it answers"
)
@click.option(
    "--timeout", type=float, default=60.0, show_default=True, help="seconds --detach waits"
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning"]),
    default="info",
    show_default=True,
    help="platform log level (readiness probes are debug lines)",
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="the platform's log, rotated by size [default: stderr; with --detach "
    "$OPENEAS_HOME/logs/platform.log]",
)
@click.option(
    "--log-max-bytes",
    type=click.IntRange(1024),
    default=10 * 2**20,
    show_default=True,
    help="rotate the log files at this size",
)
@click.option(
    "--log-backups",
    type=click.IntRange(0),
    default=5,
    show_default=True,
    help="rotated files kept per log",
)
@click.option(
    "--access-log",
    type=click.Choice(ACCESS_MODES),
    default="off",
    show_default=True,
    help="the gateway's per-request log in $OPENEAS_HOME/logs/access.log: off, all, "
    "or sampled (1 in --access-log-sample requests)",
)
@click.option(
    "--access-log-sample",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    help="with --access-log=sampled: log one request in this many",
)
@tls_options
@click.option(
    "--component",
    type=click.Choice(["all", "control-plane"]),
    default="all",
    hidden=True,
    help="control-plane: run only the control plane (what the supervisor starts)",
)
@click.option("--gateway-metrics", hidden=True, help="the gateway's metrics URL (supervisor)")
@click.option(
    "--api-fd", type=int, hidden=True, help="the API's listening socket, bound by the supervisor"
)
def up(
    host: str,
    api_port: int,
    http_port: int,
    grpc_port: int,
    public_host: str | None,
    intranet_host: str | None,
    cpus: int | None,
    memory: int | None,
    gpus: int | None,
    runtime: str,
    ray_address: str | None,
    storage_port: int,
    restart_backoff: float,
    restart_backoff_reset: float,
    crashloop_restarts: int,
    detach: bool,
    timeout: float,
    log_level: str,
    log_file: Path | None,
    log_max_bytes: int,
    log_backups: int,
    access_log: str,
    access_log_sample: int,
    tls_cert: str | None,
    tls_key: str | None,
    component: str,
    gateway_metrics: str | None,
    api_fd: int | None,
) -> None:
    """Start the control plane, gateway and local runtime (foreground unless --detach).

    The control plane and the gateway run as two processes under a supervisor that
    restarts either within a second; `openeas status` shows them.
    """
    from openeas.platform.daemon import PlatformOptions, running_platform, serve
    from openeas.platform.errors import PlatformError
    from openeas.platform.reconciler import Tuning

    if runtime == "ray" and not ray_address:
        raise click.UsageError("--runtime ray needs --ray-address (or RAY_ADDRESS)")
    running = None if component == "control-plane" else running_platform()
    if running is not None:
        raise click.ClickException(
            f"a platform is already running (pid {running['pid']}, API {running['api']})"
        )
    tls = gateway_tls(tls_cert, tls_key)
    os.umask(0o077)  # logs, database and credentials are the platform user's only
    logs = openeas_home() / "logs"
    if detach:
        _detach(host, api_port, http_port, grpc_port, log_file or logs / "platform.log", timeout)
        return
    log_options = LogOptions(
        level=log_level, file=log_file, max_bytes=log_max_bytes, backups=log_backups
    )
    if component == "all":
        ctx = click.get_current_context()
        _supervise(ctx, log_options, access_log, access_log_sample)
        return
    configure_logs(LogOptions(level=log_level))  # stderr: the supervisor forwards it
    options = PlatformOptions(
        host=host,
        api_port=api_port,
        http_port=http_port,
        grpc_port=grpc_port,
        public_host=public_host,
        intranet_host=intranet_host,
        cpus=cpus,
        memory_mb=memory,
        gpus=gpus,
        tls=tls,
        runtime=runtime,
        ray_address=ray_address,
        tuning=Tuning(
            backoff_base=restart_backoff,
            backoff_reset=restart_backoff_reset,
            crashloop_restarts=crashloop_restarts,
        ),
        gateway_metrics=gateway_metrics,
        api_fd=api_fd,
    )
    import uvloop

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(options))
    except PlatformError as exc:
        raise click.ClickException(str(exc)) from None


#: ``openeas up`` flags that the control-plane component takes as they are
_CONTROL_PLANE_FLAGS = (
    "public_host", "intranet_host", "cpus", "memory", "gpus", "restart_backoff",
    "restart_backoff_reset", "crashloop_restarts", "log_level", "tls_cert", "tls_key",
    "runtime", "ray_address",
)  # fmt: skip


def _supervise(
    ctx: click.Context, log_options: LogOptions, access_log: str, access_sample: int
) -> None:
    """Run the supervisor with the control-plane and gateway processes (see
    :mod:`openeas.platform.supervisor`)."""
    from openeas.platform.errors import PlatformError
    from openeas.platform.supervisor import SupervisedPlatform, supervise

    p = ctx.params
    control_args = [
        f"--{name.replace('_', '-')}={p[name]}"
        for name in _CONTROL_PLANE_FLAGS
        if p[name] is not None
    ]
    gateway_args = [
        f"--log-level={p['log_level']}",
        f"--access-log={access_log}",
        f"--access-log-sample={access_sample}",
        f"--log-max-bytes={log_options.max_bytes}",
        f"--log-backups={log_options.backups}",
        *(f"--{name.replace('_', '-')}={p[name]}" for name in ("tls_cert", "tls_key") if p[name]),
    ]
    configure_logs(log_options)
    try:
        options = SupervisedPlatform(
            p["host"], p["api_port"], p["http_port"], p["grpc_port"], control_args, gateway_args,
            services=_embedded_storage(p["runtime"], p["host"], p["storage_port"]),
        )  # fmt: skip
        supervise(options, openeas_home())
    except (PlatformError, OSError) as exc:
        raise click.ClickException(str(exc)) from None


def _embedded_storage(runtime: str, host: str, port: int) -> dict[str, list[str]]:
    """The embedded S3 server's components where the Ray runtime has no endpoint; the
    local runtime keeps its directory store (see :mod:`openeas.storage.embedded_s3`)."""
    from openeas.storage import embedded_s3
    from openeas.storage.config import ENDPOINT_ENV

    home = openeas_home()
    if runtime != "ray" or os.environ.get(ENDPOINT_ENV):
        embedded_s3.forget(home)
        return {}
    return embedded_s3.EmbeddedS3.prepare(home, host, port).components()


def _detach(
    host: str, api_port: int, http_port: int, grpc_port: int, log_path: Path, timeout: float
) -> None:
    """Run ``openeas up`` (same flags) in the background, logging to ``log_path``; its
    stdout/stderr (output from before logging is set up, e.g. a crash) go to
    ``platform.out`` next to it."""
    args = [a for a in sys.argv[1:] if a not in ("--detach", "-d")]
    if "up" not in args:
        args = ["up", *args]
    args = args[args.index("up") :]
    if not any(a == "--log-file" or a.startswith("--log-file=") for a in args):
        args.append(f"--log-file={log_path}")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out_path = log_path.with_name("platform.out")
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "openeas.cli.main", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    _wait_answering(f"http://{api_host}:{api_port}", process, out_path, timeout)
    click.echo(
        f"[OK] OpenEAS is up (pid {process.pid}): API http://{api_host}:{api_port}, "
        f"gateway :{http_port} (HTTP) :{grpc_port} (gRPC)"
    )
    click.echo(f"     logs: {log_path}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print the runtime info as JSON")
def status(as_json: bool) -> None:
    """The platform's processes: components, pids, uptime, restarts."""
    import json

    from openeas.platform.daemon import running_platform

    running = running_platform()
    if running is None:
        raise click.ClickException("no platform is running")
    if as_json:
        click.echo(json.dumps(running, indent=2))
        return
    click.echo(f"supervisor  pid {running['pid']}  API {running['api']}  "
               f"gateway :{running['gateway_http']} (HTTP) :{running['gateway_grpc']} (gRPC)")  # fmt: skip
    rows = [["COMPONENT", "PID", "STATE", "UPTIME", "RESTARTS"]]
    now = time.time()
    for name, comp in running.get("components", {}).items():
        alive = comp["pid"] is not None and _alive(int(comp["pid"]))
        uptime = f"{now - comp['started_at']:.0f}s" if alive else "-"
        rows.append(
            [name, str(comp["pid"]), "running" if alive else "restarting", uptime,
             str(comp["restarts"])]
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@click.command()
@click.option("--timeout", type=float, default=120.0, show_default=True, help="seconds to wait")
def down(timeout: float) -> None:
    """Stop the platform gracefully (its instances stop; services come back on `up`).

    The supervisor stops the control plane (which stops the instances), then the gateway.
    """
    from openeas.platform.daemon import running_platform

    running = running_platform()
    if running is None:
        click.echo("[OK] no platform is running")
        return
    pid = int(running["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            click.echo("[OK] OpenEAS is down")
            return
        time.sleep(0.1)
    raise click.ClickException(f"the platform (pid {pid}) did not stop within {timeout:.0f}s")
