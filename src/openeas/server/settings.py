"""Runtime-adjustable settings: logging (``/v2/logging``) and trace (``/v2/trace/setting``)."""

from __future__ import annotations

import logging
from typing import Any

from openeas.protocol.errors import InvalidArgument

_LOG_BOOL_KEYS = ("log_info", "log_warning", "log_error")


class LogSettings:
    """Triton's log settings, applied to Python's logging as they change."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values: dict[str, Any] = {
            "log_file": "",
            "log_info": True,
            "log_warning": True,
            "log_error": True,
            "log_verbose_level": 0,
            "log_format": "default",
        }
        self._values.update(values)
        self.apply()

    def get(self) -> dict[str, Any]:
        return dict(self._values)

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        for key, value in changes.items():
            if key not in self._values:
                raise InvalidArgument(f"log setting '{key}' is unknown")
            if key == "log_file":
                if value not in ("", self._values["log_file"]):
                    raise InvalidArgument(
                        "log_file can only be set with --log-file when the server starts"
                    )
            elif key in _LOG_BOOL_KEYS:
                if not isinstance(value, bool):
                    raise InvalidArgument(f"expect boolean for log setting '{key}'")
                self._values[key] = value
            elif key == "log_verbose_level":
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise InvalidArgument(
                        "expect a non-negative integer for log setting 'log_verbose_level'"
                    )
                self._values[key] = value
            elif key == "log_format":
                if value not in ("default", "ISO8601"):
                    raise InvalidArgument(
                        f"invalid log format '{value}', expect 'default' or 'ISO8601'"
                    )
                self._values[key] = value
        self.apply()
        return self.get()

    def apply(self) -> None:
        v = self._values
        if v["log_verbose_level"] > 0:
            level = logging.DEBUG
        elif v["log_info"]:
            level = logging.INFO
        elif v["log_warning"]:
            level = logging.WARNING
        elif v["log_error"]:
            level = logging.ERROR
        else:
            level = logging.CRITICAL + 1
        logging.getLogger("openeas").setLevel(level)


_TRACE_DEFAULTS: dict[str, Any] = {
    "trace_level": ["OFF"],
    "trace_rate": "1000",
    "trace_count": "-1",
    "log_frequency": "0",
    "trace_file": "",
    "trace_mode": "triton",
}
_TRACE_LEVELS = {"OFF", "TIMESTAMPS", "TENSORS"}


class TraceSettings:
    """Global and per-model trace settings, as the trace extension reports them."""

    def __init__(self) -> None:
        self._global = dict(_TRACE_DEFAULTS)
        self._models: dict[str, dict[str, Any]] = {}

    def get(self, model: str | None = None) -> dict[str, Any]:
        settings = dict(self._global)
        if model:
            settings.update(self._models.get(model, {}))
        return settings

    def update(self, changes: dict[str, Any], model: str | None = None) -> dict[str, Any]:
        target = self._models.setdefault(model, {}) if model else self._global
        for key, value in changes.items():
            if key not in _TRACE_DEFAULTS:
                raise InvalidArgument(f"trace setting '{key}' is unknown")
            if value is None:  # null clears a model-level override
                target.pop(key, None)
                if not model:
                    target[key] = _TRACE_DEFAULTS[key]
                continue
            if key == "trace_level":
                levels = value if isinstance(value, list) else [value]
                if not levels or any(level not in _TRACE_LEVELS for level in levels):
                    raise InvalidArgument(
                        f"invalid trace_level {value!r}, expect a list of OFF, TIMESTAMPS, TENSORS"
                    )
                target[key] = levels
            elif key in ("trace_rate", "trace_count", "log_frequency"):
                try:
                    number = int(value)
                except (TypeError, ValueError):
                    raise InvalidArgument(f"expect an integer for trace setting '{key}'") from None
                if key != "trace_count" and number < 0:
                    raise InvalidArgument(f"trace setting '{key}' must be >= 0")
                target[key] = str(number)
            else:
                target[key] = str(value)
        return self.get(model)
