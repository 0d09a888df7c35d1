"""EAS's ``autoscaler`` document: parsed, validated and normalised into one frozen value.

Two spellings are accepted, as EAS accepts them::

    {"min": 1, "max": 8,
     "scaleStrategies": [{"metricName": "qps", "threshold": 100},
                         {"metricName": "cpu", "threshold": 80}],
     "behavior": {"scaleUp":   {"stabilizationWindowSeconds": 0},
                  "scaleDown": {"stabilizationWindowSeconds": 300},
                  "onZero":    {"scaleDownGracePeriodSeconds": 600,
                                "scaleUpActivationReplicas": 1}}}

    {"Min": 1, "Max": 8, "Strategies": {"qps": 100, "cpu": 80}}      # the older form

and ``eascmd autoscale -Dmin=1 -Dmax=8 -Dstrategies.qps=100`` assignments edit the same
value (:func:`apply_overrides`).  Every problem is reported as a
:class:`~openeas.platform.errors.FieldError` naming the field the user wrote.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from openeas.platform.elastic.fields import FieldReader, object_at, positive_number
from openeas.platform.errors import FieldError, SpecError


class MetricName(StrEnum):
    """The metrics a scale strategy may name: the ones OpenEAS measures."""

    #: requests per second per instance, measured by the gateway
    QPS = "qps"
    #: CPU use of an instance in percent of its cores (``metadata.cpu``)
    CPU = "cpu"


#: Highest accepted threshold per metric (cpu is a percentage).
MAX_THRESHOLD = {MetricName.QPS: 1_000_000.0, MetricName.CPU: 100.0}
#: The same bound as ``metadata.instance``.
MAX_INSTANCES = 100
#: Kubernetes HPA's bound on a stabilization window (one hour).
MAX_WINDOW_SECONDS = 3600
MAX_GRACE_SECONDS = 86_400

DEFAULT_SCALE_UP_WINDOW = 0
DEFAULT_SCALE_DOWN_WINDOW = 300
DEFAULT_GRACE_PERIOD = 600
DEFAULT_ACTIVATION_REPLICAS = 1

#: Keys of the two spellings; a document mixing them is refused.
_CURRENT_KEYS = ("min", "max", "scaleStrategies", "behavior")
_LEGACY_KEYS = ("Min", "Max", "Strategies")
_WINDOW = "stabilizationWindowSeconds"
_GRACE = "scaleDownGracePeriodSeconds"
_ACTIVATION = "scaleUpActivationReplicas"
#: ``-D`` keys under ``behavior`` (dotted paths into the current form).
_BEHAVIOR_KEYS = (
    f"behavior.scaleUp.{_WINDOW}",
    f"behavior.scaleDown.{_WINDOW}",
    f"behavior.onZero.{_GRACE}",
    f"behavior.onZero.{_ACTIVATION}",
)


@dataclass(frozen=True)
class ScaleStrategy:
    """Scale so that ``metric`` per instance stays near ``threshold``."""

    metric: MetricName
    threshold: float


@dataclass(frozen=True)
class Behavior:
    """``behavior``: the stabilization windows and scale-to-zero settings (seconds)."""

    scale_up_window: int = DEFAULT_SCALE_UP_WINDOW
    scale_down_window: int = DEFAULT_SCALE_DOWN_WINDOW
    #: ``onZero.scaleDownGracePeriodSeconds``: traffic-free time before going to zero
    scale_down_grace: int = DEFAULT_GRACE_PERIOD
    #: ``onZero.scaleUpActivationReplicas``: instances started by a request at zero
    activation_replicas: int = DEFAULT_ACTIVATION_REPLICAS


@dataclass(frozen=True)
class AutoscalerSpec:
    """A validated autoscaler: ``0 <= min <= max``, one strategy per metric at most."""

    min: int
    max: int
    strategies: tuple[ScaleStrategy, ...]
    behavior: Behavior = field(default_factory=Behavior)

    def to_json(self) -> dict[str, Any]:
        """The current EAS form (what ``desc`` shows and overrides start from)."""
        b = self.behavior
        return {
            "min": self.min,
            "max": self.max,
            "scaleStrategies": [
                {"metricName": s.metric.value, "threshold": _json_number(s.threshold)}
                for s in self.strategies
            ],
            "behavior": {
                "scaleUp": {_WINDOW: b.scale_up_window},
                "scaleDown": {_WINDOW: b.scale_down_window},
                "onZero": {_GRACE: b.scale_down_grace, _ACTIVATION: b.activation_replicas},
            },
        }


def _json_number(value: float) -> int | float:
    """``100`` rather than ``100.0`` in what users read back."""
    return int(value) if value.is_integer() else value


def metric_problem(name: Any) -> str | None:
    """Why ``name`` is not a metric OpenEAS can scale on, or ``None`` when it is one."""
    if name in MetricName.__members__.values():
        return None
    supported = ", ".join(m.value for m in MetricName)
    return f"unsupported metric {name!r}; OpenEAS measures {supported}"


# -- parsing ------------------------------------------------------------------------------


def parse_autoscaler(doc: Any, path: str = "autoscaler") -> AutoscalerSpec:
    """Validate an autoscaler document (either EAS form); raises :class:`SpecError`."""
    errors: list[FieldError] = []
    reader = object_at(doc, path, errors)
    spec = None
    if reader is not None:
        legacy = [k for k in _LEGACY_KEYS if k in reader.doc]
        current = [k for k in _CURRENT_KEYS if k in reader.doc]
        if legacy and current:
            reader.fail(
                None,
                f"mixes the current form ({', '.join(current)}) with the older form "
                f"({', '.join(legacy)}); use one",
            )
        elif legacy:
            spec = _read_legacy(reader)
        else:
            spec = _read_current(reader)
    if errors or spec is None:
        raise SpecError(errors)
    return spec


def _read_current(reader: FieldReader) -> AutoscalerSpec | None:
    reader.reject_unknown(_CURRENT_KEYS)
    low = reader.integer("min", lo=0, hi=MAX_INSTANCES)
    high = reader.integer("max", lo=1, hi=MAX_INSTANCES)
    strategies = _read_strategy_list(reader)
    behavior = _read_behavior(reader)
    return _bounded(reader, ("min", low), ("max", high), strategies, behavior)


def _read_legacy(reader: FieldReader) -> AutoscalerSpec | None:
    reader.reject_unknown(_LEGACY_KEYS)
    low = reader.integer("Min", lo=0, hi=MAX_INSTANCES)
    high = reader.integer("Max", lo=1, hi=MAX_INSTANCES)
    strategies = _read_strategy_map(reader)
    return _bounded(reader, ("Min", low), ("Max", high), strategies, Behavior())


def _bounded(
    reader: FieldReader,
    low: tuple[str, int | None],
    high: tuple[str, int | None],
    strategies: tuple[ScaleStrategy, ...] | None,
    behavior: Behavior | None,
) -> AutoscalerSpec | None:
    """The spec, once the checks across fields (min <= max, activation <= max) pass."""
    (low_key, low_value), (high_key, high_value) = low, high
    if low_value is None or high_value is None:
        return None
    if low_value > high_value:
        reader.fail(low_key, f"must be <= {high_key} ({high_value}), got {low_value}")
    if behavior is not None and behavior.activation_replicas > high_value:
        reader.fail(
            f"behavior.onZero.{_ACTIVATION}",
            f"must be <= {high_key} ({high_value}), got {behavior.activation_replicas}",
        )
    if reader.errors or strategies is None or behavior is None:
        return None
    return AutoscalerSpec(low_value, high_value, strategies, behavior)


def _read_strategy_list(reader: FieldReader) -> tuple[ScaleStrategy, ...] | None:
    items = reader.array("scaleStrategies")
    if items is None:
        return None
    if not items:
        reader.fail("scaleStrategies", "must name at least one metric")
        return None
    strategies: list[ScaleStrategy] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        item_reader = object_at(item, reader.at("scaleStrategies") + f"[{i}]", reader.errors)
        strategy = _read_strategy(item_reader) if item_reader is not None else None
        if strategy is None or item_reader is None:
            continue
        if strategy.metric in seen:
            item_reader.fail("metricName", f"{strategy.metric.value!r} appears twice")
        seen.add(strategy.metric)
        strategies.append(strategy)
    return tuple(strategies)


def _read_strategy(reader: FieldReader) -> ScaleStrategy | None:
    reader.reject_unknown(("metricName", "threshold", "service"))
    if "service" in reader.doc:
        reader.fail("service", "metrics of another service are not supported; omit it")
    name = reader.string("metricName")
    problem = metric_problem(name) if name is not None else None
    if problem:
        reader.fail("metricName", problem)
        return None
    if name is None:
        return None
    metric = MetricName(name)
    threshold = reader.number("threshold", hi=MAX_THRESHOLD[metric])
    return None if threshold is None else ScaleStrategy(metric, threshold)


def _read_strategy_map(reader: FieldReader) -> tuple[ScaleStrategy, ...] | None:
    """The older form's ``Strategies``: ``{"qps": 100, "cpu": 80}``."""
    table = reader.obj("Strategies")
    if table is None:
        return None
    if not table.doc:
        table.fail(None, "must name at least one metric")
        return None
    strategies: list[ScaleStrategy] = []
    for name, value in table.doc.items():
        problem = metric_problem(name)
        if problem:
            table.fail(name, problem)
            continue
        metric = MetricName(name)
        threshold = positive_number(table, name, value, hi=MAX_THRESHOLD[metric])
        if threshold is not None:
            strategies.append(ScaleStrategy(metric, threshold))
    return tuple(strategies)


