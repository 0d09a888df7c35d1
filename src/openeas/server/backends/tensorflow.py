"""The ``tensorflow`` backend: frozen GraphDefs and SavedModels on TensorFlow (CPU).

It follows Triton's tensorflow backend:

* ``platform: "tensorflow_graphdef"``: ``<version>/model.graphdef``, a frozen GraphDef.
  Config input/output names are graph tensor names as given (``input``,
  ``InceptionV3/Predictions/Softmax``); a name without ``:N`` means output 0 of that op.
  A GraphDef carries no usable signature, so it is not auto-completed (as in Triton): only
  the tensors its config lists are served, and a config listing none (a load with a config
  override of just ``max_batch_size``) loads a model that serves none.
* ``platform: "tensorflow_savedmodel"``: ``<version>/model.savedmodel/``.  The signature is
  parameter ``TF_SIGNATURE_DEF`` (default ``serving_default``) of the MetaGraph tagged
  ``TF_GRAPH_TAG`` (default ``serve``); config names are the signature's input/output keys.
  When the server is not strict, missing inputs/outputs, ``max_batch_size`` and
  ``dynamic_batching`` are auto-completed from the signature.
* ``backend: "tensorflow"`` without a platform picks the format from the file present.
* ``sequence_batching.control_input`` tensors (START, END, READY, CORRID) are graph
  placeholders / signature inputs fed next to the config's inputs, with the control's
  datatype and dims ``[1]`` (behind the batch dimension); they are checked at load.
* Each instance runs its own ``tf.compat.v1.Session``.  Its thread pools come from the
  parameters ``TF_NUM_INTRA_THREADS`` / ``TF_NUM_INTER_THREADS`` (0 = TensorFlow's choice)
  and ``TF_USE_PER_SESSION_THREADS``; ``--backend-config=tensorflow,<key>=<value>`` gives
  defaults (the same keys, or ``intra_op_thread_count`` / ``inter_op_thread_count``).
  ``TF_INIT_OPS_FILE`` names a JSON file (``{"init_ops": [...]}``) in the version or model
  directory whose ops run once after the session is created.

TensorFlow itself is imported only when the first TensorFlow model loads (the server's
backend registry imports this module on demand); without it, that model fails to load
with a message naming ``pip install 'openeas[tensorflow]'``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from openeas.protocol.errors import InferenceError, InternalError, InvalidArgument
from openeas.protocol.types import InferRequest
from openeas.server.backends.base import (
    Backend,
    ExecResult,
    ExecTiming,
    ModelContext,
    ModelInstance,
)
from openeas.server.backends.framework import (
    ModelTensor,
    auto_complete,
    bool_setting,
    check_control,
    check_io,
    int_setting,
    named_config,
    setting,
)
from openeas.server.backends.tensor_batch import TensorBatcher
from openeas.server.repository.config import ModelConfig
from openeas.server.sequence.config import control_specs

# TensorFlow's C++ logging goes to stderr at import; keep only errors unless asked.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402 - after the logging default above

log = logging.getLogger(__name__)

GRAPHDEF = "tensorflow_graphdef"
SAVEDMODEL = "tensorflow_savedmodel"
_FILES = {GRAPHDEF: "model.graphdef", SAVEDMODEL: "model.savedmodel"}

#: ``tf.DType.name`` -> Triton datatype.
TF_TO_TRITON: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "half": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "double": "FP64",
    "string": "BYTES",
}

_INTRA_KEYS = ("TF_NUM_INTRA_THREADS", "intra_op_thread_count")
_INTER_KEYS = ("TF_NUM_INTER_THREADS", "inter_op_thread_count")


def tf_error(exc: Exception) -> InferenceError:
    """A TensorFlow run error as an inference error (bad input -> 400, else 500)."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if isinstance(exc, tf.errors.InvalidArgumentError | ValueError | TypeError):
        return InvalidArgument(f"tensorflow: {message}")
    return InternalError(f"tensorflow: {message}")


# -- locating the model -----------------------------------------------------------------


def model_format(config: ModelConfig, version_dir: Path) -> str:
    """``tensorflow_graphdef`` or ``tensorflow_savedmodel`` for a config and version dir."""
    if config.platform in _FILES:
        return config.platform
    filename = config.default_model_filename
    if filename:
        return SAVEDMODEL if (version_dir / filename).is_dir() else GRAPHDEF
    for platform, default in _FILES.items():
        if (version_dir / default).exists():
            return platform
    raise InvalidArgument(
        f"unable to load model '{config.name}': no model.graphdef or model.savedmodel in "
        f"{version_dir}; set platform to tensorflow_graphdef or tensorflow_savedmodel"
    )


