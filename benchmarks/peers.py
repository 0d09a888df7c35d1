"""The servers a benchmark compares: OpenEAS, real Triton 2.51 and MLServer 1.7.

Each peer serves the same model repository and exposes Triton's HTTP (and gRPC) API, so
one load generator (perf_analyzer) drives them all.  Peers live in their own virtual
environments under ``benchmarks/.peers`` (made by ``benchmarks/setup_peers.sh``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import json_format
from tritonclient.grpc import service_pb2

from openeas.testing.server import free_port

HERE = Path(__file__).resolve().parent
PEERS_DIR = Path(os.environ.get("OPENEAS_PEERS_DIR", HERE / ".peers"))


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"server not ready after {timeout}s:\n{log.read_text()[-3000:]}")


@dataclass
class Peer(ABC):
    """A server under test; ``start`` returns once it answers ready."""

    name: str
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="openeas-bench-")))
    cwd: Path | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @abstractmethod
    def command(self, repository: Path) -> tuple[list[str], dict[str, str]]:
        """The command line and environment that serve ``repository``."""

    def available(self) -> str:
        """"" when the peer can run here, else why not."""
        return ""

    def start(self, repository: Path) -> None:
        args, env = self.command(repository)
        log = self.workdir / "server.log"
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.cwd or self.workdir
            )
        _wait_ready(f"http://{self.http_url}/v2/health/ready", self.process, log)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


class OpenEAS(Peer):
    """This checkout's ``openeas-server``; ``source`` (a ``src/`` directory of another
    checkout) serves that version instead, for before/after comparisons in one run."""

    def __init__(self, name: str = "openeas", source: Path | None = None) -> None:
        super().__init__(name)
        self.source = source

    def available(self) -> str:
        if self.source is not None and not (self.source / "openeas").is_dir():
            return f"{self.source} holds no openeas package (set OPENEAS_BASE_SRC)"
        return ""

    def command(self, repository: Path) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        if self.source is not None:
            env["PYTHONPATH"] = str(self.source)
        return [
            sys.executable, "-m", "openeas.server.cli",
            f"--model-repository={repository}",
            "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
            f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}", "--log-info=false",
        ], env  # fmt: skip


class Triton(Peer):
    """The real C++ Triton 2.51 that ships inside nvidia-pytriton 0.7.0 (Python backend)."""

    venv = PEERS_DIR / "triton"

    def __init__(self) -> None:
        super().__init__("triton-2.51")

    def _package(self) -> Path:
        return self.venv / "lib" / "python3.11" / "site-packages"

    def available(self) -> str:
        if not (self._package() / "pytriton" / "tritonserver" / "bin" / "tritonserver").exists():
            return f"nvidia-pytriton not installed in {self.venv} (run benchmarks/setup_peers.sh)"
        return ""

    def command(self, repository: Path) -> tuple[list[str], dict[str, str]]:
        site = self._package()
        bundle = site / "pytriton" / "tritonserver"
        backends = self.workdir / "backends"
        shutil.copytree(bundle / "backends", backends)
        shutil.copy(
            bundle / "python_backend_stubs" / "3.11" / "triton_python_backend_stub",
            backends / "python" / "triton_python_backend_stub",
        )
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = f"{libdir}:{site / 'nvidia_pytriton.libs'}"
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        return [
            str(bundle / "bin" / "tritonserver"),
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
            f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}", "--allow-gpu-metrics=false",
            "--log-info=false",
        ], env  # fmt: skip


_MLSERVER_RUNTIME = '''
"""Identity model for MLServer."""
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class IdentityRuntime(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        data = NumpyCodec.decode_input(payload.inputs[0])
        output = NumpyCodec.encode_output("OUTPUT0", data)
        # perf_analyzer reads any output "parameters" as binary-extension parameters.
        output.parameters = None
        return InferenceResponse(model_name=self.name, outputs=[output])
'''

# MLServer has neither GET /v2/models/<m>/config nor the gRPC ModelConfig RPC, which
# perf_analyzer asks for first; this launcher adds both to MLServer's servers, then runs
# `mlserver start`.  The gRPC answer is a serialized ModelConfigResponse (argv[3], hex),
# built here with tritonclient's protos, which the MLServer environment lacks.
_MLSERVER_LAUNCHER = '''
import json, sys


def run() -> None:
    import grpc
    import mlserver.grpc.server as grpc_server
    import mlserver.rest.server as rest_server
    from mlserver.cli.main import main

    config = json.loads(open(sys.argv[1]).read())
    config_response = bytes.fromhex(sys.argv[3])
    create_app = rest_server.create_app
    create_server = grpc_server.GRPCServer._create_server

    def create_server_with_config(self):
        server = create_server(self)

        async def model_config(request, context):
            return config_response

        handler = grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService",
            {"ModelConfig": grpc.unary_unary_rpc_method_handler(model_config)},
        )
        server.add_generic_rpc_handlers((handler,))
        return server

    grpc_server.GRPCServer._create_server = create_server_with_config

    def create_app_with_config(*args, **kwargs):
        app = create_app(*args, **kwargs)

        @app.get("/v2/models/{model_name}/config")
        async def model_config(model_name: str) -> dict:
            return config

        return app

    rest_server.create_app = create_app_with_config
    sys.argv = ["mlserver", "start", sys.argv[2]]
    main()


if __name__ == "__main__":  # MLServer's worker processes re-import this file
    run()
'''


class MLServer(Peer):
    """MLServer 1.7 serving an identity runtime (JSON tensors over HTTP; gRPC too)."""

    venv = PEERS_DIR / "mlserver"

    def __init__(self, parallel_workers: int | None = None) -> None:
        suffix = "" if parallel_workers is None else f"-pw{parallel_workers}"
        super().__init__("mlserver-1.7" + suffix)
        self.parallel_workers = parallel_workers

    def available(self) -> str:
        if not (self.venv / "bin" / "mlserver").exists():
            return f"mlserver not installed in {self.venv} (run benchmarks/setup_peers.sh)"
        return ""

    def command(self, repository: Path) -> tuple[list[str], dict[str, str]]:
        root = self.workdir / "mlserver"
        model_dir = root / "identity"
        model_dir.mkdir(parents=True)
        (model_dir / "identity_runtime.py").write_text(_MLSERVER_RUNTIME)
        config = {
            "name": "identity", "platform": "", "backend": "python", "max_batch_size": 64,
            "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [16]}],
            "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [16]}],
        }  # fmt: skip
        (model_dir / "config.json").write_text(json.dumps(config))
        response = service_pb2.ModelConfigResponse()
        json_format.ParseDict({"config": config}, response)
        (model_dir / "model-settings.json").write_text(json.dumps({
            "name": "identity",
            "implementation": "identity_runtime.IdentityRuntime",
            "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]}],
            "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 16]}],
        }))  # fmt: skip
        settings = {
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            "metrics_port": self.metrics_port,
            "host": "127.0.0.1",
            "debug": False,
        }
        if self.parallel_workers is not None:
            settings["parallel_workers"] = self.parallel_workers
        (root / "settings.json").write_text(json.dumps(settings))
        launcher = self.workdir / "launch_mlserver.py"
        launcher.write_text(_MLSERVER_LAUNCHER)
        env = dict(os.environ)
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        python = str(self.venv / "bin" / "python")
        args = [str(launcher), str(model_dir / "config.json"), str(root)]
        return [python, *args, response.SerializeToString().hex()], env