def _read_behavior(reader: FieldReader) -> Behavior | None:
    behavior = reader.obj("behavior")
    if behavior is None:
        return None
    behavior.reject_unknown(("scaleUp", "scaleDown", "onZero"))
    up, down, zero = behavior.obj("scaleUp"), behavior.obj("scaleDown"), behavior.obj("onZero")
    if up is None or down is None or zero is None:
        return None
    for window in (up, down):
        window.reject_unknown((_WINDOW,))
    zero.reject_unknown((_GRACE, _ACTIVATION))
    up_window = up.integer(_WINDOW, DEFAULT_SCALE_UP_WINDOW, lo=0, hi=MAX_WINDOW_SECONDS)
    down_window = down.integer(_WINDOW, DEFAULT_SCALE_DOWN_WINDOW, lo=0, hi=MAX_WINDOW_SECONDS)
    grace = zero.integer(_GRACE, DEFAULT_GRACE_PERIOD, lo=0, hi=MAX_GRACE_SECONDS)
    activation = zero.integer(_ACTIVATION, DEFAULT_ACTIVATION_REPLICAS, lo=1, hi=MAX_INSTANCES)
    if up_window is None or down_window is None or grace is None or activation is None:
        return None
    return Behavior(up_window, down_window, grace, activation)


# -- eascmd autoscale -D key=value ----------------------------------------------------------


