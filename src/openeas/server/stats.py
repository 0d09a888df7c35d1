"""Per-model-version inference statistics, in the shape of Triton's statistics extension.

Counters are plain integers updated on the event loop (or under the GIL from worker
threads, where each update is a single attribute add); the HTTP/gRPC views are built from
them on demand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStats:
    """The statistics of one model version."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchStats] = field(default_factory=dict)
    #: failures by reason, for nv_inference_request_failure{reason=...}
    failures: dict[str, int] = field(default_factory=dict)

    def record_success(self, request_ns: int) -> None:
        self.success.add(request_ns)
        self.last_inference_ms = time.time_ns() // 1_000_000

    def record_failure(self, request_ns: int, reason: str = "OTHER") -> None:
        self.fail.add(request_ns)
        self.failures[reason] = self.failures.get(reason, 0) + 1
        self.last_inference_ms = time.time_ns() // 1_000_000

    def record_execution(
        self,
        batch_size: int,
        requests: int,
        input_ns: int,
        infer_ns: int,
        output_ns: int,
    ) -> None:
        """One backend execution of ``requests`` requests holding ``batch_size`` items.

        Per-request compute durations are counted once per request, as Triton does.
        """
        # Inlined adds: this runs once per execution on the hot path.
        self.execution_count += 1
        self.inference_count += batch_size
        d = self.compute_input
        d.count += requests
        d.ns += input_ns * requests
        d = self.compute_infer
        d.count += requests
        d.ns += infer_ns * requests
        d = self.compute_output
        d.count += requests
        d.ns += output_ns * requests
        batch = self.batches.get(batch_size)
        if batch is None:
            batch = self.batches[batch_size] = BatchStats()
        d = batch.compute_input
        d.count += 1
        d.ns += input_ns
        d = batch.compute_infer
        d.count += 1
        d.ns += infer_ns
        d = batch.compute_output
        d.count += 1
        d.ns += output_ns

    def as_dict(self, name: str, version: str) -> dict[str, Any]:
        """The JSON object of ``GET /v2/models/<m>/stats`` for this version."""
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
                "cache_hit": self.cache_hit.as_dict(),
                "cache_miss": self.cache_miss.as_dict(),
            },
            "response_stats": {},
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": b.compute_input.as_dict(),
                    "compute_infer": b.compute_infer.as_dict(),
                    "compute_output": b.compute_output.as_dict(),
                }
                for size, b in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }
