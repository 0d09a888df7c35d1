"""Unit tests of the in-process Triton Python backend (real model.py files in tmp_path)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from openeas.protocol.errors import (
    InferenceError,
    InternalError,
    InvalidArgument,
    NotFound,
    Unsupported,
)
from openeas.protocol.types import InferRequest, InferResponse, RequestedOutput, Tensor
from openeas.server.backends import get_backend
from openeas.server.backends.base import ExecTiming, ModelContext
from openeas.server.backends.python import PythonBackend, PythonModelInstance
from openeas.server.backends.python import triton_python_backend_utils as pb_utils
from openeas.server.repository.config import parse_config_text

# --------------------------------------------------------------------------- model sources

ADD_SUB_MODEL = '''
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Triton's add_sub example: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1."""

    def initialize(self, args):
        self.model_config = model_config = json.loads(args["model_config"])
        output0_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT0")
        output1_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT1")
        self.output0_dtype = pb_utils.triton_string_to_numpy(output0_config["data_type"])
        self.output1_dtype = pb_utils.triton_string_to_numpy(output1_config["data_type"])

    def execute(self, requests):
        output0_dtype = self.output0_dtype
        output1_dtype = self.output1_dtype
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            out_0, out_1 = (
                in_0.as_numpy() + in_1.as_numpy(),
                in_0.as_numpy() - in_1.as_numpy(),
            )
            out_tensor_0 = pb_utils.Tensor("OUTPUT0", out_0.astype(output0_dtype))
            out_tensor_1 = pb_utils.Tensor("OUTPUT1", out_1.astype(output1_dtype))
            inference_response = pb_utils.InferenceResponse(
                output_tensors=[out_tensor_0, out_tensor_1]
            )
            responses.append(inference_response)
        return responses

    def finalize(self):
        print("Cleaning up...")
