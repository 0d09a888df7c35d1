"""The statuses of services and instances, defined once.

The values are the strings users see (``eascmd``, the API, ``/metrics``) and the ones
stored in ``platform.db``: EAS's words (``Running``, ``Waiting``, ``Stopped``,
``Failed``, ...).  They are :class:`~enum.StrEnum` members, so they compare equal to
those strings and serialise as them.
"""

from __future__ import annotations

from enum import StrEnum


class Desired(StrEnum):
    """What the user asked a service to be."""

    RUNNING = "Running"
    STOPPED = "Stopped"
    DELETED = "Deleted"


class ServiceStatus(StrEnum):
    """Where a service is on its way to the desired state (EAS's service status)."""

    CREATING = "Creating"  # the first version's repositories are being synchronised
    WAITING = "Waiting"  # instances starting, or no capacity (reason InsufficientResources)
    RUNNING = "Running"
    SCALING = "Scaling"
    UPDATING = "Updating"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    FAILED = "Failed"  # reason SyncFailed or InstanceCrashLoop
    DELETING = "Deleting"


class InstanceStatus(StrEnum):
    """One instance's status (``eascmd instances``)."""

    PENDING = "Pending"  # launched, not ready yet
    RUNNING = "Running"  # ready at least once since its launch
    RESTARTING = "Restarting"  # ended; a restart is scheduled (backoff)
    FAILED = "Failed"  # crash loop before ever being ready: not restarted
    TERMINATING = "Terminating"  # draining, then stopped


#: Reasons a service's status carries while a ready instance is down after a crash.
CRASH_REASONS = ("InstanceRestarting", "CrashLoopBackOff")


class TrafficState(StrEnum):
    """A group member's ``TrafficState`` (EAS): whether it takes the group's traffic."""

    GROUPING = "grouping"  # takes its share of the group's traffic
    STANDALONE = "standalone"  # only its own endpoint's traffic


class TrafficMode(StrEnum):
    """A service group's ``TrafficMode`` (EAS): what the members' shares follow."""

    AUTO = "auto"  # their ready instance counts
    CUSTOMIZED = "customized"  # their ``Weight``s