def apply_overrides(
    base: AutoscalerSpec | None, assignments: Iterable[str], path: str = "autoscaler"
) -> AutoscalerSpec:
    """``-Dmin=1 -Dmax=8 -Dstrategies.qps=100 -Dstrategies.cpu=80`` applied to ``base``.

    Keys: ``min``, ``max``, ``strategies.<metric>`` (sets or replaces that metric's
    threshold) and the ``behavior.*`` fields by their dotted path
    (``behavior.scaleDown.stabilizationWindowSeconds=60``).  Values are JSON when they
    parse as JSON, else strings (which then fail validation with the field named).
    Without a base the assignments must give at least ``min``, ``max`` and one strategy.
    """
    doc = base.to_json() if base is not None else {}
    errors: list[FieldError] = []
    for text in assignments:
        _assign(doc, text, path, errors)
    if errors:
        raise SpecError(errors)
    return parse_autoscaler(doc, path)


def _assign(doc: dict[str, Any], text: str, path: str, errors: list[FieldError]) -> None:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        errors.append(FieldError(path, f"expected key=value, got {text!r}"))
        return
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    head, _, metric = key.partition(".")
    if key in ("min", "max"):
        doc[key] = value
    elif head == "strategies" and metric:
        problem = metric_problem(metric)
        if problem:
            errors.append(FieldError(f"{path}.{key}", problem))
            return
        strategies = [s for s in doc.get("scaleStrategies", []) if s.get("metricName") != metric]
        doc["scaleStrategies"] = [*strategies, {"metricName": metric, "threshold": value}]
    elif key in _BEHAVIOR_KEYS:
        _, group, name = key.split(".")
        doc.setdefault("behavior", {}).setdefault(group, {})[name] = value
    else:
        keys = ", ".join(("min", "max", *(f"strategies.{m.value}" for m in MetricName)))
        errors.append(
            FieldError(
                f"{path}.{key}", f"unknown key; -D takes {keys} or {', '.join(_BEHAVIOR_KEYS)}"
            )
        )
