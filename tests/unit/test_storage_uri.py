"""Storage URIs, configuration and error translation (no servers needed)."""

from __future__ import annotations

from pathlib import Path

import botocore.exceptions
import pytest

from openeas.storage import (
    InvalidStorageURI,
    StorageAccessDenied,
    StorageConfig,
    StorageNotFound,
    StorageUnavailable,
    open_store,
    parse_uri,
)
from openeas.storage.local import FileStore
from openeas.storage.s3 import _translate
from openeas.storage.uri import check_relative_key


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENEAS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OPENEAS_STORAGE_ENDPOINT", raising=False)


@pytest.mark.parametrize(
    ("text", "scheme", "bucket", "key"),
    [
        ("oss://triton-model-repo/models", "oss", "triton-model-repo", "models"),
        ("oss://bucket", "oss", "bucket", ""),
        ("oss://bucket/", "oss", "bucket", ""),
        ("s3://my.bucket/a/b/c/d/", "s3", "my.bucket", "a/b/c/d/"),
        ("S3://bucket//a//b", "s3", "bucket", "a/b"),
    ],
)
def test_remote_uris(text: str, scheme: str, bucket: str, key: str) -> None:
    uri = parse_uri(text)
    assert (uri.scheme, uri.bucket, uri.key, uri.remote) == (scheme, bucket, key, True)


def test_local_uris(tmp_path: Path) -> None:
    assert parse_uri(str(tmp_path)).local_path == tmp_path
    assert parse_uri(f"file://{tmp_path}").local_path == tmp_path
    assert not parse_uri("relative/dir").remote


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("gs://bucket/x", "unsupported scheme 'gs://'"),
        ("oss://Bad_Bucket/x", "invalid bucket name 'Bad_Bucket'"),
        ("oss://ab", "invalid bucket name 'ab'"),
        ("oss:///models", "invalid bucket name ''"),
        ("s3://bucket/a/../b", "'..'"),
        ("file://", "needs a path"),
        ("", "empty"),
    ],
)
def test_invalid_uris_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(InvalidStorageURI) as exc:
        parse_uri(text)
    assert fragment in str(exc.value)


def test_child_and_str() -> None:
    base = parse_uri("oss://bucket/models/")
    assert str(base.child("m/1/model.onnx")) == "oss://bucket/models/m/1/model.onnx"
    assert str(parse_uri("oss://bucket").child("m")) == "oss://bucket/m"


@pytest.mark.parametrize("rel", ["../x", "a//b", "/abs", "a/./b", ""])
def test_keys_that_cannot_be_files_are_rejected(rel: str) -> None:
    with pytest.raises(InvalidStorageURI):
        check_relative_key("oss://b/", rel)


def test_config_from_env_hides_the_secret() -> None:
    config = StorageConfig.from_env(
        {
            "OPENEAS_STORAGE_ENDPOINT": "https://oss-cn-hangzhou.aliyuncs.com",
            "OPENEAS_STORAGE_ACCESS_KEY": "AKID",
            "OPENEAS_STORAGE_SECRET_KEY": "very-secret",
            "OPENEAS_STORAGE_REGION": "oss-cn-hangzhou",
        }
    )
    assert not config.embedded
    assert "very-secret" not in repr(config) and "very-secret" not in config.location()
    assert config.resolved_addressing_style == "virtual"  # OSS refuses path style
    assert StorageConfig(endpoint="http://127.0.0.1:8333").resolved_addressing_style == "path"
    assert StorageConfig.from_env({}).embedded


def test_embedded_store_lives_under_openeas_home(tmp_path: Path) -> None:
    store = open_store("oss://bucket-one/models/x")
    assert isinstance(store, FileStore)
    assert store.root == tmp_path / "home" / "buckets" / "bucket-one" / "models" / "x"
    with pytest.raises(StorageNotFound) as exc:
        list(store.list())
    assert "oss://bucket-one/models/x" in str(exc.value)


def _client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "msg"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "ListObjectsV2",
    )


def test_error_translation() -> None:
    uri = "s3://b/p"
    assert isinstance(
        _translate(uri, _client_error("SignatureDoesNotMatch", 403)), StorageAccessDenied
    )
    assert isinstance(
        _translate(uri, _client_error("InvalidAccessKeyId", 403)), StorageAccessDenied
    )
    assert isinstance(_translate(uri, _client_error("NoSuchBucket", 404)), StorageNotFound)
    assert isinstance(_translate(uri, _client_error("InternalError", 500)), StorageUnavailable)
    down = _translate(uri, botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"))
    assert isinstance(down, StorageUnavailable) and str(down).startswith("s3://b/p: ")
    creds = _translate(uri, botocore.exceptions.NoCredentialsError())
    assert isinstance(creds, StorageAccessDenied) and "OPENEAS_STORAGE_ACCESS_KEY" in str(creds)
