"""``openeas gateway``: a gateway process that follows a control plane's routes."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import click

from openeas.cli.platform import gateway_tls, tls_options
from openeas.home import openeas_home

_PORT = click.IntRange(1, 65535)


def _fds(value: str | None) -> tuple[int, int, int | None] | None:
    if not value:
        return None
    try:
        fds = [int(f) for f in value.split(",")]
    except ValueError:
        raise click.BadParameter("comma-separated file descriptors") from None
    if len(fds) not in (2, 3):
        raise click.BadParameter("HTTP,gRPC[,metrics] file descriptors")
    return fds[0], fds[1], fds[2] if len(fds) == 3 else None


@click.command()
@click.option("--api", required=True, help="the control plane's API, e.g. http://HOST:9090")
@click.option(
    "--credential",
    type=click.Path(dir_okay=False, path_type=Path),
    help="the gateway credential file (a copy of the control plane's "
    "$OPENEAS_HOME/gateway-credential) [default: $OPENEAS_HOME/gateway-credential]",
)
@click.option("--host", default="0.0.0.0", show_default=True, help="bind address")
@click.option("--http-port", type=_PORT, default=8080, show_default=True, help="HTTP port")
@click.option("--grpc-port", type=_PORT, default=8081, show_default=True, help="gRPC port")
@click.option("--metrics-port", type=_PORT, help="serve this gateway's Prometheus metrics here")
@click.option(
    "--snapshot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="where the last routes are kept (mode 0600) [default: $OPENEAS_HOME/routes.json]",
)
@click.option("--gateway-id", help="this gateway's name to the control plane [default: host name]")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning"]),
    default="info",
    show_default=True,
)
@click.option("--access-log", type=click.Choice(["off", "all", "sampled"]), default="off")
@click.option("--access-log-sample", type=click.IntRange(1), default=100)
@click.option("--log-max-bytes", type=click.IntRange(1024), default=10 * 2**20, hidden=True)
@click.option("--log-backups", type=click.IntRange(0), default=5, hidden=True)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="gateway processes sharing the ports (and each service's limits)",
)
@click.option("--access-log-file", type=click.Path(dir_okay=False, path_type=Path), hidden=True)
@click.option("--inherit-fds", hidden=True, help="HTTP,gRPC[,metrics] listening sockets")
@tls_options
def gateway(
    api: str,
    credential: Path | None,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int | None,
    snapshot: Path | None,
    gateway_id: str | None,
    log_level: str,
    access_log: str,
    access_log_sample: int,
    log_max_bytes: int,
    log_backups: int,
    workers: int,
    access_log_file: Path | None,
    inherit_fds: str | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Run a gateway (HTTP and gRPC) whose routes follow the control plane at --api.

    It keeps the last routes on disk and serves from them while the API is down.  With
    --workers N, this process holds the ports and runs N gateway processes on them,
    restarting any that dies; each enforces 1/N of every service's limits.
    """
    from openeas.gateway.follower import read_credential
    from openeas.gateway.process import GatewayOptions, run_gateway
    from openeas.platform.logs import LogOptions
    from openeas.platform.logs import configure as configure_logs

    os.umask(0o077)  # the snapshot holds tokens
    home = openeas_home()
    credential = credential or home / "gateway-credential"
    try:
        token = read_credential(credential)
    except (OSError, ValueError, KeyError) as exc:
        raise click.ClickException(f"--credential {credential}: {exc}") from None
    tls = gateway_tls(tls_cert, tls_key)
    fds = _fds(inherit_fds)
    if workers > 1 and fds is None:
        configure_logs(LogOptions(level=log_level))
        _run_workers(click.get_current_context(), credential, home)
        return
    listener = configure_logs(
        LogOptions(
            level=log_level,
            max_bytes=log_max_bytes,
            backups=log_backups,
            access=access_log,
            access_sample=access_log_sample,
            access_file=access_log_file or home / "logs" / "access.log",
        )
    )
    options = GatewayOptions(
        api=api,
        token=token,
        snapshot=snapshot or home / "routes.json",
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        fds=fds[:2] if fds else None,
        metrics_port=metrics_port,
        metrics_fd=fds[2] if fds else None,
        gateway_id=gateway_id,
        workers=workers,
        tls=tls,
    )
    import uvloop

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run_gateway(options))
    except OSError as exc:
        raise click.ClickException(f"the gateway could not start: {exc}") from None
    finally:
        if listener is not None:
            listener.stop()


#: flags a worker takes from its parent's command line as they are
_WORKER_FLAGS = (
    "api", "http_port", "grpc_port", "snapshot", "log_level", "access_log",
    "access_log_sample", "log_max_bytes", "log_backups", "workers", "tls_cert", "tls_key",
)  # fmt: skip


def _run_workers(ctx: click.Context, credential: Path, home: Path) -> None:
    """Hold the listening sockets and supervise ``--workers`` gateway processes on them.

    They share each socket's accept queue (rather than SO_REUSEPORT sockets of their
    own), so a worker that dies loses no queued connection: the others, and its
    replacement, accept them.
    """
    from openeas.platform.supervisor import Component, Supervisor, cli
    from openeas.transport.sockets import bind_socket

    p = ctx.params
    host, gateway_id = p["host"], p["gateway_id"] or socket.gethostname()
    try:
        http, grpc = bind_socket(host, p["http_port"]), bind_socket(host, p["grpc_port"])
    except OSError as exc:
        raise click.ClickException(str(exc)) from None
    common = [
        f"--{name.replace('_', '-')}={p[name]}" for name in _WORKER_FLAGS if p[name] is not None
    ]
    workers = []
    for i in range(p["workers"]):
        listening = [http, grpc]
        if p["metrics_port"] is not None:  # worker i: metrics on --metrics-port + i
            listening.append(bind_socket(host, p["metrics_port"] + i))
        fds = tuple(s.fileno() for s in listening)
        argv = cli(
            "gateway", *common, f"--credential={credential}", f"--host={host}",
            f"--gateway-id={gateway_id}-{i}", f"--inherit-fds={','.join(map(str, fds))}",
            f"--access-log-file={home / 'logs' / f'access-{i}.log'}",
        )  # fmt: skip
        workers.append(Component(f"gateway-{i}", argv, pass_fds=fds))
    Supervisor(None, workers).run()
