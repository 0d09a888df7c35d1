"""Turn a model directory's ``config.pbtxt`` into the complete config Triton would serve.

Order as in Triton: read the file (optional when auto-complete is on), fix the name,
find the backend, let the backend auto-complete what the file leaves out, then fill the
defaults every model gets (version policy, instance groups) and validate.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from openeas.protocol.errors import InvalidArgument, Unsupported
from openeas.server.backends import get_backend
from openeas.server.repository.config import PLATFORM_BACKENDS, ModelConfig, backend_of
from openeas.server.repository.layout import version_dirs
from openeas.server.sequence.config import sequence_settings

log = logging.getLogger(__name__)

#: Model files that imply a backend when the config names none: (file, platform, backend).
_FILE_HINTS = (
    ("model.onnx", "onnxruntime_onnx", "onnxruntime"),
    ("model.py", "", "python"),
    ("model.graphdef", "tensorflow_graphdef", "tensorflow"),
    ("model.savedmodel", "tensorflow_savedmodel", "tensorflow"),
    ("model.pt", "pytorch_libtorch", "pytorch"),
    ("model.plan", "tensorrt_plan", "tensorrt"),
)


def complete_config(
    config: ModelConfig | None,
    model_dir: Path,
    name: str,
    *,
    auto_complete: bool,
    backend_configs: dict[str, dict[str, str]],
) -> ModelConfig:
    """Return the served config of the model in ``model_dir`` (``config`` is not kept)."""
    if config is None:
        if not auto_complete:
            raise InvalidArgument(
                f"failed to load model '{name}': {model_dir / 'config.pbtxt'} is missing "
                "(required with --strict-model-config=true / --disable-auto-complete-config)"
            )
        config = ModelConfig()
    else:
        copy = ModelConfig()
        copy.CopyFrom(config)
        config = copy

    if not config.name:
        config.name = name
    elif config.name != name:
        raise InvalidArgument(
            f"unexpected 'name' in model configuration: '{config.name}', "
            f"the model directory is '{name}'"
        )

    _resolve_backend(config, model_dir)
    backend_name = backend_of(config)
    if backend_name and config.platform != "ensemble":
        backend = get_backend(backend_name)
        if auto_complete:
            versions = version_dirs(model_dir)
            if versions:
                backend.auto_complete_config(
                    config, model_dir, versions[-1], backend_configs.get(backend_name, {})
                )
    _fill_defaults(config)
    _validate(config)
    if config.HasField("sequence_batching"):
        _validate_sequence_batching(config, model_dir)
    return config


def _resolve_backend(config: ModelConfig, model_dir: Path) -> None:
    if config.backend or config.platform:
        if config.platform and config.platform not in PLATFORM_BACKENDS:
            raise InvalidArgument(
                f"unexpected platform type '{config.platform}' for model '{config.name}'"
            )
        if config.backend == "onnxruntime" and not config.platform:
            config.platform = "onnxruntime_onnx"
        return
    versions = version_dirs(model_dir)
    for version in reversed(versions):
        for filename, platform, backend in _FILE_HINTS:
            if (model_dir / str(version) / filename).exists():
                config.platform = platform
                if backend in ("python", "onnxruntime"):
                    config.backend = backend
                return
    raise InvalidArgument(
        f"unable to find a backend for model '{config.name}': config.pbtxt sets neither "
        "'backend' nor 'platform' and no known model file was found"
    )


def _fill_defaults(config: ModelConfig) -> None:
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    if config.platform == "ensemble":
        return
    if not config.instance_group:
        group = config.instance_group.add()
        group.kind = mc.ModelInstanceGroup.KIND_CPU
        group.count = 1
    for index, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{config.name}_{index}"
        if group.count < 1:
            group.count = 1
        if group.kind in (mc.ModelInstanceGroup.KIND_GPU, mc.ModelInstanceGroup.KIND_AUTO):
            if group.kind == mc.ModelInstanceGroup.KIND_GPU:
                log.warning(
                    "model '%s' instance group '%s' asks for KIND_GPU; no GPU is used by this "
                    "server, running it on the CPU",
                    config.name,
                    group.name,
                )
            group.kind = mc.ModelInstanceGroup.KIND_CPU
            del group.gpus[:]


def _validate(config: ModelConfig) -> None:
    if config.max_batch_size < 0:
        raise InvalidArgument(f"model '{config.name}': max_batch_size must be >= 0")
    if config.HasField("dynamic_batching"):
        _validate_priorities(config)
    for kind, tensors in (("input", config.input), ("output", config.output)):
        seen: set[str] = set()
        for tensor in tensors:
            if not tensor.name:
                raise InvalidArgument(f"model '{config.name}': an {kind} has no name")
            if tensor.name in seen:
                raise InvalidArgument(
                    f"model '{config.name}': {kind} '{tensor.name}' is declared twice"
                )
            seen.add(tensor.name)
            if tensor.data_type == mc.TYPE_INVALID:
                raise InvalidArgument(
                    f"model '{config.name}': {kind} '{tensor.name}' must specify 'data_type'"
                )
            for dim in tensor.dims:
                if dim < -1 or dim == 0:
                    raise InvalidArgument(
                        f"model '{config.name}': {kind} '{tensor.name}' has invalid dims "
                        f"{list(tensor.dims)}: each dim must be -1 or a positive number"
                    )


def _validate_priorities(config: ModelConfig) -> None:
    """Priority settings of ``dynamic_batching`` must name existing levels (1..levels)."""
    batching = config.dynamic_batching
    levels = batching.priority_levels
    if levels == 0:
        if batching.default_priority_level or batching.priority_queue_policy:
            raise InvalidArgument(
                f"model '{config.name}': default_priority_level and priority_queue_policy "
                "need priority_levels > 0 in dynamic_batching"
            )
        return
    if not 1 <= batching.default_priority_level <= levels:
        raise InvalidArgument(
            f"model '{config.name}': default_priority_level must be in range [1, {levels}], "
            f"got {batching.default_priority_level}"
        )
    for level in batching.priority_queue_policy:
        if not 1 <= level <= levels:
            raise InvalidArgument(
                f"model '{config.name}': priority_queue_policy level {level} must be in range "
                f"[1, {levels}]"
            )


def _validate_sequence_batching(config: ModelConfig, model_dir: Path) -> None:
    """``sequence_batching`` must be complete and consistent (see sequence.config)."""
    if config.model_transaction_policy.decoupled:
        raise Unsupported(
            f"model '{config.name}': sequence_batching of decoupled models is not supported"
        )
    if config.sequence_batching.iterative_sequence:
        raise Unsupported(
            f"model '{config.name}': sequence_batching iterative_sequence is not supported"
        )
    sequence_settings(config, model_dir)
