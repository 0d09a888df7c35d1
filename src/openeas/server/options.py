"""tritonserver's command-line flags, with tritonserver's spelling and defaults.

``--flag=value`` and ``--flag value`` both work; booleans take true/false/on/off/1/0.
Flags that mean nothing on a CPU-only host are accepted and reported once at start-up.
An unknown flag or a bad value is a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

from openeas import __version__
from openeas.protocol.errors import InvalidArgument
from openeas.server.cache import parse_cache_config
from openeas.transport.http1 import HttpLimits

_TRUE = {"true", "on", "1", "yes"}
_FALSE = {"false", "off", "0", "no"}


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value '{value}' (use true/false/on/off/1/0)")


def _non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer value '{value}'") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"value must be >= 0, got {number}")
    return number


def _positive_int(value: str) -> int:
    number = _non_negative_int(value)
    if number == 0:
        raise argparse.ArgumentTypeError("value must be > 0, got 0")
    return number


def _port(value: str) -> int:
    number = _non_negative_int(value)
    if number > 65535:
        raise argparse.ArgumentTypeError(f"invalid port {number}")
    return number


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number '{value}'") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"value must be > 0, got {value}")
    return number


def _add_http_limits(add: Any) -> None:
    """The HTTP/1.1 limits against hostile clients (not tritonserver flags: Triton has
    none; the defaults are those of common production servers)."""
    defaults = HttpLimits()
    add(
        "--http-max-url-size",
        type=_non_negative_int,
        default=defaults.max_url_size,
        metavar="BYTES",
        help="longest HTTP request target; longer ones get 414",
    )
    add(
        "--http-max-header-size",
        type=_non_negative_int,
        default=defaults.max_header_size,
        metavar="BYTES",
        help="largest HTTP header block; larger ones get 431",
    )
    add(
        "--http-max-header-count",
        type=_non_negative_int,
        default=defaults.max_header_count,
        metavar="N",
        help="most HTTP header fields in a request; more get 431",
    )
    add(
        "--http-header-timeout",
        type=_positive_float,
        default=defaults.header_timeout,
        metavar="SECONDS",
        help="time a request head may take to arrive; then 408 and the connection closes",
    )
    add(
        "--http-body-timeout",
        type=_positive_float,
        default=defaults.body_timeout,
        metavar="SECONDS",
        help="time a request body may take to arrive after its head; then 408 and close",
    )
    add(
        "--http-max-connections",
        type=_non_negative_int,
        default=defaults.max_connections,
        metavar="N",
        help="most open HTTP connections; more are refused with 503 (0: half the open-file limit)",
    )
    add(
        "--http-max-connections-per-client",
        type=_non_negative_int,
        default=defaults.max_connections_per_client,
        metavar="N",
        help="most open HTTP connections from one client address; more are refused with "
        "503 (0: no cap; a gateway or load balancer in front shares one address)",
    )


def _backend_config(value: str) -> tuple[str, str, str]:
    """``<backend>,<key>=<value>`` or a global ``<key>=<value>``."""
    backend, _, setting = value.partition(",") if "," in value else ("", "", value)
    key, sep, val = setting.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(
            f"invalid --backend-config '{value}', expected <backend>,<setting>=<value>"
        )
    return backend, key, val


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


@dataclass
class ServerOptions:
    """The processor's settings, after flag parsing."""

    model_repositories: list[str]
    model_control_mode: str = "none"
    load_models: list[str] = field(default_factory=list)
    repository_poll_secs: float = 15.0
    auto_complete: bool = True
    strict_readiness: bool = True
    exit_on_error: bool = True
    exit_timeout_secs: int = 30
    server_id: str = "triton"
    log_verbose: int = 0
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_format: str = "default"
    log_file: str = ""
    allow_http: bool = True
    allow_grpc: bool = True
    allow_metrics: bool = True
    http_address: str = "0.0.0.0"
    http_port: int = 8000
    grpc_address: str = "0.0.0.0"
    grpc_port: int = 8001
    metrics_address: str = "0.0.0.0"
    metrics_port: int = 8002
    metrics_interval_ms: int = 2000
    http_thread_count: int = 8
    http_max_input_size: int = 64 * 1024 * 1024
    #: what one HTTP client may make the server hold (--http-max-url-size etc.)
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    grpc_max_message_size: int = 2**31 - 1
    #: HTTP/2 limits of the gRPC port (docs/architecture.md, "HTTP/2 and gRPC rules")
    grpc_max_concurrent_streams: int = 256
    grpc_max_header_list_size: int = 64 * 1024
    grpc_http2_max_ping_strikes: int = 2
    grpc_http2_min_recv_ping_interval_without_data: int = 300_000  # ms
    grpc_keepalive_permit_without_calls: bool = False
    #: also serve HTTP on this Unix-domain socket ("@name": Linux abstract namespace)
    http_unix_socket: str = ""
    grpc_infer_allocation_pool_size: int = 8
    #: TLS for gRPC: a server certificate chain and key (PEM files) ...
    grpc_use_ssl: bool = False
    grpc_server_cert: str = ""
    grpc_server_key: str = ""
    #: ... and, for mutual TLS, the CA bundle that client certificates must chain to
    grpc_use_ssl_mutual: bool = False
    grpc_root_cert: str = ""
    allow_client_shm: bool = False
    #: response cache capacity in bytes (0 = no cache)
    cache_size: int = 0
    backend_configs: dict[str, dict[str, str]] = field(default_factory=dict)
    model_load_thread_count: int = 4
    #: flags accepted for compatibility that have no effect here, for the start-up log
    ignored: list[str] = field(default_factory=list)


