"""``config.pbtxt`` <-> ``ModelConfig`` protobuf <-> the JSON that Triton prints.

The ``tritonclient`` wheel ships Triton's generated ``model_config_pb2``; protobuf's
text format parses every ``config.pbtxt`` that Triton itself accepts.
"""

from __future__ import annotations

import json
from typing import Any, TypeAlias

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import FieldDescriptor
from tritonclient.grpc import model_config_pb2 as mc

from openeas.protocol.errors import InvalidArgument

ModelConfig: TypeAlias = mc.ModelConfig  # generated protobuf class (untyped)

#: Backend name for each legacy ``platform`` value.
PLATFORM_BACKENDS = {
    "onnxruntime_onnx": "onnxruntime",
    "tensorflow_graphdef": "tensorflow",
    "tensorflow_savedmodel": "tensorflow",
    "pytorch_libtorch": "pytorch",
    "tensorrt_plan": "tensorrt",
    "ensemble": "",
}

#: Default model file name of each backend (``default_model_filename`` overrides it).
DEFAULT_MODEL_FILES = {
    "onnxruntime": "model.onnx",
    "tensorflow_graphdef": "model.graphdef",
    "tensorflow_savedmodel": "model.savedmodel",
    "pytorch": "model.pt",
    "python": "model.py",
    "tensorrt": "model.plan",
}

_INT64_TYPES = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64,
                FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_FIXED64,
                FieldDescriptor.TYPE_SFIXED64)


def parse_config_text(text: str, source: str = "config.pbtxt") -> ModelConfig:
    """Parse protobuf text format into a ``ModelConfig``; errors name the source."""
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise InvalidArgument(f"failed to parse {source}: {exc}") from None
    return config


def parse_config_json(text: str | bytes, source: str = "config override") -> ModelConfig:
    """Parse a ``ModelConfig`` from JSON (the repository API's ``config`` parameter)."""
    config = ModelConfig()
    try:
        json_format.Parse(text, config)
    except (json_format.ParseError, ValueError) as exc:
        raise InvalidArgument(f"failed to parse {source}: {exc}") from None
    return config


def config_to_dict(config: ModelConfig) -> dict[str, Any]:
    """The JSON form Triton prints: proto field names, every field, int64 as numbers."""
    out = json_format.MessageToDict(
        config,
        preserving_proto_field_name=True,
        including_default_value_fields=True,
    )
    _int64_to_numbers(config, out)
    return out


def config_to_json(config: ModelConfig) -> bytes:
    return json.dumps(config_to_dict(config)).encode()


def _int64_to_numbers(message: Any, data: dict[str, Any]) -> None:
    """protobuf's JSON prints int64 as strings; Triton turns them back into numbers."""
    for field in message.DESCRIPTOR.fields:
        name = field.name
        if name not in data:
            continue
        value = getattr(message, name)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    for key, sub in value.items():
                        _int64_to_numbers(sub, data[name][str(key)])
                elif value_field.type in _INT64_TYPES:
                    data[name] = {k: int(v) for k, v in data[name].items()}
            elif field.label == FieldDescriptor.LABEL_REPEATED:
                for sub, sub_data in zip(value, data[name], strict=False):
                    _int64_to_numbers(sub, sub_data)
            else:
                _int64_to_numbers(value, data[name])
        elif field.type in _INT64_TYPES:
            if field.label == FieldDescriptor.LABEL_REPEATED:
                data[name] = [int(v) for v in data[name]]
            else:
                data[name] = int(data[name])


def backend_of(config: ModelConfig) -> str:
    """The backend that serves a config: ``backend`` or the one implied by ``platform``."""
    if config.backend:
        return config.backend
    return PLATFORM_BACKENDS.get(config.platform, config.platform)


def default_model_filename(config: ModelConfig) -> str:
    if config.default_model_filename:
        return config.default_model_filename
    key = config.platform if config.platform.startswith("tensorflow") else backend_of(config)
    return DEFAULT_MODEL_FILES.get(key, "")


def parameter(config: ModelConfig, key: str, default: str | None = None) -> str | None:
    """A ``parameters { key: ... value: { string_value: ... } }`` entry of the config."""
    if key in config.parameters:
        return config.parameters[key].string_value
    return default
