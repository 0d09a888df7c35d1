"""Errors of the service platform, each with the HTTP status the REST API answers with.

The API turns a :class:`PlatformError` into ``{"code": ..., "message": ..., "errors": [...]}``
and the client turns that body back into the same type, so the CLI prints one message
whichever side found the problem.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One problem in a service spec: the dotted field path and why it is wrong."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


class PlatformError(Exception):
    """Base of the platform's errors."""

    status: int = 400
    code: str = "BadRequest"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def to_json(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message}


class SpecError(PlatformError):
    """The service spec is invalid; ``errors`` lists every problem found."""

    code = "InvalidSpec"

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("invalid service spec: " + "; ".join(str(e) for e in errors))

    def to_json(self) -> dict[str, object]:
        return {
            **super().to_json(),
            "errors": [{"field": e.field, "reason": e.reason} for e in self.errors],
        }


class NotFoundError(PlatformError):
    status = 404
    code = "NotFound"


class ConflictError(PlatformError):
    """The request clashes with the current state (e.g. the service already exists)."""

    status = 409
    code = "Conflict"


class AuthError(PlatformError):
    status = 401
    code = "Unauthorized"


def error_from_json(status: int, body: dict[str, object]) -> PlatformError:
    """Rebuild the error a platform API answered with (the client's side of ``to_json``)."""
    code = str(body.get("code", ""))
    message = str(body.get("message") or body.get("detail") or f"HTTP {status}")
    if code == SpecError.code and isinstance(body.get("errors"), list):
        errors = [
            FieldError(str(e.get("field", "")), str(e.get("reason", "")))
            for e in body["errors"]  # type: ignore[union-attr]
            if isinstance(e, dict)
        ]
        return SpecError(errors)
    for kind in (NotFoundError, ConflictError, AuthError):
        if code == kind.code or status == kind.status:
            return kind(message)
    error = PlatformError(message)
    error.status = status
    return error