# Flags accepted for compatibility; they configure GPU, tracing or cloud features this
# CPU-only processor does not have.  (name, type)
_ACCEPTED_NO_EFFECT: list[tuple[str, Any]] = [
    ("--pinned-memory-pool-byte-size", _non_negative_int),
    ("--cuda-memory-pool-byte-size", str),
    ("--cuda-virtual-address-size", str),
    ("--min-supported-compute-capability", float),
    ("--buffer-manager-thread-count", _non_negative_int),
    ("--backend-directory", str),
    ("--repoagent-directory", str),
    ("--cache-directory", str),
    ("--allow-gpu-metrics", parse_bool),
    ("--allow-cpu-metrics", parse_bool),
    ("--host-policy", str),
    ("--rate-limit", str),
    ("--rate-limit-resource", str),
    ("--trace-config", str),
    ("--model-namespacing", parse_bool),
    ("--enable-peer-access", parse_bool),
    ("--allow-sagemaker", parse_bool),
    ("--allow-vertex-ai", parse_bool),
    ("--reuse-http-port", parse_bool),
    ("--reuse-grpc-port", parse_bool),
    ("--http-header-forward-pattern", str),
    ("--grpc-header-forward-pattern", str),
    ("--grpc-keepalive-time", _non_negative_int),
    ("--grpc-keepalive-timeout", _non_negative_int),
    ("--grpc-http2-max-pings-without-data", _non_negative_int),
    ("--grpc-infer-response-compression-level", str),
    ("--grpc-restricted-protocol", str),
    ("--http-restricted-api", str),
    ("--metrics-config", str),
    ("--model-config-name", str),
]


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="openeas-server",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="OpenEAS triton processor: a Triton-compatible inference server "
        "(accepts tritonserver's flags).",
        allow_abbrev=False,
    )
    add = p.add_argument
    add("--version", action="version", version=f"openeas-server {__version__}")
    add(
        "--model-repository",
        "--model-store",
        dest="model_repository",
        action="append",
        metavar="PATH",
        help="model repository root (repeatable)",
    )
    add(
        "--model-control-mode",
        choices=["none", "poll", "explicit"],
        default="none",
        help="none: load every model at start; poll: also rescan the repositories; explicit: load/unload through the repository API",
    )
    add(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="model to load at start-up in explicit mode (repeatable, '*' for all)",
    )
    add(
        "--repository-poll-secs",
        type=_positive_float,
        default=15.0,
        help="seconds between repository scans in poll mode",
    )
    add(
        "--strict-model-config",
        type=parse_bool,
        default=False,
        metavar="BOOL",
        help="require a complete config.pbtxt (no auto-complete)",
    )
    add(
        "--disable-auto-complete-config",
        action="store_true",
        help="do not fill missing config fields from the model",
    )
    add(
        "--strict-readiness",
        type=parse_bool,
        default=True,
        metavar="BOOL",
        help="ready only when every model is ready",
    )
    add(
        "--exit-on-error",
        type=parse_bool,
        default=True,
        metavar="BOOL",
        help="exit when a model fails to load at start-up",
    )
    add(
        "--exit-timeout-secs",
        type=_non_negative_int,
        default=30,
        help="seconds in-flight requests get to finish at shutdown",
    )
    add("--id", default="triton", help="server identifier reported by GET /v2")
    add("--log-verbose", type=_non_negative_int, default=0, help="verbose logging level (0 = off)")
    add(
        "--log-info",
        type=parse_bool,
        default=True,
        metavar="BOOL",
        help="log informational messages",
    )
    add("--log-warning", type=parse_bool, default=True, metavar="BOOL", help="log warnings")
    add("--log-error", type=parse_bool, default=True, metavar="BOOL", help="log errors")
    add("--log-format", choices=["default", "ISO8601"], default="default", help="log line format")
    add("--log-file", default="", help="write the log to this file instead of stderr")
    add("--allow-http", type=parse_bool, default=True, metavar="BOOL", help="serve HTTP/REST")
    add("--allow-grpc", type=parse_bool, default=True, metavar="BOOL", help="serve gRPC")
    add(
        "--allow-metrics",
        type=parse_bool,
        default=True,
        metavar="BOOL",
        help="serve Prometheus metrics",
    )
    add("--http-address", default="0.0.0.0", help="HTTP bind address")
    add("--http-port", type=_port, default=8000, help="HTTP port")
    add(
        "--http-unix-socket",
        default="",
        metavar="PATH",
        help="also serve HTTP on this Unix-domain socket ('@name' for Linux's abstract "
        "namespace); the OpenEAS gateway reaches local instances this way (not a "
        "tritonserver flag)",
    )
    add("--grpc-address", default="0.0.0.0", help="gRPC bind address")
    add("--grpc-port", type=_port, default=8001, help="gRPC port")
    add("--metrics-address", default=None, help="metrics bind address (default: the HTTP address)")
    add("--metrics-port", type=_port, default=8002, help="metrics port")
    add(
        "--metrics-interval-ms",
        type=_non_negative_int,
        default=2000,
        help="refresh interval of host metrics",
    )
    add(
        "--http-thread-count",
        type=_non_negative_int,
        default=8,
        help="accepted for compatibility (HTTP is served by one event loop)",
    )
    add(
        "--http-max-input-size",
        type=_non_negative_int,
        default=64 * 1024 * 1024,
        help="largest accepted HTTP request body, in bytes",
    )
    _add_http_limits(add)
    add(
        "--grpc-max-message-size",
        type=_non_negative_int,
        default=2**31 - 1,
        help="largest gRPC message, in bytes",
    )
    add(
        "--grpc-max-concurrent-streams",
        type=_positive_int,
        default=256,
        help="HTTP/2 streams (calls) one gRPC connection may have open; more are refused "
        "with REFUSED_STREAM (not a tritonserver flag)",
    )
    add(
        "--grpc-max-header-list-size",
        type=_positive_int,
        default=64 * 1024,
        help="largest gRPC request header list (metadata), in bytes as HTTP/2 counts it; "
        "larger ones end the call with RESOURCE_EXHAUSTED (not a tritonserver flag)",
    )
    add(
        "--grpc-http2-max-ping-strikes",
        type=_non_negative_int,
        default=2,
        help="pings a client may send too soon (see "
        "--grpc-http2-min-recv-ping-interval-without-data) before the connection is "
        "closed with GOAWAY ENHANCE_YOUR_CALM; 0 allows any number",
    )
    add(
        "--grpc-http2-min-recv-ping-interval-without-data",
        type=_non_negative_int,
        default=300_000,
        metavar="MS",
        help="while the server sends no data, a ping sooner than this after the previous "
        "one is a strike",
    )
    add(
        "--grpc-keepalive-permit-without-calls",
        type=parse_bool,
        default=False,
        metavar="BOOL",
        help="allow pings at that interval without calls in flight (otherwise two hours)",
    )
    add(
        "--grpc-use-ssl",
        type=parse_bool,
        default=False,
        metavar="BOOL",
        help="serve gRPC over TLS (needs --grpc-server-cert and --grpc-server-key)",
    )
    add(
        "--grpc-use-ssl-mutual",
        type=parse_bool,
        default=False,
        metavar="BOOL",
        help="serve gRPC over mutual TLS: clients must present a certificate signed by "
        "--grpc-root-cert (implies --grpc-use-ssl)",
    )
    add("--grpc-server-cert", default="", metavar="PEM", help="gRPC TLS certificate chain file")
    add("--grpc-server-key", default="", metavar="PEM", help="gRPC TLS private key file")
    add("--grpc-root-cert", default="", metavar="PEM", help="CA file for client certificates")
    add(
        "--grpc-infer-allocation-pool-size",
        type=_non_negative_int,
        default=8,
        help="accepted for compatibility",
    )
    add(
        "--allow-client-shm",
        type=parse_bool,
        default=False,
        metavar="BOOL",
        help="allow clients to register system shared memory regions",
    )
    add(
        "--cache-config",
        action="append",
        default=[],
        metavar="local,size=<bytes>",
        help="enable the response cache with this capacity (models opt in with "
        "response_cache { enable: true })",
    )
    add(
        "--response-cache-byte-size",
        type=_non_negative_int,
        default=None,
        help="older spelling of --cache-config local,size=<bytes>",
    )
    add(
        "--backend-config",
        type=_backend_config,
        action="append",
        default=[],
        metavar="<backend>,<key>=<value>",
        help="backend setting, e.g. onnxruntime,default-max-batch-size=8 (repeatable)",
    )
    add(
        "--model-load-thread-count",
        type=_non_negative_int,
        default=4,
        help="models loaded in parallel",
    )
    for flag, kind in _ACCEPTED_NO_EFFECT:
        add(flag, type=kind, action="append", default=None, help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str] | None = None) -> ServerOptions:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not ns.model_repository:
        parser.error("--model-repository is required")
    backend_configs: dict[str, dict[str, str]] = {}
    for backend, key, value in ns.backend_config:
        backend_configs.setdefault(backend, {})[key] = value
    # Global settings (no backend prefix) apply to every backend, as in tritonserver.
    for backend in ("onnxruntime", "python", "tensorflow", "pytorch"):
        merged = dict(backend_configs.get("", {}))
        merged.update(backend_configs.get(backend, {}))
        if merged:
            backend_configs[backend] = merged
    ignored = [
        f"{flag}={getattr(ns, flag[2:].replace('-', '_'))[-1]}"
        for flag, _ in _ACCEPTED_NO_EFFECT
        if getattr(ns, flag[2:].replace("-", "_")) is not None
    ]
    use_ssl = ns.grpc_use_ssl or ns.grpc_use_ssl_mutual
    if use_ssl:
        for flag in ("--grpc-server-cert", "--grpc-server-key"):
            if not getattr(ns, flag[2:].replace("-", "_")):
                parser.error(f"{flag} is required with --grpc-use-ssl")
    if ns.grpc_use_ssl_mutual and not ns.grpc_root_cert:
        parser.error("--grpc-root-cert is required with --grpc-use-ssl-mutual")
    if ns.model_control_mode != "explicit" and ns.load_model:
        parser.error("--load-model requires --model-control-mode=explicit")
    try:
        cache_size = parse_cache_config(ns.cache_config)
    except InvalidArgument as exc:
        parser.error(str(exc))
    if ns.response_cache_byte_size is not None:
        cache_size = ns.response_cache_byte_size
    return ServerOptions(
        cache_size=cache_size,
        model_repositories=ns.model_repository,
        model_control_mode=ns.model_control_mode,
        load_models=ns.load_model,
        repository_poll_secs=ns.repository_poll_secs,
        auto_complete=not (ns.strict_model_config or ns.disable_auto_complete_config),
        strict_readiness=ns.strict_readiness,
        exit_on_error=ns.exit_on_error,
        exit_timeout_secs=ns.exit_timeout_secs,
        server_id=ns.id,
        log_verbose=ns.log_verbose,
        log_info=ns.log_info,
        log_warning=ns.log_warning,
        log_error=ns.log_error,
        log_format=ns.log_format,
        log_file=ns.log_file,
        allow_http=ns.allow_http,
        allow_grpc=ns.allow_grpc,
        allow_metrics=ns.allow_metrics,
        http_address=ns.http_address,
        http_port=ns.http_port,
        http_unix_socket=ns.http_unix_socket,
        grpc_address=ns.grpc_address,
        grpc_port=ns.grpc_port,
        metrics_address=ns.metrics_address or ns.http_address,
        metrics_port=ns.metrics_port,
        metrics_interval_ms=ns.metrics_interval_ms,
        http_thread_count=ns.http_thread_count,
        http_max_input_size=ns.http_max_input_size,
        http_limits=HttpLimits(
            max_url_size=ns.http_max_url_size,
            max_header_size=ns.http_max_header_size,
            max_header_count=ns.http_max_header_count,
            header_timeout=ns.http_header_timeout,
            body_timeout=ns.http_body_timeout,
            max_connections=ns.http_max_connections,
            max_connections_per_client=ns.http_max_connections_per_client,
        ),
        grpc_max_message_size=ns.grpc_max_message_size,
        grpc_max_concurrent_streams=ns.grpc_max_concurrent_streams,
        grpc_max_header_list_size=ns.grpc_max_header_list_size,
        grpc_http2_max_ping_strikes=ns.grpc_http2_max_ping_strikes,
        grpc_http2_min_recv_ping_interval_without_data=(
            ns.grpc_http2_min_recv_ping_interval_without_data
        ),
        grpc_keepalive_permit_without_calls=ns.grpc_keepalive_permit_without_calls,
        grpc_infer_allocation_pool_size=ns.grpc_infer_allocation_pool_size,
        grpc_use_ssl=use_ssl,
        grpc_server_cert=ns.grpc_server_cert,
        grpc_server_key=ns.grpc_server_key,
        grpc_use_ssl_mutual=ns.grpc_use_ssl_mutual,
        grpc_root_cert=ns.grpc_root_cert,
        allow_client_shm=ns.allow_client_shm,
        backend_configs=backend_configs,
        model_load_thread_count=max(1, ns.model_load_thread_count),
        ignored=ignored,
    )
