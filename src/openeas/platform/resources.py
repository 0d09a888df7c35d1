"""Resource groups: the capacity services are placed in.

The local runtime has one group, :data:`~openeas.platform.spec.DEFAULT_RESOURCE`: the
machine's cores, memory and GPUs unless ``openeas up --cpus/--memory/--gpus`` say
otherwise (to overcommit a small box).  A service names its group in
``metadata.resource``; an instance is only started when its cpu/memory/gpu fit in what
the group has left, so nothing is overcommitted beyond the declared capacity.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from openeas.platform.spec import DEFAULT_RESOURCE


@dataclass(frozen=True)
class Demand:
    """What one instance needs."""

    cpu: int
    memory: int  # MB, 0 = not declared
    gpu: int


@dataclass(frozen=True)
class ResourceGroup:
    name: str
    cpu: int
    memory: int  # MB
    gpu: int
    #: the machines (cluster nodes) it spans
    nodes: int = 1

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "cpu": self.cpu,
            "memory": self.memory,
            "gpu": self.gpu,
            "nodes": self.nodes,
        }


def detect_gpus() -> int:
    """NVIDIA devices visible on this machine (``/dev/nvidiaN``)."""
    return sum(1 for p in Path("/dev").glob("nvidia[0-9]*") if p.name[6:].isdigit())


def local_group(
    cpus: int | None = None, memory_mb: int | None = None, gpus: int | None = None
) -> ResourceGroup:
    """The machine's group, with any of its three capacities overridden."""
    return ResourceGroup(
        DEFAULT_RESOURCE,
        cpus if cpus is not None else len(os.sched_getaffinity(0)),
        memory_mb if memory_mb is not None else psutil.virtual_memory().total // 2**20,
        gpus if gpus is not None else detect_gpus(),
    )


def shortage(group: ResourceGroup, used: Iterable[Demand], want: Demand) -> str | None:
    """Why ``want`` does not fit in what ``group`` has left (None when it fits)."""
    used = list(used)
    free_cpu = group.cpu - sum(d.cpu for d in used)
    free_mem = group.memory - sum(d.memory for d in used)
    free_gpu = group.gpu - sum(d.gpu for d in used)
    if want.gpu > free_gpu:
        return f"insufficient gpu: need {want.gpu}, {free_gpu} of {group.gpu} free in resource group {group.name!r}"
    if want.cpu > free_cpu:
        return f"insufficient cpu: need {want.cpu}, {free_cpu} of {group.cpu} free in resource group {group.name!r}"
    if want.memory > free_mem:
        return f"insufficient memory: need {want.memory} MB, {free_mem} of {group.memory} MB free in resource group {group.name!r}"
    return None


def pick_cores(want: int, taken: Iterable[list[int]]) -> list[int]:
    """The ``want`` least-used host cores (all of them when ``want`` exceeds the host)."""
    host = sorted(os.sched_getaffinity(0))
    if want >= len(host):
        return host
    load = Counter(core for cores in taken for core in cores)
    return sorted(sorted(host, key=lambda core: (load[core], core))[:want])


def pick_gpus(want: int, taken: Iterable[list[int]], total: int) -> list[int]:
    used = {gpu for gpus in taken for gpu in gpus}
    return [g for g in range(total) if g not in used][:want]
