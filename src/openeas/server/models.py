"""Model lifecycle: which models and versions are loaded, loading, or failed, and why.

The manager owns the repository roots and the control mode (none / poll / explicit).
Loading a model reads and completes its config, creates the backend instances of each
version the version policy selects (in a thread pool: loads are slow), and only then
swaps the new versions in; replaced versions are unloaded after their in-flight
requests finish.  A failure is recorded per model/version and never stops other models.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from openeas.protocol.errors import (
    InferenceError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from openeas.server.backends import get_backend
from openeas.server.backends.base import InferenceHandle, ModelContext, ModelInstance
from openeas.server.ensemble import (
    EnsembleExecutor,
    EnsemblePlan,
    Step,
    build_plan,
    check_composing,
)
from openeas.server.repository.config import ModelConfig, backend_of, parse_config_json
from openeas.server.repository.layout import (
    check_model_name,
    find_model,
    list_models,
    read_config,
    tree_signature,
    version_dirs,
)
from openeas.server.repository.normalize import complete_config
from openeas.server.scheduler import Scheduler
from openeas.server.sequence import SequenceScheduler, sequence_settings
from openeas.server.stats import ModelStats
from openeas.server.validation import RequestValidator
from openeas.server.warmup import run_warmup, warmup_requests

log = logging.getLogger(__name__)


class ControlMode(enum.StrEnum):
    NONE = "none"
    POLL = "poll"
    EXPLICIT = "explicit"


class ModelState(enum.StrEnum):
    UNKNOWN = "UNKNOWN"
    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class LoadedVersion:
    """A ready model version: its config, scheduler, statistics and output labels.

    An ensemble's ``scheduler`` is an :class:`EnsembleExecutor`, which has the same
    surface (``infer``, ``pending``, ``decoupled``, ``close``).
    """

    name: str
    version: int
    config: ModelConfig
    scheduler: Scheduler | SequenceScheduler | EnsembleExecutor
    stats: ModelStats
    labels: dict[str, list[str]]
    load_seconds: float = 0.0
    validate: RequestValidator = field(init=False)
    #: ``response_cache { enable: true }``: responses may come from the server's cache
    cached: bool = field(init=False)

    def __post_init__(self) -> None:
        self.validate = RequestValidator(self.config)
        # A cached answer would skip the model and so the sequence's state update.
        self.cached = self.config.response_cache.enable and not self.config.HasField(
            "sequence_batching"
        )

    @property
    def version_str(self) -> str:
        return str(self.version)


@dataclass
class _Record:
    """Everything known about one model name."""

    name: str
    loaded: dict[int, LoadedVersion] = field(default_factory=dict)
    states: dict[int, tuple[ModelState, str]] = field(default_factory=dict)
    #: a model-level failure (bad config...) when no version could even be tried
    error: str = ""
    #: that failure came after the config was read (auto-complete, validation, no
    #: version): Triton's model lifecycle has the model, so strict readiness counts it
    load_failed: bool = False
    signature: dict[str, str] = field(default_factory=dict)
    temp_dir: Path | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: the composing models of a loaded ensemble (what it depends on)
    composing: set[str] = field(default_factory=set)


@dataclass
class RepositoryOptions:
    roots: list[Path]
    control_mode: ControlMode = ControlMode.NONE
    startup_models: list[str] = field(default_factory=list)
    auto_complete: bool = True
    backend_configs: dict[str, dict[str, str]] = field(default_factory=dict)
    load_threads: int = 4
    poll_seconds: float = 15.0
    exit_timeout: float = 30.0
    #: run in a thread before each poll and each repository-API load (e.g. syncing
    #: object-store mounts)
    refresh_hooks: list[Callable[[], object]] = field(default_factory=list)


class ModelManager:
    """Loads, unloads, polls and looks up models for the data plane."""

    def __init__(self, options: RepositoryOptions, handle: InferenceHandle) -> None:
        self.options = options
        self._handle = handle
        self._records: dict[str, _Record] = {}
        self._pool = ThreadPoolExecutor(max(1, options.load_threads), "model-load")
        self._poll_task: asyncio.Task[None] | None = None
        #: ensemble being loaded -> the composing model whose load it waits for
        self._waiting_on: dict[str, str] = {}

    # -- start-up and shutdown ---------------------------------------------------------

    async def start(self) -> list[str]:
        """Load the start-up models for the control mode; returns the failure messages."""
        mode = self.options.control_mode
        if mode == ControlMode.EXPLICIT:
            names = self.options.startup_models
            if "*" in names:
                names = list(list_models(self.options.roots))
        else:
            names = list(list_models(self.options.roots))
        results = await asyncio.gather(
            *(self._load_logged(name) for name in names), return_exceptions=False
        )
        if mode == ControlMode.POLL:
            self._poll_task = asyncio.get_running_loop().create_task(self._poll_loop())
        return [msg for msg in results if msg]

    async def _load_logged(self, name: str) -> str:
        try:
            await self.load(name)
        except InferenceError as exc:
            log.error("%s", exc)
            return str(exc)
        return ""

    async def stop(self) -> None:
        """Unload every model (waiting for in-flight requests) and stop polling."""
        if self._poll_task:
            self._poll_task.cancel()
        await asyncio.gather(
            *(self._unload_record(record) for record in list(self._records.values())),
            return_exceptions=True,
        )
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- lookups -----------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> LoadedVersion:
        """The ready version that serves a request (latest ready when none is given)."""
        number = parse_version(version)
        record = self._records.get(name)
        if record is None or not (record.states or record.loaded or record.load_failed):
            # never loaded, or failed before any version was tried: Triton knows no model
            raise NotFound(f"Request for unknown model: '{name}' is not found")
        if number < 0:
            if not record.loaded:
                raise NotFound(f"Request for unknown model: '{name}' has no available versions")
            return record.loaded[max(record.loaded)]
        found = record.loaded.get(number)
        if found is None:
            if number in record.states:
                raise Unavailable(
                    f"Request for unknown model: '{name}' version {number} is not at ready state"
                )
            raise NotFound(f"Request for unknown model: '{name}' version {number} is not found")
        return found

    def is_ready(self, name: str, version: str = "") -> bool:
        """Whether the version (latest when none) is ready; a malformed version raises."""
        parse_version(version)
        try:
            self.get(name, version)
        except InferenceError:
            return False
        return True

    def all_ready(self) -> bool:
        """Strict readiness, Triton's rule: every version that got as far as loading is
        ready (or still served while it reloads) or was unloaded.

        A load that fails at Triton's poll stage (a name that is not in the repository, a
        config that does not parse, an ensemble whose steps cannot be resolved) does not
        count: one bad repository-API request must not make the server (and, on the
        platform, the instance) not ready.  A model that failed later (auto-complete,
        validation, no version, a version that did not load) does count until it loads
        or is unloaded.
        """
        for record in self._records.values():
            if record.load_failed and not record.loaded:
                return False
            for version, (state, reason) in record.states.items():
                if state == ModelState.READY or reason == "unloaded":
                    continue
                if version not in record.loaded:
                    return False
        return True

    def loaded_versions(self) -> Iterable[LoadedVersion]:
        for record in list(self._records.values()):
            yield from list(record.loaded.values())

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """The repository index: every model in the roots plus any loaded elsewhere."""
        entries: list[dict[str, str]] = []
        try:
            on_disk = set(list_models(self.options.roots))
        except InferenceError:
            on_disk = set()
        names = sorted(set(on_disk) | set(self._records))
        for name in names:
            record = self._records.get(name)
            if record is not None and not record.states and name not in on_disk:
                continue  # a name that failed to load from nowhere: not a model (Triton)
            if record is None or (not record.states and not record.error):
                if not ready_only:
                    entries.append({"name": name})
                continue
            if record.error and not record.states:
                if not ready_only:
                    entries.append({"name": name, "state": "UNAVAILABLE", "reason": record.error})
                continue
            for version, (state, reason) in sorted(record.states.items()):
                if ready_only and state != ModelState.READY:
                    continue
                entries.append(
                    {"name": name, "version": str(version), "state": state.value, "reason": reason}
                )
        return entries

    # -- load / unload -----------------------------------------------------------------

    def check_explicit_allowed(self) -> None:
        # Triton answers UNAVAILABLE (HTTP 503) with this message in both 'none' and
        # 'poll' mode; clients and tools match on the message text.
        if self.options.control_mode != ControlMode.EXPLICIT:
            raise Unavailable(
                "explicit model load / unload is not allowed if polling is enabled"
                f" (model control mode is '{self.options.control_mode.value}')"
            )

    async def load(
        self,
        name: str,
        config_json: str | None = None,
        files: dict[str, bytes] | None = None,
    ) -> None:
        """(Re)load a model; raises with the reason when no version became ready.

        Object-store repositories are synced first, so that a load (explicit control
        mode) sees what was uploaded since, as Triton re-reads its repository on load.
        """
        check_model_name(name)
        if not files:
            await self.refresh_repositories()
        record = self._records.setdefault(name, _Record(name))
        async with record.lock:
            await self._load_locked(record, config_json, files)

    async def _load_locked(
        self, record: _Record, config_json: str | None, files: dict[str, bytes] | None
    ) -> None:
        name = record.name
        temp_dir: Path | None = None
        #: past Triton's poll stage (found, config parsed): a failure from here on is a
        #: failed load that strict readiness counts
        polled = False
        try:
            if files:
                temp_dir = _write_override_files(name, files, config_json)
                model_dir = temp_dir / name
            else:
                model_dir = find_model(self.options.roots, name)
            raw = (
                parse_config_json(config_json, f"config override of '{name}'")
                if config_json is not None
                else read_config(model_dir)
            )
            polled = True
            config = await asyncio.get_running_loop().run_in_executor(
                self._pool,
                lambda: complete_config(
                    raw,
                    model_dir,
                    name,
                    auto_complete=self.options.auto_complete,
                    backend_configs=self.options.backend_configs,
                ),
            )
            versions = _select_versions(config, version_dirs(model_dir))
            if not versions:
                raise InvalidArgument(
                    f"failed to load '{name}': no version is available under {model_dir}"
                )
            polled = False  # an ensemble that cannot be built never loads (Triton)
            plan = (
                await self._prepare_ensemble(name, config)
                if config.platform == "ensemble"
                else None
            )
        except InferenceError as exc:
            if temp_dir:
                shutil.rmtree(temp_dir, ignore_errors=True)
            message = str(exc)
            if not message.startswith(("failed to load", "load failed")):
                message = f"failed to load '{name}': {message}"
            # The version states (what was loaded, unloaded or failed before) stay as
            # they were; the index shows the error of a model that has none.
            record.error = message
            record.load_failed = polled
            raise type(exc)(message) from None

        record.error = ""
        record.load_failed = False
        for version in versions:
            record.states[version] = (ModelState.LOADING, "")
        results = await asyncio.gather(
            *(self._load_version(name, version, config, model_dir, plan) for version in versions),
            return_exceptions=True,
        )
        new, failures = _tally(record, versions, results)
        old = record.loaded
        if failures and old:
            # As in Triton: when a reload fails for any reason, the loaded model stays
            # unchanged and keeps serving; what did load of the new set is discarded.
            await self._retire(list(new.values()), temp_dir)
            for version in versions:
                if version in old:
                    record.states[version] = (ModelState.READY, "")
                elif version in new:
                    record.states[version] = (
                        ModelState.UNAVAILABLE,
                        "not served: another version failed to load",
                    )
            raise Unavailable(
                f"load failed for model '{name}': "
                + " ".join(failures)
                + " the previously loaded version(s) keep serving"
            )
        record.loaded = new
        record.composing = plan.composing_models() if plan else set()
        for version in list(record.states):
            if version not in versions:
                record.states[version] = (ModelState.UNAVAILABLE, "unloaded")
        old_temp, record.temp_dir = record.temp_dir, temp_dir
        record.signature = _signature(model_dir)
        await self._retire(list(old.values()), old_temp)
        if failures:
            raise Unavailable(f"load failed for model '{name}': " + " ".join(failures))
        log.info("successfully loaded '%s' version(s) %s", name, ", ".join(map(str, versions)))

    async def _prepare_ensemble(self, name: str, config: ModelConfig) -> EnsemblePlan:
        """Check an ensemble's graph and its composing models, loading them as needed."""
        plan = build_plan(config)
        composing: dict[tuple[str, str], tuple[ModelConfig, bool]] = {}
        for step in plan.steps:
            key = (step.model_name, step.model_version)
            if key not in composing:
                model = await self._composing_model(name, step)
                composing[key] = (model.config, model.scheduler.decoupled)
        check_composing(config, plan, composing)
        return plan

    async def _composing_model(self, ensemble: str, step: Step) -> LoadedVersion:
        """The ready composing model of a step: waits for its load in progress, and
        loads it when it is not loaded yet (always in explicit mode, as Triton does)."""
        target = step.model_name
        where = f"ensemble '{ensemble}': {step.label}"
        current: str | None = target
        while current is not None:  # loads waiting for each other: a cycle of ensembles
            if current == ensemble:
                raise InvalidArgument(f"{where} depends on the ensemble itself (a cycle)")
            current = self._waiting_on.get(current)
        self._waiting_on[ensemble] = target
        try:
            record = self._records.get(target)
            if record is not None and record.lock.locked():
                async with record.lock:  # a load in progress: wait for it
                    pass
            if not self.is_ready(target, step.model_version) and (
                record is None or self.options.control_mode == ControlMode.EXPLICIT
            ):
                try:
                    find_model(self.options.roots, target)
                except InferenceError:
                    raise InvalidArgument(
                        f"{where} refers to a model that is not in the repository"
                    ) from None
                try:
                    await self.load(target)
                except InferenceError as exc:
                    raise InvalidArgument(f"{where} failed to load: {exc}") from None
            try:
                return self.get(target, step.model_version)
            except InferenceError as exc:
                raise InvalidArgument(f"{where} is not available: {exc}") from None
        finally:
            self._waiting_on.pop(ensemble, None)

    async def _load_version(
        self,
        name: str,
        version: int,
        config: ModelConfig,
        model_dir: Path,
        plan: EnsemblePlan | None = None,
    ) -> LoadedVersion:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        if plan is not None:
            stats = ModelStats()
            labels = await loop.run_in_executor(self._pool, _read_labels, config, model_dir)
            executor = EnsembleExecutor(plan, self._handle.infer, stats)
            return LoadedVersion(
                name, version, config, executor, stats, labels, time.monotonic() - started
            )
        backend_name = backend_of(config)
        backend = get_backend(backend_name)
        sequences = (
            sequence_settings(config, model_dir) if config.HasField("sequence_batching") else None
        )
        context = ModelContext(
            name=name,
            version=version,
            config=config,
            model_dir=model_dir,
            backend_config=self.options.backend_configs.get(backend_name, {}),
            handle=self._handle,
        )
        instances: list[tuple[str, ModelInstance]] = []
        try:
            for group in config.instance_group:
                for index in range(group.count):
                    instance_name = f"{group.name}_{index}" if group.count > 1 else group.name
                    instance = await loop.run_in_executor(
                        self._pool, backend.create_instance, context, instance_name, 0
                    )
                    instances.append((instance_name, instance))
            if config.model_warmup:
                samples = warmup_requests(config, model_dir, version)
                for instance_name, instance in instances:
                    await loop.run_in_executor(
                        self._pool, run_warmup, instance, instance_name, samples
                    )
            labels = await loop.run_in_executor(self._pool, _read_labels, config, model_dir)
        except BaseException:
            for _, instance in instances:
                try:
                    await loop.run_in_executor(self._pool, instance.finalize)
                except Exception:
                    log.exception("finalize after a failed load of '%s'", name)
            raise
        stats = ModelStats()
        scheduler: Scheduler | SequenceScheduler
        if sequences is not None:
            scheduler = SequenceScheduler(config, str(version), instances, stats, loop, sequences)
        else:
            scheduler = Scheduler(config, str(version), instances, stats, loop)
        return LoadedVersion(
            name, version, config, scheduler, stats, labels, time.monotonic() - started
        )

    async def unload(self, name: str, unload_dependents: bool = False) -> None:
        """Unload every version of a model once its in-flight requests finish.

        With ``unload_dependents``, the loaded ensembles that use the model are unloaded
        too, and when the model is an ensemble, so are its composing models that no other
        loaded ensemble uses.  Without it, ensembles that use the model stay loaded and
        their requests fail while the model is gone.
        """
        check_model_name(name)
        record = self._records.get(name)
        if record is None:
            return
        seen = {name}
        if unload_dependents:
            await self._unload_users(name, seen)
        composing = set(record.composing)
        await self._unload_record(record)
        if unload_dependents:
            await self._unload_composing(composing, seen)

    async def _unload_users(self, name: str, seen: set[str]) -> None:
        """Unload the loaded ensembles that use ``name``, and the ensembles using those."""
        for other in list(self._records.values()):
            if other.name in seen or not other.loaded or name not in other.composing:
                continue
            seen.add(other.name)
            await self._unload_users(other.name, seen)
            log.info("unloading ensemble '%s', which uses '%s'", other.name, name)
            await self._unload_record(other)

    async def _unload_composing(self, names: set[str], seen: set[str]) -> None:
        """Unload the composing models ``names`` that no loaded ensemble uses any more."""
        for name in sorted(names):
            record = self._records.get(name)
            if record is None or name in seen or not record.loaded:
                continue
            if any(name in other.composing for other in self._records.values() if other.loaded):
                continue
            seen.add(name)
            composing = set(record.composing)
            log.info("unloading '%s', a composing model of an unloaded ensemble", name)
            await self._unload_record(record)
            await self._unload_composing(composing, seen)

    async def _unload_record(self, record: _Record) -> None:
        async with record.lock:
            old = list(record.loaded.values())
            for version in record.loaded:
                record.states[version] = (ModelState.UNLOADING, "")
            record.loaded = {}
            await self._retire(old, record.temp_dir)
            record.temp_dir = None
            for version in record.states:
                record.states[version] = (ModelState.UNAVAILABLE, "unloaded")
            record.signature = {}
            record.composing = set()
            record.load_failed = False

    async def _retire(self, versions: list[LoadedVersion], temp_dir: Path | None) -> None:
        await asyncio.gather(
            *(v.scheduler.close(self.options.exit_timeout) for v in versions),
            return_exceptions=True,
        )
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)

    # -- polling -----------------------------------------------------------------------

    async def poll_once(self) -> None:
        """Load new and changed models, unload removed ones (control mode poll)."""
        try:
            on_disk = list_models(self.options.roots)
        except InferenceError as exc:
            log.error("repository poll failed: %s", exc)
            return
        for name in set(self._records) - set(on_disk):
            record = self._records[name]
            if record.loaded:
                log.info("model '%s' was removed from the repository; unloading", name)
                await self._unload_record(record)
            del self._records[name]
        for name, model_dir in on_disk.items():
            signature = _signature(model_dir)
            record = self._records.get(name)
            if record is not None and record.signature == signature:
                continue
            await self._load_logged(name)
            record = self._records.get(name)
            if record is not None:
                # Remembered for failures too: a broken model is retried when it changes.
                record.signature = signature

    async def refresh_repositories(self) -> None:
        """Run the refresh hooks (object-store syncs) off the event loop."""
        loop = asyncio.get_running_loop()
        for hook in self.options.refresh_hooks:
            await loop.run_in_executor(None, hook)

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.poll_seconds)
            try:
                await self.refresh_repositories()
                await self.poll_once()
            except Exception:
                log.exception("repository poll failed")


