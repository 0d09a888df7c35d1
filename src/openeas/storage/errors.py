"""Errors of the storage layer, each naming the URI it concerns and the cause."""

from __future__ import annotations


class StorageError(Exception):
    """Base of every storage failure: ``<uri>: <cause>``."""

    def __init__(self, uri: str, cause: str) -> None:
        super().__init__(f"{uri}: {cause}")
        self.uri = uri
        self.cause = cause


class InvalidStorageURI(StorageError):
    """The text is not a usable storage URI (bad scheme, bucket name or key)."""


class StorageNotFound(StorageError):
    """The bucket or object does not exist."""


class StorageAccessDenied(StorageError):
    """The store rejected the credentials, or none were found."""


class StorageUnavailable(StorageError):
    """The store could not be reached (connection refused, timeout, server error)."""
