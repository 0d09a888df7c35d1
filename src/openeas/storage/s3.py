"""Objects in an S3-compatible store (Amazon S3, Alibaba OSS, SeaweedFS, MinIO) via boto3."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from openeas.storage.base import PART_SUFFIX, ObjectInfo, ObjectStore, Progress
from openeas.storage.config import ACCESS_KEY_ENV, SECRET_KEY_ENV, StorageConfig
from openeas.storage.errors import (
    StorageAccessDenied,
    StorageError,
    StorageNotFound,
    StorageUnavailable,
)
from openeas.storage.uri import StorageURI

#: Objects larger than this are fetched as parallel ranged GETs of this size.
CHUNK_SIZE = 16 * 1024 * 1024
#: Uploads larger than this use multipart upload.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
_READ_SIZE = 1024 * 1024

_DENIED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
    "403",
}
_NOT_FOUND = {"NoSuchBucket", "NoSuchKey", "404", "NotFound"}


def _translate(uri: str, exc: Exception) -> StorageError:
    """The StorageError for a botocore/boto3 failure (the message never holds secrets)."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = error.get("Message") or code
        if code in _DENIED:
            return StorageAccessDenied(uri, f"access denied ({code}): {message}")
        if code in _NOT_FOUND:
            return StorageNotFound(uri, f"not found ({code}): {message}")
        if code in ("PreconditionFailed", "412"):
            return StorageError(uri, "the object changed while it was being read")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if status >= 500:
            return StorageUnavailable(uri, f"server error {status} ({code}): {message}")
        return StorageError(uri, f"{code}: {message}")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return StorageAccessDenied(
            uri,
            f"no credentials: set {ACCESS_KEY_ENV} and {SECRET_KEY_ENV} "
            "(or the standard AWS variables / config files)",
        )
    if isinstance(
        exc,
        botocore.exceptions.EndpointConnectionError
        | botocore.exceptions.ConnectionError
        | botocore.exceptions.HTTPClientError,
    ):
        return StorageUnavailable(uri, f"store unreachable: {exc}")
    if isinstance(exc, boto3.exceptions.S3UploadFailedError):
        text = str(exc)
        for code in _DENIED:
            if f"({code})" in text:
                return StorageAccessDenied(uri, text)
        if "(NoSuchBucket)" in text:
            return StorageNotFound(uri, text)
        return StorageError(uri, text)
    if isinstance(exc, botocore.exceptions.BotoCoreError | OSError):
        return StorageError(uri, str(exc))
    return StorageError(uri, f"{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _errors(uri: str) -> Iterator[None]:
    try:
        yield
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _translate(uri, exc) from exc
    except boto3.exceptions.S3UploadFailedError as exc:
        raise _translate(uri, exc) from exc


def make_client(config: StorageConfig, uri: str, max_connections: int = 32) -> Any:
    """A boto3 S3 client for ``config.endpoint`` (thread-safe; share it)."""
    if bool(config.access_key) != bool(config.secret_key):
        missing = SECRET_KEY_ENV if config.access_key else ACCESS_KEY_ENV
        raise StorageAccessDenied(uri, f"{missing} is not set (both keys are needed)")
    session = boto3.session.Session(
        aws_access_key_id=config.access_key,
        aws_secret_access_key=config.secret_key,
        region_name=config.region,
    )
    client_config = Config(
        region_name=config.region or session.region_name or "us-east-1",
        signature_version="s3v4",
        s3={"addressing_style": config.resolved_addressing_style},
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=max_connections,
        # Only checksums the API requires: OSS and older S3-compatible servers reject
        # the aws-chunked trailers newer botocore sends by default.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    with _errors(uri):
        return session.client("s3", endpoint_url=config.endpoint, config=client_config)


class S3Store(ObjectStore):
    """Objects below ``s3://bucket/key`` (or ``oss://``) at ``config.endpoint``."""

    def __init__(
        self, uri: StorageURI, config: StorageConfig, client: Any = None, threads: int = 8
    ) -> None:
        super().__init__(uri)
        self.bucket = uri.bucket
        self.config = config
        self.client = client or make_client(config, str(uri))
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._bucket_checked = not config.create_buckets
        self._bucket_lock = threading.Lock()

    def _key(self, rel: str) -> str:
        base = self.uri.key
        if not rel:
            return base
        base = base.rstrip("/")
        return f"{base}/{rel}" if base else rel

    def _chunk_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, "s3-range")
            return self._pool

    def list(self) -> Iterator[ObjectInfo]:
        base = self.uri.key.rstrip("/")
        prefix = f"{base}/" if base else ""
        with _errors(str(self.uri)):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", ()):
                    rel = item["Key"][len(prefix) :]
                    if not rel:
                        continue
                    yield ObjectInfo(
                        rel,
                        int(item["Size"]),
                        item["ETag"].strip('"'),
                        item["LastModified"].timestamp(),
                    )

    def stat(self, rel: str = "") -> ObjectInfo | None:
        key = self._key(rel)
        if not key or key.endswith("/"):
            return None
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise _translate(self.uri_of(rel), exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise _translate(self.uri_of(rel), exc) from exc
        return ObjectInfo(
            rel,
            int(head["ContentLength"]),
            head["ETag"].strip('"'),
            head["LastModified"].timestamp(),
        )

    def download(self, info: ObjectInfo, dest: Path, progress: Progress | None = None) -> None:
        uri = self.uri_of(info.key)
        part = dest.with_name(dest.name + PART_SUFFIX)
        with _errors(uri):
            if info.size <= CHUNK_SIZE:
                self._download_whole(info, part, progress)
            else:
                self._download_ranges(info, part, progress)
        os.replace(part, dest)

    def _get(self, info: ObjectInfo, range_header: str | None = None) -> Any:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(info.key)}
        # If-Match: never stitch together bytes of two versions of an object.
        kwargs["IfMatch"] = f'"{info.etag}"'
        if range_header:
            kwargs["Range"] = range_header
        return self.client.get_object(**kwargs)["Body"]

    def _download_whole(self, info: ObjectInfo, part: Path, progress: Progress | None) -> None:
        body = self._get(info)
        # A single-part upload's ETag is the MD5 of the content: check it when it is one.
        md5 = hashlib.md5(usedforsecurity=False) if _is_md5(info.etag) else None
        size = 0
        with open(part, "wb") as out:
            for piece in body.iter_chunks(_READ_SIZE):
                out.write(piece)
                size += len(piece)
                if md5:
                    md5.update(piece)
                if progress:
                    progress(len(piece))
        if size != info.size or (md5 and md5.hexdigest() != info.etag.lower()):
            part.unlink(missing_ok=True)
            raise StorageError(
                self.uri_of(info.key), "downloaded bytes do not match the listed size/ETag"
            )

    def _download_ranges(self, info: ObjectInfo, part: Path, progress: Progress | None) -> None:
        """Parallel ranged GETs into a sparse file; finished ranges are recorded in a
        sidecar file so that a crashed download resumes where it stopped."""
        sidecar = part.with_name(part.name + ".ranges")
        header = f"{info.etag} {info.size}"
        done: set[int] = set()
        if part.exists() and sidecar.exists():
            lines = sidecar.read_text().splitlines()
            if lines and lines[0] == header:
                done = {int(x) for x in lines[1:] if x.isdigit()}
        if not done:
            sidecar.write_text(header + "\n")
        chunks = [i for i in range((info.size + CHUNK_SIZE - 1) // CHUNK_SIZE) if i not in done]
        if progress and done:
            progress(sum(min(CHUNK_SIZE, info.size - i * CHUNK_SIZE) for i in done))
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        record_lock = threading.Lock()
        try:
            os.ftruncate(fd, info.size)

            def fetch(index: int) -> None:
                start = index * CHUNK_SIZE
                end = min(start + CHUNK_SIZE, info.size) - 1
                body = self._get(info, f"bytes={start}-{end}")
                offset = start
                for piece in body.iter_chunks(_READ_SIZE):
                    os.pwrite(fd, piece, offset)
                    offset += len(piece)
                    if progress:
                        progress(len(piece))
                if offset != end + 1:
                    raise StorageError(self.uri_of(info.key), "short ranged read")
                with record_lock, open(sidecar, "a") as f:
                    f.write(f"{index}\n")

            futures = [self._chunk_pool().submit(fetch, i) for i in chunks]
            errors = [f.exception() for f in futures]
            first = next((e for e in errors if e is not None), None)
            if first is not None:
                raise first
            os.fsync(fd)
        finally:
            os.close(fd)
        sidecar.unlink(missing_ok=True)

    def _ensure_bucket(self) -> None:
        """Create the bucket on the first upload where the store creates buckets."""
        with self._bucket_lock:
            if self._bucket_checked:
                return
            with _errors(str(self.uri)):
                try:
                    self.client.head_bucket(Bucket=self.bucket)
                except botocore.exceptions.ClientError as exc:
                    if str(exc.response.get("Error", {}).get("Code")) not in _NOT_FOUND:
                        raise
                    with contextlib.suppress(self.client.exceptions.BucketAlreadyOwnedByYou):
                        self.client.create_bucket(Bucket=self.bucket)
            self._bucket_checked = True

    def upload(self, src: Path, rel: str, progress: Progress | None = None) -> None:
        self._ensure_bucket()
        transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=CHUNK_SIZE,
            max_concurrency=self._threads,
        )
        with _errors(self.uri_of(rel)):
            self.client.upload_file(
                str(src), self.bucket, self._key(rel), Config=transfer, Callback=progress
            )

    def delete(self, rel: str) -> None:
        with _errors(self.uri_of(rel)):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(rel))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _is_md5(etag: str) -> bool:
    return len(etag) == 32 and all(c in "0123456789abcdefABCDEF" for c in etag)