_VERSION_PREFIX = re.compile(r"\s*([+-]?\d+)")
_INT64_MAX = 2**63 - 1


def parse_version(version: str) -> int:
    """A requested model version, read as Triton reads it (``std::stol``: leading blanks,
    a sign and digits; what follows is ignored); -1 (the latest) when empty.

    Clients match on Triton's messages, so the errors are Triton's, word for word.
    """
    if not version:
        return -1
    match = _VERSION_PREFIX.match(version)
    number = int(match.group(1)) if match else None
    if number is None or not -_INT64_MAX - 1 <= number <= _INT64_MAX:
        raise InvalidArgument(
            f"failed to get model version from specified version string '{version}' "
            "(details: stol), version should be an integral value > 0"
        )
    if number < 0:
        raise InvalidArgument(
            f"invalid model version specified '{version}' , version should be an integral value > 0"
        )
    return number


def _select_versions(config: ModelConfig, available: list[int]) -> list[int]:
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return available
    if which == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in available if v in wanted]
    count = policy.latest.num_versions if which == "latest" else 1
    return available[-max(1, count) :] if available else []


def _signature(model_dir: Path) -> dict[str, str]:
    """Fingerprints of the config and of each version directory, for change detection."""
    sig: dict[str, str] = {}
    config_path = model_dir / "config.pbtxt"
    if config_path.exists():
        st = config_path.stat()
        sig["config"] = f"{st.st_size}|{st.st_mtime_ns}"
    for version in version_dirs(model_dir):
        sig[str(version)] = tree_signature(model_dir / str(version))
    for path in model_dir.iterdir() if model_dir.is_dir() else ():
        if path.is_file() and path.name != "config.pbtxt":
            st = path.stat()
            sig["file:" + path.name] = f"{st.st_size}|{st.st_mtime_ns}"
    return sig


