"""``openeas-server``: the triton processor's entry point."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from typing import Protocol

from openeas.protocol import instance_token
from openeas.server.dataplane import DataPlane
from openeas.server.frontends.http import HttpFrontend
from openeas.server.frontends.httpserver import HttpServer
from openeas.server.frontends.metrics import MetricsApp
from openeas.server.models import ControlMode, RepositoryOptions
from openeas.server.options import ServerOptions, parse_args
from openeas.storage import RepositoryMount, StorageError
from openeas.transport.sockets import UnixHttpServer, bind_socket, bind_unix_socket

log = logging.getLogger(__name__)


def setup_logging(options: ServerOptions) -> None:
    if options.log_format == "ISO8601":
        fmt, datefmt = "%(asctime)s %(levelname)s %(name)s] %(message)s", "%Y-%m-%dT%H:%M:%SZ"
    else:
        fmt, datefmt = (
            "%(levelname).1s%(asctime)s %(process)d %(name)s] %(message)s",
            "%m%d %H:%M:%S",
        )
    handler: logging.Handler = (
        logging.FileHandler(options.log_file) if options.log_file else logging.StreamHandler()
    )
    handler.setFormatter(logging.Formatter(fmt, datefmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


async def serve(options: ServerOptions) -> int:
    """Load models, serve until SIGTERM/SIGINT, shut down gracefully; the exit status."""
    # Before any model starts a helper process, which must not inherit it.
    token = instance_token.from_environment()  # set by the platform for its instances
    mounts = await _mount_repositories(options)
    if mounts is None:
        return 1
    roots = [m.local_path if m.uri.remote else m.local_path.resolve() for m in mounts]
    for mount, root in zip(mounts, roots, strict=True):
        if not mount.uri.remote and not root.is_dir():
            log.error("failed to open model repository '%s': no such directory", root)
            return 1

    dataplane = DataPlane(
        RepositoryOptions(
            roots=roots,
            control_mode=ControlMode(options.model_control_mode),
            startup_models=options.load_models,
            auto_complete=options.auto_complete,
            backend_configs=options.backend_configs,
            load_threads=options.model_load_thread_count,
            poll_seconds=options.repository_poll_secs,
            exit_timeout=options.exit_timeout_secs,
            refresh_hooks=[m.poll for m in mounts if m.uri.remote],
        ),
        server_id=options.server_id,
        strict_readiness=options.strict_readiness,
        allow_client_shm=options.allow_client_shm,
        cache_size=options.cache_size,
        log_settings={
            "log_info": options.log_info,
            "log_warning": options.log_warning,
            "log_error": options.log_error,
            "log_verbose_level": options.log_verbose,
            "log_format": options.log_format,
            "log_file": options.log_file,
        },
    )
    for flag in options.ignored:
        log.info("accepted %s; it has no effect on this CPU-only server", flag)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    failures = await dataplane.start()
    if failures and options.exit_on_error:
        log.error("exiting: %d model(s) failed to load (--exit-on-error=true)", len(failures))
        await dataplane.stop()
        return 1

    try:
        servers = _front_ends(options, dataplane, token)
        hosts = {
            "GRPCInferenceService": options.grpc_address,
            "HTTPService": options.http_address,
            "Metrics Service": options.metrics_address,
        }
        for name, server in servers:
            await server.start()
            where = getattr(server, "where", None)
            # Triton's line: the address it was told to bind, ':', the port
            address = f"unix:{where}" if where else f"{hosts[name]}:{server.port}"
            log.info("Started %s at %s", name, address)
            print(f"Started {name} at {address}", file=sys.stderr, flush=True)
    except OSError as exc:
        log.error("%s", exc)
        await dataplane.stop()
        return 1

    # Start-up objects (modules, configs, sessions) never die: keep them out of the
    # cyclic collector's way so that collections stay short under load (tail latency).
    gc.freeze()
    await stop.wait()
    log.info("shutting down: draining in-flight requests (up to %ss)", options.exit_timeout_secs)
    dataplane.shutting_down = True
    await asyncio.gather(
        *(server.stop(options.exit_timeout_secs) for _, server in servers),
        return_exceptions=True,
    )
    await dataplane.stop()
    return 0


async def _mount_repositories(options: ServerOptions) -> list[RepositoryMount] | None:
    """Each ``--model-repository`` as a mount; object-store URIs are synced into the
    local cache first.  None when the server must exit (the reason is logged)."""
    mounts: list[RepositoryMount] = []
    loop = asyncio.get_running_loop()
    for text in options.model_repositories:
        try:
            mount = RepositoryMount(text)
        except StorageError as exc:
            log.error("failed to open model repository %s", exc)
            return None
        if mount.uri.remote:
            try:
                await loop.run_in_executor(None, mount.refresh)
            except StorageError as exc:
                if options.exit_on_error:
                    log.error("failed to open model repository %s", exc)
                    return None
                # Serve the last synced copy (if any); polling retries the store.
                log.error("model repository %s; continuing (--exit-on-error=false)", exc)
        mounts.append(mount)
    return mounts


class _FrontEnd(Protocol):
    port: int

    async def start(self) -> None: ...

    async def stop(self, timeout: float) -> None: ...


def _front_ends(
    options: ServerOptions, dataplane: DataPlane, token: bytes | None = None
) -> list[tuple[str, _FrontEnd]]:
    """The enabled front ends, their sockets bound (OSError names a busy address); with
    ``token``, HTTP and gRPC answer only requests carrying it (a platform instance)."""
    servers: list[tuple[str, _FrontEnd]] = []
    if options.allow_grpc:
        from openeas.server.frontends.grpc import GrpcFrontend

        servers.append(("GRPCInferenceService", GrpcFrontend(dataplane, options, token)))
    if options.allow_http:
        app = HttpFrontend(dataplane, options.http_max_input_size, token)

        def too_large(size: int) -> bytes:
            return (
                f"request body of at least {size} bytes exceeds the maximum input size "
                f"of {options.http_max_input_size} bytes (--http-max-input-size)"
            ).encode()

        sock = bind_socket(options.http_address, options.http_port)
        servers.append(
            (
                "HTTPService",
                HttpServer(
                    app,
                    sock,
                    max_body_size=options.http_max_input_size,
                    too_large_body=too_large,
                    limits=options.http_limits,
                ),
            )
        )
        if options.http_unix_socket:
            server = HttpServer(
                app,
                bind_unix_socket(options.http_unix_socket),
                max_body_size=options.http_max_input_size,
                too_large_body=too_large,
                limits=options.http_limits,
            )
            servers.append(("HTTPService", UnixHttpServer(server, options.http_unix_socket)))
    if options.allow_metrics:
        sock = bind_socket(options.metrics_address, options.metrics_port)
        metrics = MetricsApp(dataplane, options.metrics_interval_ms)
        servers.append(("Metrics Service", HttpServer(metrics, sock)))
    return servers


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    setup_logging(options)
    logging.getLogger("openeas").setLevel(logging.INFO if options.log_info else logging.WARNING)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    sys.exit(runner(serve(options)))


if __name__ == "__main__":
    main()
