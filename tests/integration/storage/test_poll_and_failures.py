"""Poll-mode hot updates from the store, bad credentials, and the store going down."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import tritonclient.http as httpclient

from openeas.storage import open_store
from openeas.testing.seaweedfs import SeaweedFS, start_seaweedfs
from openeas.testing.server import ServerProcess, start_server
from tests.integration.conftest import wait_until
from tests.integration.storage.conftest import infer_add, launch_server, write_model
from tests.integration.storage.test_serving import index, upload


class Traffic:
    """A client thread that keeps sending requests and records every outcome."""

    def __init__(self, url: str, model: str) -> None:
        self.url, self.model = url, model
        self.values: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.values.append(infer_add(self.url, self.model))
            except Exception as exc:  # every failure is a test failure
                self.errors.append(repr(exc))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def test_poll_hot_update_without_failed_requests(
    tmp_path: Path, use_endpoint: SeaweedFS, bucket: str, servers: list[ServerProcess]
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "hot", 1.0)
    write_model(repo, "doomed", 9.0)
    uri = f"s3://{bucket}/models"
    upload(repo, uri)
    server = launch_server(
        servers,
        tmp_path / "logs",
        uri,
        "--model-control-mode=poll",
        "--repository-poll-secs=0.5",
    )
    traffic = Traffic(server.http_url, "hot")
    try:
        wait_until(lambda: len(traffic.values) >= 5, what="first responses")
        # A new version directory in the store replaces version 1 (latest policy).
        write_model(repo, "hot", 2.0, version=2)
        store = open_store(f"{uri}/hot/2")
        store.upload(repo / "hot" / "2" / "model.onnx", "model.onnx")
        wait_until(lambda: traffic.values and traffic.values[-1] == 2.0, timeout=60, what="v2")
        # A changed config (serve every version) reaches the server too.
        config = repo / "hot" / "config.pbtxt"
        config.write_text(config.read_text() + "version_policy: { all { } }\n")
        open_store(f"{uri}/hot").upload(config, "config.pbtxt")
        wait_until(
            lambda: _try(lambda: infer_add(server.http_url, "hot", "1")) == 1.0,
            timeout=60,
            what="version 1 served again after the config change",
        )
        # A model removed from the store is unloaded.
        models = open_store(uri)
        for info in list(models.list()):
            if info.key.startswith("doomed/"):
                models.delete(info.key)
        wait_until(lambda: "doomed" not in index(server), timeout=60, what="doomed removed")
        count = len(traffic.values)
        wait_until(lambda: len(traffic.values) > count + 5, what="traffic continues")
    finally:
        traffic.stop()
    assert traffic.errors == []
    assert set(traffic.values) == {1.0, 2.0}
    assert traffic.values[-1] == 2.0


def _try(call: object) -> object:
    try:
        return call()  # type: ignore[operator]
    except Exception:
        return None


def test_bad_credentials_exit_non_zero_naming_uri(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in seaweedfs.env(OPENEAS_STORAGE_SECRET_KEY="not-the-secret").items():
        monkeypatch.setenv(key, value)
    uri = f"s3://{bucket}/models"
    with pytest.raises(RuntimeError) as failed:
        start_server(uri, "--exit-on-error=true", log_path=tmp_path / "server.log", timeout=60)
    message = str(failed.value)
    assert "exited with 1" in message
    assert uri in message and "access denied" in message
    assert "not-the-secret" not in message  # secrets never reach the log


def test_bad_credentials_without_exit_on_error_keeps_running(
    tmp_path: Path,
    seaweedfs: SeaweedFS,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    servers: list[ServerProcess],
) -> None:
    for key, value in seaweedfs.env(OPENEAS_STORAGE_SECRET_KEY="wrong").items():
        monkeypatch.setenv(key, value)
    server = launch_server(
        servers, tmp_path / "logs", f"oss://{bucket}", "--exit-on-error=false", wait_ready=False
    )
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert client.is_server_live()
        assert client.get_model_repository_index() == []
    finally:
        client.close()
    assert f"oss://{bucket}/" in server.log() and "access denied" in server.log()


def test_unreachable_store_at_startup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from openeas.testing.server import free_port

    monkeypatch.setenv("OPENEAS_STORAGE_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("OPENEAS_STORAGE_ACCESS_KEY", "a")
    monkeypatch.setenv("OPENEAS_STORAGE_SECRET_KEY", "b")
    with pytest.raises(RuntimeError) as failed:
        start_server("oss://nowhere/models", log_path=tmp_path / "server.log", timeout=90)
    assert "oss://nowhere/models" in str(failed.value)
    assert "unreachable" in str(failed.value)


def test_store_going_down_keeps_serving_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, servers: list[ServerProcess]
) -> None:
    store_server = start_seaweedfs(tmp_path / "sw", buckets=("flaky",))
    try:
        for key, value in store_server.env().items():
            monkeypatch.setenv(key, value)
        repo = tmp_path / "repo"
        write_model(repo, "steady", 1.0)
        upload(repo, "s3://flaky/models")
        server = launch_server(
            servers,
            tmp_path / "logs",
            "s3://flaky/models",
            "--model-control-mode=poll",
            "--repository-poll-secs=0.5",
        )
        traffic = Traffic(server.http_url, "steady")
        try:
            store_server.stop()
            wait_until(
                lambda: "refreshing model repository failed" in server.log(),
                timeout=60,
                what="a failed refresh",
            )
            assert "s3://flaky/models" in server.log()
            count = len(traffic.values)
            wait_until(lambda: len(traffic.values) > count + 10, what="serving while down")
            # Back on the same port with the same data: the next retry picks up changes.
            store_server.start()
            write_model(repo, "steady", 2.0, version=2)
            store = open_store("s3://flaky/models/steady/2")
            wait_until(
                lambda: (
                    _try(lambda: store.upload(repo / "steady/2/model.onnx", "model.onnx")) is None
                    and store.stat("model.onnx") is not None
                ),
                timeout=60,
                what="upload after restart",
            )
            wait_until(lambda: traffic.values[-1] == 2.0, timeout=90, what="v2 after recovery")
        finally:
            traffic.stop()
        assert traffic.errors == []
        assert "reachable again" in server.log()
    finally:
        store_server.stop()


def test_explicit_load_syncs_the_store_first(
    tmp_path: Path, use_endpoint: SeaweedFS, bucket: str, servers: list[ServerProcess]
) -> None:
    """A model uploaded after start-up loads through the repository API (no polling)."""
    repo = tmp_path / "repo"
    write_model(repo, "first", 1.0)
    uri = f"s3://{bucket}/models"
    upload(repo, uri)
    server = launch_server(servers, tmp_path / "logs", uri, "--model-control-mode=explicit")
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert "late" not in index(server)
        write_model(repo, "late", 5.0)
        upload(repo / "late", f"{uri}/")
        client.load_model("late")
        assert infer_add(server.http_url, "late") == 5.0
        # a changed version in the store is what a reload serves
        write_model(repo, "late", 7.0)
        open_store(f"{uri}/late/1").upload(repo / "late" / "1" / "model.onnx", "model.onnx")
        client.load_model("late")
        assert infer_add(server.http_url, "late") == 7.0
    finally:
        client.close()