'''

ADD_SUB_CONFIG = """
name: "add_sub"
backend: "python"
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
instance_group [{ kind: KIND_CPU }]
"""

IDENTITY_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.args = args
        self.seen = []

    def execute(self, requests):
        responses = []
        for request in requests:
            self.seen.append(request)
            outputs = [
                pb_utils.Tensor(t.name().replace("INPUT", "OUTPUT"), t.as_numpy())
                for t in request.inputs()
            ]
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses

    def finalize(self):
        import pathlib
        pathlib.Path(self.args["model_repository"], "finalized").write_text("yes")
"""

IDENTITY_CONFIG = """
name: "identity"
backend: "python"
max_batch_size: 8
input [{ name: "INPUT0" data_type: TYPE_INT64 dims: [ -1 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_INT64 dims: [ -1 ] }]
"""

STRING_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            assert text.dtype == np.object_
            upper = np.array([t.decode("utf-8").upper() for t in text.reshape(-1)])
            lengths = np.array([len(t) for t in text.reshape(-1)], dtype=np.int32)
            objects = np.array([b"raw", "str", 7], dtype=np.object_)
            responses.append(
                pb_utils.InferenceResponse(
                    [
                        pb_utils.Tensor("UPPER", upper.reshape(text.shape)),
                        pb_utils.Tensor("LENGTH", lengths),
                        pb_utils.Tensor("OBJECTS", objects),
                    ]
                )
            )
        return responses
"""

STRING_CONFIG = """
name: "strings"
backend: "python"
input [{ name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] }]
output [
  { name: "UPPER" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "LENGTH" data_type: TYPE_INT32 dims: [ -1 ] },
  { name: "OBJECTS" data_type: TYPE_STRING dims: [ 3 ] }
]
"""

ERROR_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            mode = pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0]
            if mode == 0:
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("OUT", request.inputs()[0].as_numpy())]))
            elif mode == 1:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError("plain failure")))
            elif mode == 2:
                responses.append(pb_utils.InferenceResponse(
                    [], pb_utils.TritonError("no such thing", pb_utils.TritonError.NOT_FOUND)))
            elif mode == 3:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("bad input", code=pb_utils.TritonError.INVALID_ARG)))
            elif mode == 4:
                raise ValueError("boom")
            elif mode == 5:
                return responses
            elif mode == 6:
                return None
            elif mode == 7:
                try:
                    request.get_response_sender().send(
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                except pb_utils.TritonError as exc:
                    responses.append(pb_utils.InferenceResponse(error=exc))
            elif mode == 8:
                raise pb_utils.TritonModelException("model said no")
            elif mode == 9:
                responses.append("not a response")
        return responses
"""

ERROR_CONFIG = """
name: "errors"
backend: "python"
input [{ name: "MODE" data_type: TYPE_INT32 dims: [ 1 ] }]
output [{ name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }]
"""

ASYNC_MODEL = """
import asyncio

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def initialize(self, args):
        await asyncio.sleep(0)
        self.loops = []

    async def execute(self, requests):
        self.loops.append(asyncio.get_running_loop())
        results = await asyncio.gather(*[self._one(r) for r in requests])
        return list(results)

    async def _one(self, request):
        await asyncio.sleep(0.01)
        data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
        return pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", data * 2)])
"""

ASYNC_CONFIG = """
name: "async_double"
backend: "python"
input [{ name: "INPUT0" data_type: TYPE_FP64 dims: [ -1 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP64 dims: [ -1 ] }]
"""

META_MODEL = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            meta = {
                "request_id": request.request_id(),
                "correlation_id": request.correlation_id(),
                "flags": request.flags(),
                "parameters": json.loads(request.parameters()),
                "timeout": request.timeout(),
                "model_name": request.model_name(),
                "model_version": request.model_version(),
                "requested": request.requested_output_names(),
                "cancelled": request.is_cancelled(),
            }
            responses.append(pb_utils.InferenceResponse(
                [
                    pb_utils.Tensor("META", np.array([json.dumps(meta).encode()], dtype=np.object_)),
                    pb_utils.Tensor("OTHER", np.zeros(1, dtype=np.float32)),
                    pb_utils.Tensor("NOT_IN_CONFIG", np.ones(1, dtype=np.float32)),
                ],
                parameters={"answer": 42, "ok": True},
            ))
        return responses
"""

META_CONFIG = """
name: "meta"
backend: "python"
input [{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }]
output [
  { name: "META" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "OTHER" data_type: TYPE_FP32 dims: [ 1 ] }
]
"""

BLS_SYNC_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            target = pb_utils.get_input_tensor_by_name(request, "MODEL_NAME").as_numpy()[0]
            infer_request = pb_utils.InferenceRequest(
                model_name=target.decode(),
                requested_output_names=["OUTPUT0", "OUTPUT1"],
                inputs=[in_0, in_1],
                correlation_id=7,
                flags=pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START,
                parameters={"tag": "bls"},
            )
            infer_response = infer_request.exec()
            if infer_response.has_error():
                responses.append(pb_utils.InferenceResponse(error=infer_response.error()))
                continue
            output0 = pb_utils.get_output_tensor_by_name(infer_response, "OUTPUT0")
            output0 = pb_utils.Tensor.from_dlpack("OUTPUT0", output0.to_dlpack())
            output1 = pb_utils.get_output_tensor_by_name(infer_response, "OUTPUT1")
            responses.append(pb_utils.InferenceResponse([output0, output1]))
        return responses
"""

BLS_ASYNC_MODEL = """
import asyncio

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            awaits = []
            for model_name in ["slow_add_sub", "slow_add_sub", "missing"]:
                infer_request = pb_utils.InferenceRequest(
                    model_name=model_name,
                    requested_output_names=["OUTPUT0", "OUTPUT1"],
                    inputs=[in_0, in_1],
                )
                awaits.append(infer_request.async_exec())
            first, second, missing = await asyncio.gather(*awaits)
            assert not first.has_error() and not second.has_error()
            assert missing.has_error()
            assert missing.error().code() == pb_utils.TritonError.NOT_FOUND
            responses.append(pb_utils.InferenceResponse([
                pb_utils.get_output_tensor_by_name(first, "OUTPUT0"),
                pb_utils.get_output_tensor_by_name(second, "OUTPUT1"),
            ]))
        return responses
"""

BLS_CONFIG = """
name: "bls"
backend: "python"
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "MODEL_NAME" data_type: TYPE_STRING dims: [ 1 ] optional: true }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
"""

AUTO_COMPLETE_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        inputs = [
            {"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]},
            {"name": "INPUT1", "data_type": "TYPE_FP32", "dims": [4], "optional": False},
        ]
        outputs = [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}]
        config = auto_complete_model_config.as_dict()
        input_names = [i["name"] for i in config["input"]]
        output_names = [o["name"] for o in config["output"]]
        for input in inputs:
            if input["name"] not in input_names:
                auto_complete_model_config.add_input(input)
        for output in outputs:
            if output["name"] not in output_names:
                auto_complete_model_config.add_output(output)
        auto_complete_model_config.set_max_batch_size(8)
        auto_complete_model_config.set_dynamic_batching()
        return auto_complete_model_config

    def execute(self, requests):
        return [pb_utils.InferenceResponse([]) for _ in requests]
"""


# --------------------------------------------------------------------------- helpers


def write_model(
    root: Path,
    name: str,
    source: str,
    config_text: str,
    *,
    version: int = 1,
    extra: dict[str, str] | None = None,
) -> ModelContext:
    model_dir = root / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True)
    (version_dir / "model.py").write_text(textwrap.dedent(source))
    for filename, text in (extra or {}).items():
        (version_dir / filename).write_text(textwrap.dedent(text))
    config = parse_config_text(config_text)
    config.name = name
    return ModelContext(name=name, version=version, config=config, model_dir=model_dir)


def tensor(name: str, data: np.ndarray, datatype: str) -> Tensor:
    return Tensor(name=name, datatype=datatype, shape=list(data.shape), data=data)


def bytes_tensor(name: str, values: list[bytes]) -> Tensor:
    data = np.empty(len(values), dtype=np.object_)
    data[:] = values
    return tensor(name, data, "BYTES")


@pytest.fixture
def instances() -> Iterator[list[PythonModelInstance]]:
    created: list[PythonModelInstance] = []
    yield created
    for instance in created:
        instance.finalize()


@pytest.fixture
def load(instances: list[PythonModelInstance]):
    def _load(context: ModelContext, instance_name: str | None = None) -> PythonModelInstance:
        instance = PythonBackend().create_instance(
            context, instance_name or f"{context.name}_0_0", 0
        )
        instances.append(instance)
        return instance

    return _load


class FakeHandle:
    """A stand-in for the server's InferenceHandle: add_sub models on a background loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.requests: list[InferRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def infer(self, request: InferRequest) -> InferResponse:
        self.requests.append(request)
        if request.model_name not in ("add_sub", "slow_add_sub"):
            raise NotFound(f"Request for unknown model: '{request.model_name}' is not found")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if request.model_name == "slow_add_sub":
                await asyncio.sleep(0.05)
            a = request.input("INPUT0").data
            b = request.input("INPUT1").data
            outputs = [tensor("OUTPUT0", a + b, "FP32"), tensor("OUTPUT1", a - b, "FP32")]
            if request.outputs is not None:
                wanted = {o.name for o in request.outputs}
                outputs = [t for t in outputs if t.name in wanted]
            return InferResponse(
                model_name=request.model_name, model_version="1", id=request.id, outputs=outputs
            )
        finally:
            self.in_flight -= 1

    def infer_blocking(self, request: InferRequest, timeout: float | None = None) -> InferResponse:
        return asyncio.run_coroutine_threadsafe(self.infer(request), self.loop).result(timeout)

    def is_model_ready(self, name: str, version: str = "") -> bool:
        return name in ("add_sub", "slow_add_sub")

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@pytest.fixture
def handle() -> Iterator[FakeHandle]:
    fake = FakeHandle()
    yield fake
    fake.close()


def run(instance: PythonModelInstance, *requests: InferRequest) -> list:
    timing = ExecTiming()
    return instance.execute(list(requests), timing)


def add_sub_request(a: np.ndarray, b: np.ndarray, **kwargs) -> InferRequest:
    return InferRequest(
        model_name=kwargs.pop("model_name", "add_sub"),
        inputs=[tensor("INPUT0", a, "FP32"), tensor("INPUT1", b, "FP32"), *kwargs.pop("extra", [])],
        **kwargs,
    )


# --------------------------------------------------------------------------- backend basics


def test_registered_backend_and_pb_utils_module(tmp_path: Path, load) -> None:
    assert isinstance(get_backend("python"), PythonBackend)
    assert PythonBackend.name == "python"
    load(write_model(tmp_path, "add_sub", ADD_SUB_MODEL, ADD_SUB_CONFIG))
    import triton_python_backend_utils

    assert triton_python_backend_utils is pb_utils


def test_add_sub(tmp_path: Path, load) -> None:
    instance = load(write_model(tmp_path, "add_sub", ADD_SUB_MODEL, ADD_SUB_CONFIG))
    a = np.array([1, 2, 3, 4], dtype=np.float32)
    b = np.array([0.5, 0.5, 1, 1], dtype=np.float32)
    timing = ExecTiming()
    [response] = instance.execute([add_sub_request(a, b, id="req-1")], timing)
    assert isinstance(response, InferResponse)
    assert (response.model_name, response.model_version, response.id) == ("add_sub", "1", "req-1")
    assert [t.name for t in response.outputs] == ["OUTPUT0", "OUTPUT1"]
    out0, out1 = response.outputs
    assert out0.datatype == "FP32" and out0.shape == [4]
    np.testing.assert_array_equal(out0.data, a + b)
    np.testing.assert_array_equal(out1.data, a - b)
    assert timing.compute_infer_ns > 0
    assert timing.compute_input_ns >= 0 and timing.compute_output_ns >= 0


def test_initialize_args(tmp_path: Path, load) -> None:
    context = write_model(tmp_path, "identity", IDENTITY_MODEL, IDENTITY_CONFIG, version=3)
    instance = load(context, "identity_0_1")
    args = instance.model.args
    assert set(args) == {
        "model_config",
        "model_instance_kind",
        "model_instance_name",
        "model_instance_device_id",
        "model_repository",
        "model_version",
        "model_name",
    }
    assert all(isinstance(v, str) for v in args.values())
    config = json.loads(args["model_config"])
    assert config["name"] == "identity" and config["max_batch_size"] == 8
    assert config["input"][0]["data_type"] == "TYPE_INT64"
    assert config["input"][0]["dims"] == [-1]
    assert args["model_instance_kind"] == "CPU"
    assert args["model_instance_name"] == "identity_0_1"
    assert args["model_instance_device_id"] == "0"
    assert args["model_repository"] == str(tmp_path / "identity")
    assert args["model_version"] == "3"
    assert args["model_name"] == "identity"


def test_identity_shares_input_memory(tmp_path: Path, load) -> None:
    instance = load(write_model(tmp_path, "identity", IDENTITY_MODEL, IDENTITY_CONFIG))
    data = np.arange(6, dtype=np.int64).reshape(2, 3)
    [response] = run(
        instance, InferRequest(model_name="identity", inputs=[tensor("INPUT0", data, "INT64")])
    )
    [received] = instance.model.seen
    pb_input = received.inputs()[0]
    assert pb_input.as_numpy() is data
    assert pb_input.triton_dtype() == 9 and pb_input.shape() == [2, 3] and pb_input.is_cpu()
    out = response.output("OUTPUT0")
    assert out.datatype == "INT64" and out.shape == [2, 3]
    assert np.shares_memory(out.data, data)


def test_finalize_is_called_once(tmp_path: Path) -> None:
    context = write_model(tmp_path, "identity", IDENTITY_MODEL, IDENTITY_CONFIG)
    instance = PythonBackend().create_instance(context, "identity_0_0", 0)
    module_name = instance.module.__name__
    assert module_name in sys.modules
    instance.finalize()
    assert (tmp_path / "identity" / "finalized").read_text() == "yes"
    assert module_name not in sys.modules
    instance.finalize()  # idempotent
    [error] = run(instance, InferRequest(model_name="identity"))
    assert isinstance(error, InternalError)


def test_each_instance_has_its_own_module_and_model(tmp_path: Path, load) -> None:
    source = """
    import triton_python_backend_utils as pb_utils

    COUNT = 0

    class TritonPythonModel:
        def initialize(self, args):
            global COUNT
            COUNT += 1
            self.count = COUNT

        def execute(self, requests):
            return [pb_utils.InferenceResponse([]) for _ in requests]
    """
    context = write_model(tmp_path, "counter", source, 'backend: "python"')
    first, second = load(context, "counter_0_0"), load(context, "counter_0_1")
    assert first.module is not second.module
    assert first.module.__name__ != second.module.__name__
    assert first.model.count == 1 and second.model.count == 1


def test_sibling_imports_are_per_model(tmp_path: Path, load) -> None:
    source = """
    import numpy as np
    import triton_python_backend_utils as pb_utils
    from helper import VALUE

    class TritonPythonModel:
        def execute(self, requests):
            return [pb_utils.InferenceResponse([pb_utils.Tensor("V", np.array([VALUE]))])
                    for _ in requests]
    """
    a = load(
        write_model(tmp_path, "a", source, 'backend: "python"', extra={"helper.py": "VALUE = 1"})
    )
    b = load(
        write_model(tmp_path, "b", source, 'backend: "python"', extra={"helper.py": "VALUE = 2"})
    )
    [ra] = run(a, InferRequest(model_name="a"))
    [rb] = run(b, InferRequest(model_name="b"))
    assert ra.output("V").data.tolist() == [1]
    assert rb.output("V").data.tolist() == [2]
    assert "helper" not in sys.modules
    assert str(tmp_path / "a" / "1") not in sys.path


def test_default_model_filename(tmp_path: Path, load) -> None:
    context = write_model(tmp_path, "renamed", ADD_SUB_MODEL, ADD_SUB_CONFIG)
    (context.version_dir / "model.py").rename(context.version_dir / "add_sub_model.py")
    context.config.default_model_filename = "add_sub_model.py"
    instance = load(context)
    a = np.ones(4, dtype=np.float32)
    [response] = run(instance, add_sub_request(a, a))
    np.testing.assert_array_equal(response.output("OUTPUT0").data, a * 2)


def test_load_failures(tmp_path: Path) -> None:
    broken = write_model(
        tmp_path, "broken", "import does_not_exist_anywhere\n", 'backend: "python"'
    )
    with pytest.raises(InternalError, match="ModuleNotFoundError"):
        PythonBackend().create_instance(broken, "broken_0_0", 0)
    noclass = write_model(tmp_path, "noclass", "X = 1\n", 'backend: "python"')
    with pytest.raises(InternalError, match="TritonPythonModel"):
        PythonBackend().create_instance(noclass, "noclass_0_0", 0)
    failing = write_model(
        tmp_path,
        "failing",
        """
    class TritonPythonModel:
        def initialize(self, args):
            raise RuntimeError("cannot start")

        def execute(self, requests):
            return []
    """,
        'backend: "python"',
    )
    with pytest.raises(InternalError, match="RuntimeError: cannot start") as info:
        PythonBackend().create_instance(failing, "failing_0_0", 0)
    assert "model.py" in str(info.value)
    assert not any(name.startswith("_openeas_python_model_failing") for name in sys.modules)
    missing = ModelContext(
        name="missing",
        version=1,
        config=parse_config_text('backend: "python"'),
        model_dir=tmp_path / "missing",
    )
    with pytest.raises(InternalError, match="unable to find model file"):
        PythonBackend().create_instance(missing, "missing_0_0", 0)


DECOUPLED_MODEL = """
import threading

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        self.errors = []
        self.threads = []
        self.cancelled = {}

    def execute(self, requests):
        for request in requests:
            data = request.inputs()[0].as_numpy()
            if int(data[0]) < 0:
                raise pb_utils.TritonModelException("negative")
            thread = threading.Thread(target=self._answer, args=(request, data))
            thread.start()
            self.threads.append(thread)
        return None

    def _answer(self, request, data):
        sender = request.get_response_sender()
        for index in range(int(data[0])):
            sender.send(pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT0", np.array([index], dtype=np.int64))]))
        sender.send(flags=FINAL)
        for args in ((None, FINAL), (None, 0)):
            try:
                sender.send(*args)
            except pb_utils.TritonError as exc:
                self.errors.append(exc.message())
        self.cancelled[request.request_id()] = request.is_cancelled()
"""


def _drain(loop: asyncio.AbstractEventLoop, stream) -> list:
    async def collect() -> list:
        items = []
        while True:
            item = await asyncio.wait_for(stream.get(), 10)
            items.append(item)
            if item[1]:
                return items

    return loop.run_until_complete(collect())


def test_decoupled_model_sends_through_its_streams(tmp_path: Path, load) -> None:
    from openeas.server.backends.base import ResponseStream

    context = write_model(
        tmp_path,
        "decoupled",
        DECOUPLED_MODEL,
        IDENTITY_CONFIG + "model_transaction_policy { decoupled: true }",
    )
    instance = load(context)
    assert instance.decoupled and not instance.inline_capable
    loop = asyncio.new_event_loop()
    try:
        streams = [ResponseStream(loop), ResponseStream(loop)]
        requests = [
            InferRequest(
                model_name="decoupled",
                id=f"r{n}",
                inputs=[tensor("INPUT0", np.array([n], dtype=np.int64), "INT64")],
            )
            for n in (2, 0)
        ]
        streams[1].cancel()
        instance.execute_decoupled(requests, streams, ExecTiming())
        first, second = (_drain(loop, stream) for stream in streams)
        for thread in instance.model.threads:
            thread.join(5)
        assert [(r.id, r.outputs[0].data.tolist(), f) for r, f in first[:2]] == [
            ("r2", [0], False),
            ("r2", [1], False),
        ]
        assert first[2] == (None, True) and second == [(None, True)]
        assert all(stream.closed for stream in streams)
        assert instance.model.errors == [
            "Unable to send response. Response sender has been closed."
        ] * 4
        assert instance.model.cancelled == {"r2": False, "r0": True}

        failing = ResponseStream(loop)
        bad = InferRequest(
            model_name="decoupled",
            inputs=[tensor("INPUT0", np.array([-1], dtype=np.int64), "INT64")],
        )
        instance.execute_decoupled([bad], [failing], ExecTiming())
        ((error, final),) = _drain(loop, failing)
        assert final and isinstance(error, InternalError) and "negative" in error.message
    finally:
        loop.close()


# --------------------------------------------------------------------------- tensors


def test_bytes_in_and_out(tmp_path: Path, load) -> None:
    instance = load(write_model(tmp_path, "strings", STRING_MODEL, STRING_CONFIG))
    request = InferRequest(
        model_name="strings", inputs=[bytes_tensor("TEXT", [b"abc", "é".encode()])]
    )
    [response] = run(instance, request)
    upper = response.output("UPPER")
    assert upper.datatype == "BYTES" and upper.shape == [2]
    assert upper.data.dtype == np.object_
    assert upper.data.tolist() == [b"ABC", "É".encode()]
    length = response.output("LENGTH")
    assert length.datatype == "INT32" and length.data.tolist() == [3, 2]
    assert response.output("OBJECTS").data.tolist() == [b"raw", b"str", b"7"]


def test_multiple_requests_and_requested_outputs(tmp_path: Path, load) -> None:
    instance = load(write_model(tmp_path, "add_sub", ADD_SUB_MODEL, ADD_SUB_CONFIG))
    requests = [
        add_sub_request(np.full(4, i, dtype=np.float32), np.ones(4, dtype=np.float32), id=f"r{i}")
        for i in range(3)
    ]
    requests[1].outputs = [RequestedOutput("OUTPUT1")]
    responses = run(instance, *requests)
    assert [r.id for r in responses] == ["r0", "r1", "r2"]
    assert [t.name for t in responses[0].outputs] == ["OUTPUT0", "OUTPUT1"]
    assert [t.name for t in responses[1].outputs] == ["OUTPUT1"]
    for i, response in enumerate(responses):
        np.testing.assert_array_equal(response.output("OUTPUT1").data, np.full(4, i - 1.0))


def test_request_metadata_and_parameters(tmp_path: Path, load) -> None:
    instance = load(write_model(tmp_path, "meta", META_MODEL, META_CONFIG, version=2))
    request = InferRequest(
        model_name="meta",
        id="abc",
        inputs=[tensor("X", np.zeros(1, dtype=np.float32), "FP32")],
        parameters={
            "sequence_id": 42,
            "sequence_start": True,
            "sequence_end": True,
            "timeout": 5000,
            "custom": "value",
            "n": 3,
        },
    )
    [response] = run(instance, request)
    assert [t.name for t in response.outputs] == ["META", "OTHER"]  # NOT_IN_CONFIG dropped
    meta = json.loads(response.output("META").data[0])
    assert meta == {
        "request_id": "abc",
        "correlation_id": 42,
        "flags": 3,
        "parameters": {"custom": "value", "n": 3},
        "timeout": 5000,
        "model_name": "meta",
        "model_version": 2,
        "requested": ["META", "OTHER"],
        "cancelled": False,
    }
    assert response.parameters == {"answer": 42, "ok": True}
    assert response.model_version == "2"

    request = InferRequest(
        model_name="meta", inputs=request.inputs, outputs=[RequestedOutput("META")]
    )
    [response] = run(instance, request)
    assert [t.name for t in response.outputs] == ["META"]
    meta = json.loads(response.output("META").data[0])
    assert meta["requested"] == ["META"] and meta["flags"] == 0 and meta["parameters"] == {}


# --------------------------------------------------------------------------- errors


def mode_request(mode: int, rid: str = "") -> InferRequest:
    return InferRequest(
        model_name="errors",
        id=rid,
        inputs=[tensor("MODE", np.array([mode], dtype=np.int32), "INT32")],
    )


def test_error_responses(tmp_path: Path, load) -> None:
    instance = load(write_model(tmp_path, "errors", ERROR_MODEL, ERROR_CONFIG))
    ok, plain, not_found, invalid, unsupported, bad = run(
        instance,
        mode_request(0, "ok"),
        mode_request(1),
        mode_request(2),
        mode_request(3),
        mode_request(7),
        mode_request(9),
    )
    assert isinstance(ok, InferResponse) and ok.id == "ok"
    assert type(plain) is InternalError and plain.message == "plain failure"
    assert type(not_found) is NotFound and not_found.message == "no such thing"
    assert type(invalid) is InvalidArgument and invalid.message == "bad input"
    assert type(unsupported) is Unsupported and "decoupled" in unsupported.message
    assert type(bad) is InternalError and "InferenceResponse" in bad.message


def test_raising_execute_fails_every_request(tmp_path: Path, load) -> None:
    instance = load(write_model(tmp_path, "errors", ERROR_MODEL, ERROR_CONFIG))
    timing = ExecTiming()
    results = instance.execute([mode_request(0), mode_request(4)], timing)
    assert len(results) == 2
    for error in results:
        assert type(error) is InternalError
        assert error.message.startswith(
            "Failed to process the request(s) for model instance 'errors_0_0', "
            "message: ValueError: boom"
        )
        assert "model.py(" in error.message and "): execute" in error.message
    assert timing.compute_infer_ns > 0
    [error] = run(instance, mode_request(8))
    assert "message: TritonModelException: model said no" in error.message


def test_wrong_number_of_responses(tmp_path: Path, load) -> None:
    instance = load(write_model(tmp_path, "errors", ERROR_MODEL, ERROR_CONFIG))
    results = run(instance, mode_request(0), mode_request(5))
    assert all(type(e) is InternalError for e in results)
    assert "InferenceRequest(s) size is:2, and InferenceResponse(s) size is:1" in results[0].message
    [error] = run(instance, mode_request(6))
    assert type(error) is InternalError and "must return a list" in error.message


# --------------------------------------------------------------------------- async


def test_async_execute(tmp_path: Path, load) -> None:
    instance = load(write_model(tmp_path, "async_double", ASYNC_MODEL, ASYNC_CONFIG))
    requests = [
        InferRequest(
            model_name="async_double",
            id=str(i),
            inputs=[tensor("INPUT0", np.array([i, i + 0.5]), "FP64")],
        )
        for i in range(3)
    ]
    responses = run(instance, *requests)
    assert [r.id for r in responses] == ["0", "1", "2"]
    for i, response in enumerate(responses):
        assert response.output("OUTPUT0").data.tolist() == [2 * i, 2 * i + 1]
    run(instance, requests[0])
    loops = instance.model.loops
    assert len(loops) == 2 and loops[0] is loops[1]


def test_execute_from_another_thread_keeps_its_loop(tmp_path: Path, load) -> None:
    instance = load(write_model(tmp_path, "async_double", ASYNC_MODEL, ASYNC_CONFIG))
    request = InferRequest(
        model_name="async_double", inputs=[tensor("INPUT0", np.array([1.0]), "FP64")]
    )
    results: list = []
    worker = threading.Thread(target=lambda: results.extend(run(instance, request)))
    worker.start()
    worker.join(10)
    assert results[0].output("OUTPUT0").data.tolist() == [2.0]


# --------------------------------------------------------------------------- BLS


def test_bls_exec(tmp_path: Path, load, handle: FakeHandle) -> None:
    context = write_model(tmp_path, "bls", BLS_SYNC_MODEL, BLS_CONFIG)
    context.handle = handle
    instance = load(context)
    a = np.array([1, 2, 3, 4], dtype=np.float32)
    b = np.ones(4, dtype=np.float32)
    ok, missing = run(
        instance,
        add_sub_request(a, b, model_name="bls", extra=[bytes_tensor("MODEL_NAME", [b"add_sub"])]),
        add_sub_request(a, b, model_name="bls", extra=[bytes_tensor("MODEL_NAME", [b"nope"])]),
    )
    np.testing.assert_array_equal(ok.output("OUTPUT0").data, a + b)
    np.testing.assert_array_equal(ok.output("OUTPUT1").data, a - b)
    assert type(missing) is NotFound and "nope" in missing.message
    sent = handle.requests[0]
    assert sent.model_name == "add_sub" and sent.model_version == ""
    assert [o.name for o in sent.outputs] == ["OUTPUT0", "OUTPUT1"]
    assert sent.parameters == {"tag": "bls", "sequence_id": 7, "sequence_start": True}
    assert np.shares_memory(sent.input("INPUT0").data, a)  # no copy on the way


def test_bls_async_exec(tmp_path: Path, load, handle: FakeHandle) -> None:
    context = write_model(tmp_path, "bls", BLS_ASYNC_MODEL, BLS_CONFIG)
    context.handle = handle
    instance = load(context)
    a = np.array([1, 2, 3, 4], dtype=np.float32)
    b = np.full(4, 2, dtype=np.float32)
    [response] = run(instance, add_sub_request(a, b, model_name="bls"))
    assert isinstance(response, InferResponse), response
    np.testing.assert_array_equal(response.output("OUTPUT0").data, a + b)
    np.testing.assert_array_equal(response.output("OUTPUT1").data, a - b)
    assert handle.max_in_flight == 2  # both slow requests ran at once


def test_bls_from_initialize_and_from_model_threads(
    tmp_path: Path, load, handle: FakeHandle
) -> None:
    source = """
    import threading

    import numpy as np
    import triton_python_backend_utils as pb_utils


    def call(value):
        request = pb_utils.InferenceRequest(
            model_name="add_sub",
            requested_output_names=["OUTPUT0"],
            inputs=[pb_utils.Tensor("INPUT0", np.full(4, value, dtype=np.float32)),
                    pb_utils.Tensor("INPUT1", np.ones(4, dtype=np.float32))],
        )
        return pb_utils.get_output_tensor_by_name(request.exec(), "OUTPUT0").as_numpy()


    class TritonPythonModel:
        def initialize(self, args):
            self.warmup = call(1)

        def execute(self, requests):
            box = []
            worker = threading.Thread(target=lambda: box.append(call(2)))
            worker.start()
            worker.join()
            return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", box[0])]) for _ in requests]
    """
    context = write_model(tmp_path, "threads", source, 'backend: "python"')
    context.handle = handle
    instance = load(context)
    assert instance.model.warmup.tolist() == [2, 2, 2, 2]
    [response] = run(instance, InferRequest(model_name="threads"))
    assert response.output("OUT").data.tolist() == [3, 3, 3, 3]


def test_bls_without_handle_returns_error_response(tmp_path: Path, load, monkeypatch) -> None:
    from openeas.server.backends.python import _runtime

    monkeypatch.setattr(_runtime, "_default_handle", None)
    instance = load(write_model(tmp_path, "bls", BLS_SYNC_MODEL, BLS_CONFIG))
    a = np.ones(4, dtype=np.float32)
    [error] = run(
        instance,
        add_sub_request(a, a, model_name="bls", extra=[bytes_tensor("MODEL_NAME", [b"add_sub"])]),
    )
    assert isinstance(error, InferenceError) and "BLS" in error.message


def test_async_exec_outside_coroutine_raises() -> None:
    request = pb_utils.InferenceRequest(model_name="x", inputs=[], requested_output_names=[])
    with pytest.raises(pb_utils.TritonModelException, match="async"):
        request.async_exec()


# --------------------------------------------------------------------------- auto-complete


def test_auto_complete_config(tmp_path: Path) -> None:
    context = write_model(
        tmp_path,
        "auto",
        AUTO_COMPLETE_MODEL,
        'backend: "python"\ninput [{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }]',
    )
    config = context.config
    PythonBackend().auto_complete_config(config, context.model_dir, 1, {})
    assert config.name == "auto" and config.max_batch_size == 8
    assert config.HasField("dynamic_batching")
    assert [(i.name, i.dims) for i in config.input] == [("INPUT1", [4]), ("INPUT0", [4])]
    assert config.input[1].data_type == config.input[0].data_type != 0
    assert [o.name for o in config.output] == ["OUTPUT0"]
    assert not any(name.startswith("_openeas_python_model_auto") for name in sys.modules)


def test_auto_complete_conflicts_and_absent_hook(tmp_path: Path) -> None:
    context = write_model(
        tmp_path, "auto", AUTO_COMPLETE_MODEL, 'backend: "python"\nmax_batch_size: 16'
    )
    with pytest.raises(InvalidArgument, match="max_batch_size 16"):
        PythonBackend().auto_complete_config(context.config, context.model_dir, 1, {})
    raising = AUTO_COMPLETE_MODEL.replace(
        "auto_complete_model_config.set_max_batch_size(8)",
        "auto_complete_model_config.add_input({'name': 'INPUT1', 'data_type': 'TYPE_INT8', "
        "'dims': [4]})",
    )
    context = write_model(tmp_path, "auto2", raising, 'backend: "python"')
    with pytest.raises(InvalidArgument, match="expects datatype TYPE_FP32"):
        PythonBackend().auto_complete_config(context.config, context.model_dir, 1, {})
    context = write_model(tmp_path, "plain", ADD_SUB_MODEL, ADD_SUB_CONFIG)
    before = context.config.SerializeToString()
    PythonBackend().auto_complete_config(context.config, context.model_dir, 1, {})
    assert context.config.SerializeToString() == before


# --------------------------------------------------------------------------- pb_utils API


def test_datatype_helpers() -> None:
    assert pb_utils.triton_string_to_numpy("TYPE_FP32") is np.float32
    assert pb_utils.triton_string_to_numpy("FP16") is np.float16
    assert pb_utils.triton_string_to_numpy("TYPE_STRING") is np.object_
    assert pb_utils.triton_string_to_numpy("TYPE_BOOL") is bool
    with pytest.raises(KeyError):
        pb_utils.triton_string_to_numpy("TYPE_NOPE")
    expected = [
        np.bool_,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.float16,
        np.float32,
        np.float64,
        np.object_,
    ]
    for type_id, np_type in enumerate(expected, start=1):
        assert pb_utils.triton_to_numpy_type(type_id) is np_type
        assert pb_utils.numpy_to_triton_type(np_type) == type_id
    assert pb_utils.numpy_to_triton_type(np.bytes_) == 13
    assert pb_utils.numpy_to_triton_type(np.complex64) is None
    assert pb_utils.triton_to_numpy_type(99) is None


def test_bytes_serialization_round_trip() -> None:
    array = np.array([b"a", b"", "é", 5], dtype=np.object_)
    encoded = pb_utils.serialize_byte_tensor(array)
    assert encoded == b"\x01\x00\x00\x00a\x00\x00\x00\x00\x02\x00\x00\x00\xc3\xa9\x01\x00\x00\x005"
    decoded = pb_utils.deserialize_bytes_tensor(encoded)
    assert decoded.dtype == np.object_ and decoded.tolist() == [b"a", b"", "é".encode(), b"5"]
    assert pb_utils.serialize_byte_tensor(np.zeros(2, dtype=np.int32)) is None


def test_tensor_api_and_dlpack() -> None:
    readonly = np.frombuffer(np.arange(4, dtype=np.float32).tobytes(), dtype=np.float32)
    t = pb_utils.Tensor("T", readonly)
    assert t.name() == "T" and t.shape() == [4] and t.triton_dtype() == 11 and t.is_cpu()
    back = pb_utils.Tensor.from_dlpack("U", t.to_dlpack())
    assert back.name() == "U" and back.as_numpy().tolist() == [0, 1, 2, 3]
    same = pb_utils.Tensor.from_dlpack("V", t)  # objects with __dlpack__ work too
    assert np.shares_memory(same.as_numpy(), t.as_numpy())
    assert pb_utils.Tensor("S", np.array(["x"])).triton_dtype() == 13
    assert pb_utils.Tensor("L", [1, 2]).as_numpy().tolist() == [1, 2]
    with pytest.raises(pb_utils.TritonModelException):
        pb_utils.Tensor("C", np.zeros(1, dtype=np.complex64))
    with pytest.raises(pb_utils.TritonModelException):
        pb_utils.Tensor("B", np.array([b"x"], dtype=np.object_)).to_dlpack()


def test_request_response_error_objects() -> None:
    assert [
        int(c)
        for c in (
            pb_utils.TritonError.UNKNOWN,
            pb_utils.TritonError.INTERNAL,
            pb_utils.TritonError.NOT_FOUND,
            pb_utils.TritonError.INVALID_ARG,
            pb_utils.TritonError.UNAVAILABLE,
            pb_utils.TritonError.UNSUPPORTED,
            pb_utils.TritonError.ALREADY_EXISTS,
            pb_utils.TritonError.CANCELLED,
        )
    ] == list(range(8))
    error = pb_utils.TritonError("msg")
    assert error.message() == "msg" and error.code() == pb_utils.TritonError.INTERNAL
    response = pb_utils.InferenceResponse(output_tensors=[], error=error)
    assert response.has_error() and response.error() is error and response.parameters() == "{}"
    with pytest.raises(pb_utils.TritonModelException):
        pb_utils.InferenceResponse(output_tensors="nope")
    with pytest.raises(pb_utils.TritonModelException):
        pb_utils.InferenceResponse([], parameters={"x": [1]})
    request = pb_utils.InferenceRequest(
        model_name="m",
        inputs=[pb_utils.Tensor("I", np.zeros(1))],
        requested_output_names=["O"],
        parameters='{"k": 1}',
        request_id="id",
        timeout=10,
    )
    assert request.model_name() == "m" and request.model_version() == -1
    assert request.requested_output_names() == ["O"] and json.loads(request.parameters()) == {
        "k": 1
    }
    assert request.request_id() == "id" and request.timeout() == 10 and request.flags() == 0
    assert request.correlation_id() == 0 and not request.is_cancelled()
    with pytest.raises(pb_utils.TritonModelException):
        pb_utils.InferenceRequest(model_name="m", inputs=[np.zeros(1)], requested_output_names=[])
    with pytest.raises(pb_utils.TritonModelException):
        request.get_response_sender()
    assert pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START == 1
    assert pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END == 2
    assert pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL == 1


def test_config_lookups() -> None:
    config = {
        "input": [{"name": "A"}],
        "output": [{"name": "B"}],
        "model_transaction_policy": {"decoupled": True},
    }
    assert pb_utils.get_input_config_by_name(config, "A") == {"name": "A"}
    assert pb_utils.get_input_config_by_name(config, "B") is None
    assert pb_utils.get_output_config_by_name(config, "B") == {"name": "B"}
    assert pb_utils.get_output_config_by_name({}, "B") is None
    assert pb_utils.using_decoupled_model_transaction_policy(config)


def test_model_config_checks() -> None:
    config = pb_utils.ModelConfig(
        json.dumps(
            {"name": "m", "max_batch_size": 0, "input": [], "output": [], "sequence_batching": {}}
        )
    )
    with pytest.raises(ValueError, match="contains property other than"):
        config.add_input({"name": "A", "data_type": "TYPE_FP32", "dims": [1], "bogus": 1})
    config.add_input({"name": "A", "data_type": "TYPE_FP32", "dims": [1]})
    config.add_input({"name": "A", "data_type": "TYPE_FP32", "dims": [1], "optional": True})
    assert config.as_dict()["input"] == [
        {"name": "A", "data_type": "TYPE_FP32", "dims": [1], "optional": True}
    ]
    with pytest.raises(ValueError, match="expects datatype TYPE_FP32"):
        config.add_input({"name": "A", "data_type": "TYPE_INT8", "dims": [1]})
    with pytest.raises(ValueError, match="expects dims"):
        config.add_input({"name": "A", "data_type": "TYPE_FP32", "dims": [2]})
    with pytest.raises(ValueError, match="missing 'dims'"):
        config.add_output({"name": "B", "data_type": "TYPE_FP32"})
    with pytest.raises(ValueError, match="sequence_batching"):
        config.set_dynamic_batching()
    config.set_model_transaction_policy({"decoupled": True})
    with pytest.raises(ValueError, match="decoupled"):
        config.set_model_transaction_policy({"decoupled": False})
    config.set_max_batch_size(4)
    assert config.max_batch_size() == 4 and config.as_dict()["max_batch_size"] == 4


def test_logger(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="openeas.python_backend"):
        pb_utils.Logger.log_info("info")
        pb_utils.Logger.log_warn("warn")
        pb_utils.Logger.log_error("error")
        pb_utils.Logger.log_verbose("verbose")
        pb_utils.Logger.log("explicit", pb_utils.LogLevel.WARNING)
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert records == [
        ("openeas.python_backend", logging.INFO, "info"),
        ("openeas.python_backend", logging.WARNING, "warn"),
        ("openeas.python_backend", logging.ERROR, "error"),
        ("openeas.python_backend", logging.DEBUG, "verbose"),
        ("openeas.python_backend", logging.WARNING, "explicit"),
    ]
    assert all(r.filename == Path(__file__).name for r in caplog.records)


def test_custom_metrics() -> None:
    name = f"test_counter_{uuid.uuid4().hex}_total"
    family = pb_utils.MetricFamily(name, "a counter", pb_utils.MetricFamily.COUNTER)
    metric = family.Metric(labels={"model": "m"})
    metric.increment(2)
    assert family.Metric(labels={"model": "m"}).value() == 2
    with pytest.raises(pb_utils.TritonModelException):
        metric.set(1)
    gauge = pb_utils.MetricFamily("test_gauge", "a gauge", pb_utils.MetricFamily.GAUGE).Metric()
    gauge.set(3.5)
    assert gauge.value() == 3.5
