"""The service spec: EAS's service JSON, validated with precise errors.

``validate_spec(doc)`` returns a :class:`ServiceSpec` or raises :class:`SpecError` listing
every problem as ``field.path: reason``.  Unknown keys are errors.  ``processor_params``
are checked by the processor's own flag schema (:mod:`openeas.processor_flags`), so the
platform accepts exactly the flags ``openeas-server`` does and refuses the rest with the
message the processor would print; on top, the flags the platform sets itself (ports, bind
addresses) or must own (log files, TLS, climbing repositories) are refused.

``autoscaler`` and ``cronscaler`` (EAS's elasticity documents) are kept as the user wrote
them (either EAS form) and checked by their own parsers in :mod:`openeas.platform.elastic`;
:meth:`ServiceSpec.autoscaler_spec` and :meth:`ServiceSpec.cronscaler_spec` give the
parsed values.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from openeas import processor_flags
from openeas.platform.auth import random_token
from openeas.platform.elastic.autoscaler import AutoscalerSpec, parse_autoscaler
from openeas.platform.elastic.cron import CronScalerSpec, parse_cronscaler
from openeas.platform.errors import FieldError, SpecError

#: EAS service names: a lower-case letter, then lower-case letters, digits and underscores.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
#: What :data:`NAME_PATTERN` asks for, in the words of an error message.
NAME_RULE = (
    "must start with a lower-case letter and contain only lower-case letters, "
    "digits and underscores (at most 64 characters)"
)
#: Resource group used when ``metadata.resource`` is omitted: the local machine.
DEFAULT_RESOURCE = "default"
#: Processor flags the platform owns: every instance gets its own ports and addresses
#: (and its Unix socket, which the gateway uses).
PLATFORM_FLAGS = frozenset(
    {
        "--http-unix-socket",
        "--http-port",
        "--grpc-port",
        "--metrics-port",
        "--http-address",
        "--grpc-address",
        "--metrics-address",
    }
)
#: Processor flags that would point an instance at what the platform owns or needs, and why.
REFUSED_FLAGS = {
    "--log-file": "the platform keeps each instance's log (eascmd logs) and owns its files",
    "--grpc-use-ssl": "the gateway terminates TLS and speaks plaintext gRPC to its instances",
    "--grpc-use-ssl-mutual": "the gateway terminates TLS and speaks plaintext gRPC to its "
    "instances",
    "--grpc-server-cert": "instances do not serve TLS behind the gateway",
    "--grpc-server-key": "instances do not serve TLS behind the gateway",
    "--grpc-root-cert": "instances do not serve TLS behind the gateway",
}
_TOKEN_PATTERN = re.compile(r"^[\x21-\x7e]{8,256}$")
#: The elasticity documents: stored as written, each checked by its parser (``None`` or
#: absent: not set).
ELASTIC_FIELDS: dict[str, Callable[[Any], Any]] = {
    "autoscaler": parse_autoscaler,
    "cronscaler": parse_cronscaler,
}


def has_dot_dot(path: str) -> bool:
    """True when a path or URI has a ``..`` segment (it could climb out of its root)."""
    return ".." in re.split(r"[/\\]", path)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)


class OssMount(_Strict):
    path: str
    readOnly: bool = True  # noqa: N815 - EAS spelling

    @field_validator("path")
    @classmethod
    def _uri(cls, value: str) -> str:
        if not re.match(r"^(oss|s3)://[^/]+", value):
            raise ValueError("must be an oss://bucket[/path] or s3://bucket[/path] URI")
        if has_dot_dot(value):
            raise ValueError("must not contain '..' segments")
        return value


class StorageMount(_Strict):
    """An object-store directory mounted into the instances at ``mount_path``."""

    mount_path: str
    oss: OssMount

    @field_validator("mount_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must be an absolute path")
        if has_dot_dot(value):
            raise ValueError("must not contain '..' segments")
        return value.rstrip("/") or "/"


class Metadata(_Strict):
    """``metadata``: replicas, resources and the gateway's ``rpc.*`` limits."""

    instance: int = Field(1, ge=0, le=100)
    cpu: int = Field(1, ge=1, le=1024)
    memory: int | None = Field(None, ge=64, description="MB")
    gpu: int = Field(0, ge=0, le=64)
    gpu_memory: int | None = Field(None, ge=0, description="GB")
    resource: str = DEFAULT_RESOURCE
    rpc_keepalive: int = Field(5000, ge=1, le=3_600_000, alias="rpc.keepalive")
    rpc_max_queue_size: int = Field(64, ge=1, le=1_000_000, alias="rpc.max_queue_size")
    rpc_rate_limit: int | None = Field(None, ge=1, alias="rpc.rate_limit")
    #: Requests one instance works on at once (EAS's default is 5).  Unset (None), the
    #: gateway forwards up to 32 per instance: see reconciler.gateway_limits().
    rpc_worker_threads: int | None = Field(None, ge=1, le=1024, alias="rpc.worker_threads")
    rpc_batching: bool = Field(False, alias="rpc.batching")
    rpc_max_batch_size: int | None = Field(None, ge=1, alias="rpc.max_batch_size")
    rpc_max_batch_timeout: int | None = Field(None, ge=0, alias="rpc.max_batch_timeout")
    #: the service group (EAS) whose shared endpoint the service is a member of
    #: (docs/groups.md); created with its first member, deleted with its last
    group: str | None = None

    @field_validator("group")
    @classmethod
    def _group(cls, value: str | None) -> str | None:
        if value is not None and not NAME_PATTERN.match(value):
            raise ValueError(NAME_RULE)
        return value

    @field_validator("resource")
    @classmethod
    def _resource(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value


class ServiceSpec(_Strict):
    """One version of a service, as the user wrote it (plus the generated token)."""

    name: str
    token: str = ""
    processor: Literal["triton"]
    processor_params: list[str] = Field(min_length=1)
    storage: list[StorageMount] = Field(default_factory=list)
    metadata: Metadata = Field(default_factory=Metadata)
    #: EAS's ``autoscaler`` as the user wrote it (docs/elastic.md); see autoscaler_spec()
    autoscaler: dict[str, Any] | None = None
    #: EAS's ``cronscaler`` as the user wrote it; see cronscaler_spec()
    cronscaler: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(NAME_RULE)
        return value

    @field_validator("token")
    @classmethod
    def _token(cls, value: str) -> str:
        if value and not _TOKEN_PATTERN.match(value):
            raise ValueError("must be 8 to 256 printable characters without spaces")
        return value

    def to_json(self) -> dict[str, Any]:
        """The spec as the user would write it (dotted ``rpc.*`` keys)."""
        return self.model_dump(by_alias=True, exclude_none=True)

    def autoscaler_spec(self) -> AutoscalerSpec | None:
        """The parsed ``autoscaler``, or ``None`` without one."""
        return None if self.autoscaler is None else _parsed_autoscaler(_key(self.autoscaler))

    def cronscaler_spec(self) -> CronScalerSpec | None:
        """The parsed ``cronscaler``, or ``None`` without one."""
        return None if self.cronscaler is None else _parsed_cronscaler(_key(self.cronscaler))

    # -- what the runtime needs from the processor flags ------------------------------

    def model_repositories(self) -> list[str]:
        """Every ``--model-repository``/``--model-store`` value, in order."""
        found = processor_flags.flag_values(self.processor_params, processor_flags.REPOSITORY_FLAGS)
        return [flag.value for flag in found]


def _key(doc: dict[str, Any]) -> str:
    """A document's cache key: its canonical JSON (so a changed document is parsed anew)."""
    return json.dumps(doc, sort_keys=True)


# Specs are re-read per tick by the reconciler and the controller; a document's parse
# (croniter steps for every schedule) is done once per distinct document.
@functools.lru_cache(maxsize=256)
def _parsed_autoscaler(key: str) -> AutoscalerSpec:
    return parse_autoscaler(json.loads(key))


@functools.lru_cache(maxsize=256)
def _parsed_cronscaler(key: str) -> CronScalerSpec:
    return parse_cronscaler(json.loads(key))


def generate_token() -> str:
    """A fresh service token: 32 random bytes, url-safe base64 (43 characters, never a
    leading ``-``)."""
    return random_token(32)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _reason(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        return f"unsupported value {error.get('input')!r}; {error['msg'].lower()}"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _refused_params(params: list[str]) -> list[FieldError]:
    """Flags the platform owns or refuses, and repositories that climb with ``..``."""
    problems: list[tuple[int, str]] = []
    for i, param in enumerate(params):
        flag = param.partition("=")[0]
        if flag in PLATFORM_FLAGS:
            problems.append((i, f"{flag} is set by the platform per instance"))
        elif flag in REFUSED_FLAGS:
            problems.append((i, f"{flag} is not allowed: {REFUSED_FLAGS[flag]}"))
    for found in processor_flags.flag_values(params, processor_flags.REPOSITORY_FLAGS):
        problem = _repository_problem(found.value)
        if problem:
            problems.append((found.value_index, problem))
    return [FieldError(f"processor_params[{i}]", reason) for i, reason in sorted(problems)]


def _repository_problem(value: str) -> str | None:
    """Why a ``--model-repository`` value is refused at create, else None: a ``..``
    segment anywhere, or what the storage layer's URI parser finds (scheme, bucket)."""
    if has_dot_dot(value):
        return f"model repository {value!r} must not contain '..' segments"
    try:
        from openeas.storage.uri import InvalidStorageURI, parse_uri
    except ImportError:  # the object-store layer is optional; sync reports it then
        return None
    try:
        parse_uri(value)
    except InvalidStorageURI as exc:
        return str(exc)
    return None


def _check_processor_params(params: list[str]) -> list[FieldError]:
    """Every problem of the flags: the platform's refusals, then what the processor itself
    would refuse at start-up (the shared flag schema, with its very message)."""
    problems = _refused_params(params)
    refused = {problem.field for problem in problems}
    parsed = processor_flags.validate(params)
    for problem in parsed.problems:
        where = "processor_params"
        if problem.index is not None:
            where = f"processor_params[{problem.index}]"
        if where not in refused:  # one reason per flag: the platform's says more
            problems.append(FieldError(where, problem.message))
    if parsed.namespace is not None and parsed.namespace.allow_http is False:
        problems.append(
            FieldError("processor_params", "--allow-http=false: the platform needs HTTP")
        )
    return problems


def validate_spec(doc: Any) -> ServiceSpec:
    """Validate a service JSON document; raises :class:`SpecError` with every problem."""
    if not isinstance(doc, dict):
        raise SpecError([FieldError("", "the service spec must be a JSON object")])
    elastic = _check_elastic(doc)
    try:
        spec = ServiceSpec.model_validate(doc)
    except ValidationError as exc:
        problems = [
            FieldError(_path(e["loc"]), _reason(e))  # type: ignore[arg-type]
            for e in exc.errors()
            if not e["loc"] or e["loc"][0] not in ELASTIC_FIELDS  # their parsers say more
        ]
        raise SpecError(problems + elastic) from None
    problems = _check_processor_params(spec.processor_params) + elastic
    mounts = [m.mount_path for m in spec.storage]
    if len(set(mounts)) != len(mounts):
        problems.append(FieldError("storage", "mount_path values must be unique"))
    m = spec.metadata
    if m.rpc_batching and m.rpc_max_batch_size is None:
        problems.append(
            FieldError("metadata.rpc.max_batch_size", "required when rpc.batching is true")
        )
    if problems:
        raise SpecError(problems)
    if not spec.token:
        spec = spec.model_copy(update={"token": generate_token()})
    return spec


def _check_elastic(doc: dict[str, Any]) -> list[FieldError]:
    """Every problem of the ``autoscaler`` and ``cronscaler`` documents, by field path.

    ``metadata.instance`` outside the autoscaler's ``[min, max]`` is not one: the service
    starts with that count and the autoscaler's first decision moves it within its bounds
    (as EAS does; docs/elastic.md).
    """
    problems: list[FieldError] = []
    for field, parse in ELASTIC_FIELDS.items():
        value = doc.get(field)
        if value is None:
            continue
        try:
            parse(value)
        except SpecError as exc:
            problems += exc.errors
    return problems


def parse_spec_text(text: str) -> dict[str, Any]:
    """JSON text -> document, with a spec error (line and column) when it is not JSON."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(
            [FieldError("", f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")]
        ) from None
    if not isinstance(doc, dict):
        raise SpecError([FieldError("", "the service spec must be a JSON object")])
    return doc


def merge_spec(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """EAS merge update: objects merge key by key, anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_spec(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_assignment(text: str) -> dict[str, Any]:
    """``-D metadata.instance=3`` -> ``{"metadata": {"instance": 3}}``.

    The first path component is a top-level field; under ``metadata`` the rest is one key
    (so ``metadata.rpc.keepalive`` sets the ``rpc.keepalive`` key).  Values are JSON when
    they parse as JSON (numbers, booleans, lists), else strings.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise SpecError([FieldError("", f"expected key=value, got {text!r}")])
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    head, _, rest = key.partition(".")
    if not rest:
        return {head: value}
    if head == "metadata":
        return {"metadata": {rest: value}}
    return {head: parse_assignment(f"{rest}={raw}")}
