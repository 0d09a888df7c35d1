"""``model_warmup``: sample requests every instance runs before its model is ready.

Each ``model_warmup`` entry names a batch size, a count and its inputs, whose data is
zeros (``zero_data``), random values (``random_data``) or the raw bytes of a file under
``<model>/warmup/`` (``input_data_file``).  The samples run straight on the instance, on the
loading thread, like Triton does; a failing sample fails the load with the sample's name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from openeas.protocol import datatypes
from openeas.protocol.errors import InferenceError, InvalidArgument
from openeas.protocol.types import InferRequest, Tensor
from openeas.server.backends.base import ExecTiming, ModelInstance
from openeas.server.repository.config import ModelConfig

WARMUP_DIR = "warmup"


def warmup_requests(
    config: ModelConfig, model_dir: Path, version: int
) -> list[tuple[str, int, InferRequest]]:
    """``(sample name, count, request)`` for every ``model_warmup`` entry of a config."""
    samples = []
    for sample in config.model_warmup:
        inputs = [
            _tensor(config, model_dir, sample, name, spec) for name, spec in sample.inputs.items()
        ]
        request = InferRequest(config.name, str(version), id=f"warmup:{sample.name}", inputs=inputs)
        samples.append((sample.name, max(1, sample.count), request))
    return samples


def run_warmup(
    instance: ModelInstance, instance_name: str, samples: list[tuple[str, int, InferRequest]]
) -> None:
    """Run every sample ``count`` times on ``instance``; InvalidArgument on the first failure."""
    for name, count, request in samples:
        for _ in range(count):
            results = instance.execute([request], ExecTiming())
            result = results[0] if results else None
            if result is None or isinstance(result, InferenceError):
                raise InvalidArgument(
                    f"model instance '{instance_name}': warmup sample '{name}' failed: {result}"
                )


def _tensor(
    config: ModelConfig,
    model_dir: Path,
    sample: mc.ModelWarmup,
    name: str,
    spec: mc.ModelWarmup.Input,
) -> Tensor:
    datatype = datatypes.config_to_triton(mc.DataType.Name(spec.data_type))
    if not datatypes.is_valid(datatype):
        raise InvalidArgument(
            f"warmup sample '{sample.name}': input '{name}' has no valid data_type"
        )
    shape = list(spec.dims)
    if any(d < 0 for d in shape):
        raise InvalidArgument(
            f"warmup sample '{sample.name}': input '{name}' needs fixed dims, got {shape}"
        )
    if config.max_batch_size > 0:
        shape = [max(1, sample.batch_size)] + shape
    count = datatypes.element_count(shape)
    kind = spec.WhichOneof("input_data_type")
    if kind == "input_data_file":
        path = (model_dir / WARMUP_DIR / spec.input_data_file).resolve()
        if not path.is_relative_to((model_dir / WARMUP_DIR).resolve()):
            raise InvalidArgument(
                f"warmup sample '{sample.name}': input_data_file escapes the warmup directory"
            )
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise InvalidArgument(
                f"warmup sample '{sample.name}': cannot read '{spec.input_data_file}': {exc}"
            ) from None
        per_item = datatypes.element_count(spec.dims)
        batch = shape[0] if config.max_batch_size > 0 else 1
        item = (
            datatypes.array_from_buffer(
                datatype, list(spec.dims), raw, f"warmup input '{name}' ('{spec.input_data_file}')"
            )
            if per_item
            else np.empty(0)
        )
        data = np.stack([item] * batch) if config.max_batch_size > 0 else item
        return Tensor(name, datatype, shape, data.reshape(shape))
    if datatype == "BYTES":
        value = b"" if kind == "zero_data" else b"openeas"
        data = datatypes.to_bytes_array([value] * count).reshape(shape)
    elif kind == "random_data":
        rng = np.random.default_rng(0)
        dtype = datatypes.to_numpy_dtype(datatype)
        if dtype.kind == "b":
            data = rng.integers(0, 2, size=shape).astype(dtype)
        elif dtype.kind in "iu":
            data = rng.integers(0, 100, size=shape).astype(dtype)
        else:
            data = rng.random(size=shape).astype(dtype)
    else:
        data = np.zeros(shape, dtype=datatypes.to_numpy_dtype(datatype))
    return Tensor(name, datatype, shape, data)
