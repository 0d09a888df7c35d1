"""Elasticity: EAS's ``autoscaler`` and ``cronscaler`` and the policy that applies them.

* :mod:`.autoscaler` parses the ``autoscaler`` document (both EAS forms) and ``-D``
  overrides into an :class:`~.autoscaler.AutoscalerSpec`;
* :mod:`.policy` holds the metrics history and the pure :func:`~.policy.decide`;
* :mod:`.cron` parses ``cronscaler`` and computes the scheduled target at a moment.

All of it is pure (no clock, no I/O); the reconciler feeds it samples and applies what it
decides.  ``docs/elastic.md`` describes the fields and the rules.
"""

from openeas.platform.elastic.autoscaler import (
    AutoscalerSpec,
    Behavior,
    MetricName,
    ScaleStrategy,
    apply_overrides,
    parse_autoscaler,
)
from openeas.platform.elastic.cron import (
    CronScalerSpec,
    CronState,
    Firing,
    ScaleJob,
    evaluate,
    parse_cronscaler,
)
from openeas.platform.elastic.policy import (
    Decision,
    Metrics,
    MetricsHistory,
    Recommendations,
    Sample,
    Window,
    bounds,
    decide,
)

__all__ = [
    "AutoscalerSpec",
    "Behavior",
    "CronScalerSpec",
    "CronState",
    "Decision",
    "Firing",
    "MetricName",
    "Metrics",
    "MetricsHistory",
    "Recommendations",
    "Sample",
    "ScaleJob",
    "ScaleStrategy",
    "Window",
    "apply_overrides",
    "bounds",
    "decide",
    "evaluate",
    "parse_autoscaler",
    "parse_cronscaler",
]
