"""The Ray runtime's embedded S3 server: its files, who uses it, and when it runs."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from openeas.cli.platform import _embedded_storage
from openeas.storage import embedded_s3
from openeas.storage.config import ENDPOINT_ENV, StorageConfig


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OPENEAS_HOME", str(tmp_path))
    for name in ("ENDPOINT", "ACCESS_KEY", "SECRET_KEY"):
        monkeypatch.delenv(f"OPENEAS_STORAGE_{name}", raising=False)
    return tmp_path


def test_keys_are_generated_once_and_kept_private(home: Path) -> None:
    first = embedded_s3.EmbeddedS3.prepare(home, "127.0.0.1", 8333)
    again = embedded_s3.EmbeddedS3.prepare(home, "0.0.0.0", 9000)
    assert (again.access_key, again.secret_key) == (first.access_key, first.secret_key)
    assert len(first.secret_key) >= 30 and first.secret_key not in repr(first)
    for name in (embedded_s3.STATE_FILE, embedded_s3.IDENTITIES_FILE):
        assert stat.S_IMODE((home / "s3" / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "s3").stat().st_mode) == 0o700


def test_clients_on_this_machine_use_it_when_no_endpoint_is_set(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert StorageConfig.from_env().embedded  # nothing yet: the directory store
    server = embedded_s3.EmbeddedS3.prepare(home, "0.0.0.0", 9000)
    config = StorageConfig.from_env()
    assert config.endpoint == "http://127.0.0.1:9000"  # a wildcard bind, reached locally
    assert (config.access_key, config.secret_key) == (server.access_key, server.secret_key)
    assert config.create_buckets
    monkeypatch.setenv(ENDPOINT_ENV, "http://elsewhere:9000")  # a configured one wins
    assert StorageConfig.from_env().endpoint == "http://elsewhere:9000"
    assert not StorageConfig.from_env().create_buckets
    embedded_s3.forget(home)
    monkeypatch.delenv(ENDPOINT_ENV)
    assert StorageConfig.from_env().embedded


def test_instances_reach_it_at_the_bind_address_or_the_node_s(home: Path) -> None:
    assert embedded_s3.instance_env(home, "10.0.0.5") == {}
    embedded_s3.EmbeddedS3.prepare(home, "0.0.0.0", 9000)
    env = embedded_s3.instance_env(home, "10.0.0.5")
    assert env[ENDPOINT_ENV] == "http://10.0.0.5:9000"
    assert set(env) == {ENDPOINT_ENV, "OPENEAS_STORAGE_ACCESS_KEY", "OPENEAS_STORAGE_SECRET_KEY"}
    embedded_s3.EmbeddedS3.prepare(home, "192.168.1.2", 9000)
    assert embedded_s3.instance_env(home, "10.0.0.5")[ENDPOINT_ENV] == "http://192.168.1.2:9000"


def test_only_the_ray_runtime_without_an_endpoint_runs_it(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    components = _embedded_storage("ray", "0.0.0.0", 8333)
    assert set(components) == {"object-store", "s3"}
    mini, s3 = components["object-store"], components["s3"]
    assert "-ip.bind=127.0.0.1" in mini  # the filer takes no credentials: never exposed
    assert "-ip.bind=0.0.0.0" in s3 and "-port=8333" in s3  # where --host says
    secret = embedded_s3.load(home).secret_key  # type: ignore[union-attr]
    assert secret and not any(secret in arg for arg in mini + s3)  # not in `ps` either
    assert _embedded_storage("local", "127.0.0.1", 8333) == {}
    assert embedded_s3.load(home) is None  # the local runtime: the directory store again
    monkeypatch.setenv(ENDPOINT_ENV, "http://elsewhere:9000")
    assert _embedded_storage("ray", "127.0.0.1", 8333) == {}