def model_path(config: ModelConfig, version_dir: Path, platform: str) -> Path:
    path = version_dir / (config.default_model_filename or _FILES[platform])
    if not path.exists():
        raise InvalidArgument(f"unable to load model '{config.name}': {path} does not exist")
    return path


# -- metadata ---------------------------------------------------------------------------


def _dims_of(shape: Any) -> tuple[int, ...] | None:
    """A ``TensorShapeProto`` or ``tf.TensorShape`` as dims (-1 unknown), None = no rank."""
    if isinstance(shape, tf.TensorShape):
        if shape.rank is None:
            return None
        return tuple(-1 if d is None else int(d) for d in shape.as_list())
    if shape.unknown_rank:
        return None
    return tuple(int(d.size) if d.size >= 0 else -1 for d in shape.dim)


def _model_tensor(name: str, dtype: tf.DType, dims: tuple[int, ...] | None) -> ModelTensor:
    base = dtype.base_dtype.name
    return ModelTensor(name, TF_TO_TRITON.get(base), dims, base)


def signature_tensors(
    signature: Any,
) -> tuple[dict[str, ModelTensor], dict[str, ModelTensor], dict[str, str]]:
    """Inputs and outputs of a ``SignatureDef`` by key, and key -> graph tensor name."""
    names: dict[str, str] = {}
    found: list[dict[str, ModelTensor]] = []
    for infos in (signature.inputs, signature.outputs):
        tensors: dict[str, ModelTensor] = {}
        for key in sorted(infos):
            info = infos[key]
            if not info.name:
                raise InvalidArgument(f"signature tensor '{key}' is not a dense tensor")
            tensors[key] = _model_tensor(key, tf.as_dtype(info.dtype), _dims_of(info.tensor_shape))
            names[key] = info.name
        found.append(tensors)
    return found[0], found[1], names


def _meta_graph(config: ModelConfig, path: Path, tag: str) -> Any:
    """The MetaGraphDef tagged ``tag`` in ``saved_model.pb`` (no variables are read)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString((path / "saved_model.pb").read_bytes())
    except (OSError, Exception) as exc:  # noqa: BLE001 - protobuf raises DecodeError
        raise InvalidArgument(
            f"unable to load model '{config.name}': cannot read SavedModel {path}: {exc}"
        ) from None
    tags = []
    for meta in saved.meta_graphs:
        tags.append(list(meta.meta_info_def.tags))
        if tag in meta.meta_info_def.tags:
            return meta
    raise InvalidArgument(
        f"unable to load model '{config.name}': SavedModel {path} has no MetaGraph tagged "
        f"'{tag}' (tags: {tags})"
    )


def _signature(config: ModelConfig, meta: Any, key: str) -> Any:
    if key not in meta.signature_def:
        raise InvalidArgument(
            f"unable to load model '{config.name}': the SavedModel has no signature "
            f"'{key}' (signatures: {sorted(meta.signature_def)}); set TF_SIGNATURE_DEF"
        )
    return meta.signature_def[key]


def _graph_tag(config: ModelConfig, backend_config: Mapping[str, str]) -> str:
    found = setting(config, backend_config, "TF_GRAPH_TAG")
    return found[1] if found and found[1] else "serve"


def _signature_key(config: ModelConfig, backend_config: Mapping[str, str]) -> str:
    found = setting(config, backend_config, "TF_SIGNATURE_DEF")
    return found[1] if found and found[1] else "serving_default"


# -- sessions ---------------------------------------------------------------------------


def session_config(config: ModelConfig, backend_config: Mapping[str, str]) -> Any:
    """The ``ConfigProto`` of an instance's session from parameters / backend config."""
    proto = tf.compat.v1.ConfigProto()
    proto.intra_op_parallelism_threads = int_setting(config, backend_config, _INTRA_KEYS, 0)
    proto.inter_op_parallelism_threads = int_setting(config, backend_config, _INTER_KEYS, 0)
    proto.use_per_session_threads = bool_setting(
        config, backend_config, ("TF_USE_PER_SESSION_THREADS",), False
    )
    proto.allow_soft_placement = True
    proto.device_count["GPU"] = 0
    return proto


