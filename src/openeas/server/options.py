"""tritonserver's command-line flags -> :class:`ServerOptions`.

The flags themselves (names, types, defaults, checks) are :mod:`openeas.processor_flags`,
shared with the platform, which refuses at ``eascmd create`` what the processor would
refuse here.  A bad flag is a one-line error per problem and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from openeas.processor_flags import (
    ACCEPTED_NO_EFFECT,
    INFORMATIONAL_FLAGS,
    FlagError,
    FlagParser,
    validate,
)
from openeas.processor_flags import build_parser as build_flag_parser
from openeas.transport.http1 import HttpLimits

#: The ``HttpLimits`` fields that are flags (``--http-max-url-size`` -> ``max_url_size``).
_HTTP_LIMIT_FIELDS = (
    "max_url_size",
    "max_header_size",
    "max_header_count",
    "header_timeout",
    "body_timeout",
    "max_connections",
    "max_connections_per_client",
)


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


def build_parser() -> FlagParser:
    """The flag parser, with the transport's HTTP limits as the limit flags' defaults."""
    limits = HttpLimits()
    return build_flag_parser({f"http_{name}": getattr(limits, name) for name in _HTTP_LIMIT_FIELDS})


def parse_args(argv: Sequence[str] | None = None) -> ServerOptions:
    """The options from ``argv``; on any problem, print each and exit with status 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if INFORMATIONAL_FLAGS.intersection(argv):
        _print_and_exit(parser, argv)
    parsed = validate(argv, parser)
    if parsed.problems or parsed.namespace is None:
        _exit(parser, [problem.message for problem in parsed.problems])
    return _options(parsed.namespace)


def _print_and_exit(parser: FlagParser, argv: list[str]) -> None:
    """--help / --version: argparse prints and exits 0, unless a flag before it is bad
    (argparse stops there, as tritonserver does)."""
    try:
        parser.parse_args(argv)
    except FlagError as exc:
        _exit(parser, [str(exc)])


def _exit(parser: FlagParser, messages: list[str]) -> NoReturn:
    for message in messages:
        sys.stderr.write(f"{parser.prog}: error: {message}\n")
    sys.exit(2)


def _options(ns: argparse.Namespace) -> ServerOptions:
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
        for flag, _ in ACCEPTED_NO_EFFECT
        if getattr(ns, flag[2:].replace("-", "_")) is not None
    ]
    cache_size = ns.cache_config[-1] if ns.cache_config else 0
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
            **{name: getattr(ns, f"http_{name}") for name in _HTTP_LIMIT_FIELDS}
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
        grpc_use_ssl=ns.grpc_use_ssl or ns.grpc_use_ssl_mutual,
        grpc_server_cert=ns.grpc_server_cert,
        grpc_server_key=ns.grpc_server_key,
        grpc_use_ssl_mutual=ns.grpc_use_ssl_mutual,
        grpc_root_cert=ns.grpc_root_cert,
        allow_client_shm=ns.allow_client_shm,
        backend_configs=backend_configs,
        model_load_thread_count=max(1, ns.model_load_thread_count),
        ignored=ignored,
    )
