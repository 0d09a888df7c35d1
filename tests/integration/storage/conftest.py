"""Fixtures for the storage tests: a real SeaweedFS S3 server and an isolated OPENEAS_HOME.

Every test runs with ``OPENEAS_HOME`` in its own temp directory and without any
``OPENEAS_STORAGE_*`` / ``AWS_*`` variables from the caller, so the embedded store is the
default and nothing touches the real ``~/.openeas``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from openeas.testing.seaweedfs import SeaweedFS, start_seaweedfs
from openeas.testing.server import ServerProcess, start_server

MODEL_CONFIG = """name: "{name}"
backend: "onnxruntime"
max_batch_size: 0
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
"""


@pytest.fixture(autouse=True)
def openeas_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "openeas-home"
    monkeypatch.setenv("OPENEAS_HOME", str(home))
    for name in list(os.environ):
        if name.startswith(("OPENEAS_STORAGE_", "AWS_")):
            monkeypatch.delenv(name)
    return home


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS for the module (tests use their own buckets)."""
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture
def bucket(seaweedfs: SeaweedFS) -> str:
    """A fresh bucket in the module's SeaweedFS."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    seaweedfs.create_bucket(name)
    return name


@pytest.fixture
def use_endpoint(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> SeaweedFS:
    """Point this process (and the servers it starts) at the module's SeaweedFS."""
    for key, value in seaweedfs.env().items():
        monkeypatch.setenv(key, value)
    return seaweedfs


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Servers started by the test (``launch_server``); all stopped at the end."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


def launch_server(
    servers: list[ServerProcess], log_dir: Path, repository: str, *args: str, **kwargs: object
) -> ServerProcess:
    """Start ``openeas-server`` (inherits this process's environment) and remember it."""
    log_dir.mkdir(parents=True, exist_ok=True)
    server = start_server(
        repository,
        *args,
        log_path=log_dir / f"server-{len(servers)}.log",
        **kwargs,  # type: ignore[arg-type]
    )
    servers.append(server)
    return server


def write_model(repo: Path, name: str, value: float, version: int = 1) -> Path:
    """An ONNX model ``OUTPUT0 = INPUT0 + value`` as ``repo/name/<version>/model.onnx``."""
    from tests.integration.conftest import write_add_constant_model

    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(MODEL_CONFIG.format(name=name))
    write_add_constant_model(model_dir / str(version), value)
    return model_dir


def infer_add(url: str, model: str, version: str = "") -> float:
    """``OUTPUT0 - INPUT0`` of one request: the constant the served version adds."""
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        data = np.array([1.0, 2.0], dtype=np.float32)
        inp = httpclient.InferInput("INPUT0", [2], "FP32")
        inp.set_data_from_numpy(data)
        result = client.infer(model, [inp], model_version=version)
        return float((result.as_numpy("OUTPUT0") - data)[0])
    finally:
        client.close()