def _read_labels(config: ModelConfig, model_dir: Path) -> dict[str, list[str]]:
    labels: dict[str, list[str]] = {}
    for output in config.output:
        if output.label_filename:
            path = model_dir / output.label_filename
            try:
                labels[output.name] = path.read_text().splitlines()
            except OSError as exc:
                raise InvalidArgument(
                    f"failed to read label file '{output.label_filename}' of output "
                    f"'{output.name}': {exc}"
                ) from None
    return labels


def _tally(
    record: _Record, versions: list[int], results: list[LoadedVersion | BaseException]
) -> tuple[dict[int, LoadedVersion], list[str]]:
    """The versions that loaded, and a reason per version that did not (each version's
    state set accordingly)."""
    new: dict[int, LoadedVersion] = {}
    failures: list[str] = []
    for version, result in zip(versions, results, strict=True):
        if isinstance(result, LoadedVersion):
            new[version] = result
            record.states[version] = (ModelState.READY, "")
            continue
        reason = (
            str(result)
            if isinstance(result, InferenceError)
            else f"{type(result).__name__}: {result}"
        )
        record.states[version] = (ModelState.UNAVAILABLE, reason)
        failures.append(f"version {version} is at UNAVAILABLE state: {reason};")
    return new, failures


def _write_override_files(name: str, files: dict[str, bytes], config_json: str | None) -> Path:
    """Lay out ``file:<path>`` load parameters as a model directory in a temp dir (they
    come with a ``config``)."""
    if config_json is None:
        raise InvalidArgument(
            f"failed to load '{name}': a model config must be provided with "
            "'config' when loading from 'file:' parameters"
        )
    root = Path(tempfile.mkdtemp(prefix="openeas-override-"))
    model_dir = (root / name).resolve()
    model_dir.mkdir()
    for rel, content in files.items():
        target = (model_dir / rel).resolve()
        if not target.is_relative_to(model_dir) or target == model_dir:
            shutil.rmtree(root, ignore_errors=True)
            raise InvalidArgument(f"invalid file path 'file:{rel}': it escapes the model directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return root


def decode_file_parameter(value: str) -> bytes:
    """The base64 contents of a ``file:<path>`` load parameter."""
    try:
        return base64.b64decode(value, validate=True)
    except (ValueError, TypeError):
        raise InvalidArgument("'file:' parameter contents must be base64") from None
