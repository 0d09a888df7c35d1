"""The triton processor's command-line flags: their schema and their validation.

One place for both sides: ``openeas-server`` parses its argv here, and the platform checks a
service's ``processor_params`` here at ``eascmd create``, so a spec is refused with the very
message the processor would print and exit with (instead of being accepted and crash-looping).
This module imports only the standard library: the platform must not import the server.

tritonserver's spelling and defaults: ``--flag=value`` and ``--flag value`` both work;
booleans take true/false/on/off/1/0.  Flags that mean nothing on a CPU-only host are
accepted (and the processor reports them once at start-up).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from openeas import __version__

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
    if not number > 0 or not math.isfinite(number):  # NaN fails both comparisons
        raise argparse.ArgumentTypeError(f"value must be a finite number > 0, got {value}")
    return number


def _add_http_limits(add: Any) -> None:
    """The HTTP/1.1 limits against hostile clients (not tritonserver flags: Triton has
    none).  Their defaults are the transport's ``HttpLimits``: the processor passes them
    to :func:`build_parser` (this module may not import the transport)."""
    add(
        "--http-max-url-size",
        type=_non_negative_int,
        metavar="BYTES",
        help="longest HTTP request target; longer ones get 414",
    )
    add(
        "--http-max-header-size",
        type=_non_negative_int,
        metavar="BYTES",
        help="largest HTTP header block; larger ones get 431",
    )
    add(
        "--http-max-header-count",
        type=_non_negative_int,
        metavar="N",
        help="most HTTP header fields in a request; more get 431",
    )
    add(
        "--http-header-timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="time a request head may take to arrive; then 408 and the connection closes",
    )
    add(
        "--http-body-timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="time a request body may take to arrive after its head; then 408 and close",
    )
    add(
        "--http-max-connections",
        type=_non_negative_int,
        metavar="N",
        help="most open HTTP connections; more are refused with 503 (0: half the open-file limit)",
    )
    add(
        "--http-max-connections-per-client",
        type=_non_negative_int,
        metavar="N",
        help="most open HTTP connections from one client address; more are refused with "
        "503 (0: no cap; a gateway or load balancer in front shares one address)",
    )


def cache_config_size(value: str) -> int:
    """``--cache-config local,size=<bytes>``: the cache capacity in bytes (0 = off)."""
    kind, _, setting = value.partition(",")
    key, sep, number = setting.partition("=")
    if kind != "local" or key != "size" or not sep:
        raise argparse.ArgumentTypeError(f"invalid value '{value}', expected local,size=<bytes>")
    try:
        size = int(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size '{number}'") from None
    if size < 0:
        raise argparse.ArgumentTypeError(f"size must be >= 0, got {size}")
    return size


def _backend_config(value: str) -> tuple[str, str, str]:
    """``<backend>,<key>=<value>`` or a global ``<key>=<value>``."""
    backend, _, setting = value.partition(",") if "," in value else ("", "", value)
    key, sep, val = setting.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(
            f"invalid --backend-config '{value}', expected <backend>,<setting>=<value>"
        )
    return backend, key, val


class FlagError(Exception):
    """A flag problem; ``str()`` is what the processor prints after ``error:``."""


class FlagParser(argparse.ArgumentParser):
    """Raises :class:`FlagError` instead of printing and exiting: each caller reports."""

    def error(self, message: str) -> NoReturn:
        raise FlagError(message)


# Flags accepted for compatibility; they configure GPU, tracing or cloud features this
# CPU-only processor does not have.  (name, type)
ACCEPTED_NO_EFFECT: list[tuple[str, Any]] = [
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


def build_parser(defaults: Mapping[str, Any] | None = None) -> FlagParser:
    """The processor's flag parser; ``defaults`` (dest -> value) fills in the defaults
    this module cannot know (the HTTP limits)."""
    p = FlagParser(
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
        type=cache_config_size,
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
    for flag, kind in ACCEPTED_NO_EFFECT:
        add(flag, type=kind, action="append", default=None, help=argparse.SUPPRESS)
    if defaults:
        p.set_defaults(**defaults)
    return p


#: The model repository flag and its older spelling.
REPOSITORY_FLAGS = ("--model-repository", "--model-store")


@dataclass(frozen=True)
class FlagValue:
    """One value of a flag in argv: where the flag is, where its value is (the same
    index for ``--flag=value``) and the value."""

    flag_index: int
    value_index: int
    value: str


def flag_values(argv: Sequence[str], flags: Sequence[str]) -> list[FlagValue]:
    """Every value given to one of ``flags`` in ``argv``, in order, telling values from
    options as argparse does (a flag without its value is left out)."""
    found: list[FlagValue] = []
    for index, tokens in _segments(list(argv)):
        flag, sep, value = tokens[0].partition("=")
        if flag not in flags:
            continue
        if sep:
            found.append(FlagValue(index, index, value))
        elif len(tokens) > 1:
            found.append(FlagValue(index, index + 1, tokens[1]))
    return found


#: Flags that print something and exit instead of configuring the processor.
INFORMATIONAL_FLAGS = frozenset({"-h", "--help", "--version"})
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


@dataclass(frozen=True)
class FlagProblem:
    """One reason the processor would refuse its flags: the index in argv of the token it
    is about (None: the flags as a whole) and the message it prints after ``error:``."""

    index: int | None
    message: str


@dataclass
class ParsedFlags:
    """Every problem found, and the flags that parsed (None when even they do not parse
    together); the processor starts only when ``problems`` is empty."""

    namespace: argparse.Namespace | None
    problems: list[FlagProblem]


def validate(argv: Sequence[str], parser: FlagParser | None = None) -> ParsedFlags:
    """Parse and check ``argv`` as ``openeas-server`` does, reporting every problem.

    argparse stops at the first bad flag, so each flag (with the values after it) is
    parsed on its own first, which finds every bad one and where it is; the good ones are
    then parsed together for the checks that combine flags.
    """
    parser = parser or build_parser()
    problems: list[FlagProblem] = []
    good: list[str] = []
    segments = _segments(list(argv))
    for index, tokens in segments:
        problem = _segment_problem(parser, index, tokens)
        if problem:
            problems.append(problem)
        else:
            good.extend(tokens)
    try:
        namespace = parser.parse_args(good)
    except FlagError as exc:  # no flag alone shows it: report it for the whole list
        return ParsedFlags(None, [*problems, FlagProblem(None, str(exc))])
    problems.extend(_combination_problems(namespace, segments))
    return ParsedFlags(namespace, problems)


def _segments(argv: list[str]) -> list[tuple[int, list[str]]]:
    """``argv`` cut before each option (as argparse tells options from values): a list
    of (index of its first token, its tokens).  After ``--`` everything is one segment."""
    segments: list[tuple[int, list[str]]] = []
    for i, token in enumerate(argv):
        if token == "--":
            segments.append((i, argv[i:]))
            break
        if not segments or (
            token.startswith("-") and token != "-" and not _NEGATIVE_NUMBER.match(token)
        ):
            segments.append((i, [token]))
        else:
            segments[-1][1].append(token)
    return segments


def _segment_problem(parser: FlagParser, index: int, tokens: list[str]) -> FlagProblem | None:
    if tokens[0] in INFORMATIONAL_FLAGS:
        return FlagProblem(index, f"{tokens[0]} only prints and exits; it sets nothing")
    try:
        parser.parse_args(tokens)
    except FlagError as exc:
        return FlagProblem(index, str(exc))
    return None


def _combination_problems(
    ns: argparse.Namespace, segments: list[tuple[int, list[str]]]
) -> list[FlagProblem]:
    """What no flag shows alone: a missing repository, TLS without its files, ..."""

    def where(flag: str, last: bool = True) -> int | None:
        found = [i for i, tokens in segments if tokens[0].partition("=")[0] == flag]
        return (found[-1] if last else found[0]) if found else None

    problems: list[FlagProblem] = []
    if not ns.model_repository:
        problems.append(FlagProblem(None, "--model-repository is required"))
    if ns.grpc_use_ssl or ns.grpc_use_ssl_mutual:
        at = where("--grpc-use-ssl") if ns.grpc_use_ssl else where("--grpc-use-ssl-mutual")
        for flag in ("--grpc-server-cert", "--grpc-server-key"):
            if not getattr(ns, flag[2:].replace("-", "_")):
                problems.append(FlagProblem(at, f"{flag} is required with --grpc-use-ssl"))
    if ns.grpc_use_ssl_mutual and not ns.grpc_root_cert:
        problems.append(
            FlagProblem(
                where("--grpc-use-ssl-mutual"),
                "--grpc-root-cert is required with --grpc-use-ssl-mutual",
            )
        )
    if ns.model_control_mode != "explicit" and ns.load_model:
        problems.append(
            FlagProblem(
                where("--load-model", last=False),
                "--load-model requires --model-control-mode=explicit",
            )
        )
    return problems