def _init_ops(config: ModelConfig, context: ModelContext) -> list[str]:
    found = setting(config, context.backend_config, "TF_INIT_OPS_FILE")
    if not found or not found[1]:
        return []
    for base in (context.version_dir, context.model_dir):
        path = base / found[1]
        if path.is_file():
            try:
                ops = json.loads(path.read_text())["init_ops"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise InvalidArgument(
                    f"unable to load model '{config.name}': bad TF_INIT_OPS_FILE {path}: {exc}"
                ) from None
            if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
                raise InvalidArgument(
                    f"unable to load model '{config.name}': 'init_ops' in {path} must be a "
                    f"list of op names"
                )
            return ops
    raise InvalidArgument(
        f"unable to load model '{config.name}': TF_INIT_OPS_FILE '{found[1]}' not found in "
        f"{context.version_dir} or {context.model_dir}"
    )


def _placeholders(graph: Any) -> list[str]:
    return [op.name for op in graph.get_operations() if op.type == "Placeholder"]


def _graph_tensor(graph: Any, model: str, kind: str, name: str) -> Any:
    """The graph tensor a config name refers to (``name`` or ``name:0``)."""
    tensor_name = name if ":" in name else f"{name}:0"
    try:
        return graph.get_tensor_by_name(tensor_name)
    except (KeyError, ValueError):
        hint = f"; the graph's placeholders are {_placeholders(graph)}" if kind == "input" else ""
        raise InvalidArgument(
            f"unable to load model '{model}': {kind} '{name}' is not a tensor of the graph{hint}"
        ) from None


def _missing_control(name: str) -> InvalidArgument:
    # Triton's message for a control input the model does not take.
    return InvalidArgument(
        f"configuration specified sequence control '{name}', but model does not provide that input"
    )


def _graphdef_io(
    config: ModelConfig, graph: Any
) -> tuple[dict[str, Any], dict[str, Any], dict[str, ModelTensor]]:
    """The feeds (config inputs and sequence controls), fetches and their declarations.

    As in Triton, a GraphDef is not auto-completed: the config may list no inputs or
    outputs (e.g. a load with a config override of just ``max_batch_size``); the model
    then loads but serves no tensors, which is logged.
    """
    placeholders = _placeholders(graph)
    if len(config.input) > len(placeholders):
        raise InvalidArgument(
            f"unable to load model '{config.name}', configuration expects "
            f"{len(config.input)} inputs, model provides at most {len(placeholders)}"
        )
    if not config.input or not config.output:
        log.warning(
            "model '%s' (tensorflow_graphdef) lists %d inputs and %d outputs in its "
            "configuration; a GraphDef is not auto-completed, so only the listed tensors "
            "are served",
            config.name,
            len(config.input),
            len(config.output),
        )
    feeds = {io.name: _graph_tensor(graph, config.name, "input", io.name) for io in config.input}
    fetches = {
        io.name: _graph_tensor(graph, config.name, "output", io.name) for io in config.output
    }
    for spec in control_specs(config):
        try:
            feeds[spec.name] = graph.get_tensor_by_name(f"{spec.name}:0")
        except (KeyError, ValueError):
            raise _missing_control(spec.name) from None
    declared = {
        n: _model_tensor(n, t.dtype, _dims_of(t.shape))
        for n, t in (*feeds.items(), *fetches.items())
    }
    return feeds, fetches, declared


def _load_graphdef(path: Path, config: ModelConfig) -> Any:
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise InvalidArgument(
            f"unable to load model '{config.name}': {path} is not a GraphDef: {exc}"
        ) from None
    graph = tf.Graph()
    with graph.as_default():
        try:
            tf.compat.v1.import_graph_def(graph_def, name="")
        except (ValueError, tf.errors.OpError) as exc:
            raise InvalidArgument(
                f"unable to load model '{config.name}': cannot import {path}: {exc}"
            ) from None
    return graph


def _open_savedmodel(
    config: ModelConfig, context: ModelContext, session: Any, path: Path
) -> tuple[dict[str, Any], dict[str, Any], dict[str, ModelTensor]]:
    """Load a SavedModel into ``session``; the configured feeds, fetches and declarations."""
    graph = session.graph
    try:
        with graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(
                session, [_graph_tag(config, context.backend_config)], str(path)
            )
    except (RuntimeError, OSError, ValueError, tf.errors.OpError) as exc:
        raise InvalidArgument(
            f"unable to load model '{config.name}': cannot load SavedModel {path}: {exc}"
        ) from None
    signature = _signature(config, meta, _signature_key(config, context.backend_config))
    inputs, outputs, names = signature_tensors(signature)
    feeds: dict[str, Any] = {}
    for spec in control_specs(config):
        if spec.name not in inputs:
            raise _missing_control(spec.name)
        feeds[spec.name] = graph.get_tensor_by_name(names[spec.name])
    fetches: dict[str, Any] = {}
    for kind, ios, known, target in (
        ("input", config.input, inputs, feeds),
        ("output", config.output, outputs, fetches),
    ):
        for io in ios:
            if io.name not in known:
                raise InvalidArgument(
                    f"unable to load model '{config.name}': unexpected inference {kind} "
                    f"'{io.name}', allowed {kind}s are: {', '.join(known)}"
                )
            target[io.name] = graph.get_tensor_by_name(names[io.name])
    missing = sorted(set(inputs) - set(feeds))
    if missing:
        raise InvalidArgument(
            f"unable to load model '{config.name}': configuration expects {len(feeds)} "
            f"inputs, the signature has {len(inputs)} (missing {missing})"
        )
    return feeds, fetches, {**inputs, **outputs}


class TensorFlowInstance(ModelInstance):
    """One TensorFlow session that executes merged batches of requests."""

    # Pure computation; the scheduler runs it inline only when it measures fast.
    inline_capable = True

    def __init__(
        self,
        name: str,
        session: Any,
        feeds: dict[str, Any],
        fetches: dict[str, Any],
        batcher: TensorBatcher,
    ) -> None:
        self.name = name
        self.session = session
        self._feeds = feeds
        self._fetches = fetches
        self.batcher = batcher
        self._callables: dict[tuple[tuple[str, ...], tuple[str, ...]], Callable[..., Any]] = {}
        self._lock = threading.Lock()

    def _callable(self, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> Callable[..., Any]:
        key = (inputs, outputs)
        fn = self._callables.get(key)
        if fn is None:
            for name in inputs:
                if name not in self._feeds:
                    raise InvalidArgument(f"unexpected inference input '{name}'")
            with self._lock:
                fn = self.session.make_callable(
                    [self._fetches[n] for n in outputs], [self._feeds[n] for n in inputs]
                )
            self._callables[key] = fn
        return fn

    def _run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> Sequence[Any]:
        names = tuple(inputs)
        fn = self._callable(names, tuple(output_names))
        return fn(*(inputs[n] for n in names))

    def execute(self, requests: list[InferRequest], timing: ExecTiming) -> ExecResult:
        """Merge ``requests``, run the session once per batch and split the outputs."""
        return self.batcher.execute(requests, self._run, timing, on_error=tf_error)

    def finalize(self) -> None:
        session, self.session = self.session, None
        self._callables.clear()
        if session is not None:
            session.close()


class TensorFlowBackend(Backend):
    """Serves ``tensorflow_graphdef`` and ``tensorflow_savedmodel`` models."""

    name = "tensorflow"

    def auto_complete_config(
        self, config: ModelConfig, model_dir: Path, version: int, backend_config: dict[str, str]
    ) -> None:
        """SavedModel: fill I/O, ``max_batch_size`` and ``dynamic_batching`` (Triton's)."""
        version_dir = Path(model_dir) / str(version)
        platform = model_format(config, version_dir)
        if not config.platform:
            config.platform = platform
        if platform != SAVEDMODEL or (config.input and config.output):
            return
        path = model_path(config, version_dir, platform)
        meta = _meta_graph(config, path, _graph_tag(config, backend_config))
        signature = _signature(config, meta, _signature_key(config, backend_config))
        inputs, outputs, _ = signature_tensors(signature)
        # Control inputs are fed by the sequence batcher, never listed as inputs (Triton).
        controls = {spec.name for spec in control_specs(config)}
        model_inputs = [t for name, t in inputs.items() if name not in controls]
        auto_complete(config, model_inputs, list(outputs.values()), backend_config)

    def create_instance(
        self, context: ModelContext, instance_name: str, device_id: int
    ) -> TensorFlowInstance:
        """Open a session on the model and check the config's inputs and outputs."""
        config = named_config(context.config, context.name)
        if config.HasField("sequence_batching") and config.sequence_batching.state:
            raise InvalidArgument(
                f"unable to load model '{config.name}': the tensorflow backend does not "
                f"support implicit state (sequence_batching.state)"
            )
        platform = model_format(config, context.version_dir)
        path = model_path(config, context.version_dir, platform)
        proto = session_config(config, context.backend_config)
        if platform == GRAPHDEF:
            graph = _load_graphdef(path, config)
            feeds, fetches, declared = _graphdef_io(config, graph)
            session = tf.compat.v1.Session(graph=graph, config=proto)
        else:
            graph = tf.Graph()
            session = tf.compat.v1.Session(graph=graph, config=proto)
            try:
                feeds, fetches, declared = _open_savedmodel(config, context, session, path)
            except BaseException:
                session.close()
                raise
        try:
            for kind, ios in (("input", config.input), ("output", config.output)):
                for io in ios:
                    check_io(config, kind, io, declared[io.name])
            for spec in control_specs(config):
                check_control(config, spec.name, spec.datatype, declared[spec.name])
            ops = _init_ops(config, context)
            if ops:
                session.run(ops)
        except Exception:
            session.close()
            raise
        batcher = TensorBatcher(config, context.version)
        log.info(
            "created tensorflow session for instance '%s' of model '%s' version %s (%s, "
            "intra_op=%d inter_op=%d)",
            instance_name,
            config.name,
            context.version,
            path,
            proto.intra_op_parallelism_threads,
            proto.inter_op_parallelism_threads,
        )
        return TensorFlowInstance(instance_name, session, feeds, fetches, batcher)
