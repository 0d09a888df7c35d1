"""Typed reads of one JSON object that collect every problem as a :class:`FieldError`.

The autoscaler and cronscaler documents are small and come in two spellings (EAS's
current camelCase form and its older capitalised one), so they are read field by field
rather than through a pydantic model: each problem is recorded with its dotted path
(``autoscaler.scaleStrategies[1].threshold``) and reading goes on, so the user sees
every problem at once, as :func:`openeas.platform.spec.validate_spec` reports them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from openeas.platform.errors import FieldError

#: Marks a field that has no default: a missing one is an error.
REQUIRED: Any = object()


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


class FieldReader:
    """Reads the fields of one JSON object at ``path``; problems go to ``errors``.

    Every getter returns the value, the default when the field is absent, or ``None``
    when the field is wrong (the problem is then recorded): callers build their result
    only when ``errors`` stayed empty.
    """

    def __init__(self, doc: Mapping[str, Any], path: str, errors: list[FieldError]) -> None:
        self.doc = doc
        self.path = path
        self.errors = errors

    def at(self, key: str | int) -> str:
        """The dotted path of ``key`` under this object."""
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str | int | None, reason: str) -> None:
        self.errors.append(FieldError(self.path if key is None else self.at(key), reason))

    def _absent(self, key: str, default: Any) -> bool:
        """Whether ``key`` is missing (or null); a missing required field is recorded."""
        if self.doc.get(key) is not None:
            return False
        if default is REQUIRED:
            self.fail(key, "required field is missing")
        return True

    @staticmethod
    def _default(default: Any) -> Any:
        return None if default is REQUIRED else default

    def integer(self, key: str, default: Any = REQUIRED, *, lo: int, hi: int) -> int | None:
        """An integer in [lo, hi] (JSON booleans and fractions are refused)."""
        if self._absent(key, default):
            return self._default(default)
        value = self.doc[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"must be an integer, got {json_type(value)}")
            return None
        if not lo <= value <= hi:
            self.fail(key, f"must be between {lo} and {hi}, got {value}")
            return None
        return value

    def number(self, key: str, default: Any = REQUIRED, *, hi: float) -> float | None:
        """A number in (0, hi]."""
        if self._absent(key, default):
            return self._default(default)
        value = self.doc[key]
        return positive_number(self, key, value, hi=hi)

    def string(self, key: str, default: Any = REQUIRED) -> str | None:
        """A non-empty string."""
        if self._absent(key, default):
            return self._default(default)
        value = self.doc[key]
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"must be a non-empty string, got {json_type(value)}")
            return None
        return value.strip()

    def obj(self, key: str) -> FieldReader | None:
        """A nested object (an empty one when absent)."""
        value = {} if self._absent(key, {}) else self.doc[key]
        if not isinstance(value, dict):
            self.fail(key, f"must be an object, got {json_type(value)}")
            return None
        return FieldReader(value, self.at(key), self.errors)

    def array(self, key: str, default: Any = REQUIRED) -> list[Any] | None:
        if self._absent(key, default):
            return self._default(default)
        value = self.doc[key]
        if not isinstance(value, list):
            self.fail(key, f"must be an array, got {json_type(value)}")
            return None
        return value

    def reject_unknown(self, allowed: Iterable[str]) -> None:
        known = set(allowed)
        for key in self.doc:
            if key not in known:
                self.fail(key, f"unknown field; expected one of {', '.join(sorted(known))}")


def positive_number(reader: FieldReader, key: str | int, value: Any, *, hi: float) -> float | None:
    """``value`` as a float in (0, hi], or ``None`` with the problem recorded at ``key``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        reader.fail(key, f"must be a number, got {json_type(value)}")
        return None
    if not 0 < value <= hi:
        reader.fail(key, f"must be greater than 0 and at most {hi:.15g}, got {value:.15g}")
        return None
    return float(value)


def object_at(doc: Any, path: str, errors: list[FieldError]) -> FieldReader | None:
    """A reader for the top-level document, or ``None`` (recorded) when it is no object."""
    if not isinstance(doc, dict):
        errors.append(FieldError(path, f"must be a JSON object, got {json_type(doc)}"))
        return None
    return FieldReader(doc, path, errors)
