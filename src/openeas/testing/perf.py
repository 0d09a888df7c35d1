"""Locate and run ``perf_analyzer`` (shipped inside the tritonclient 2.51.0 wheel).

It links against ``libb64.so.0d`` (unpacked into ``.venv/opt/libb64`` by
``scripts/bootstrap.sh``) and ``libcudart.so.12`` (PyPI ``nvidia-cuda-runtime-cu12``).
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


def _venv_root() -> Path:
    return Path(sys.prefix)


def perf_analyzer_path() -> Path | None:
    candidate = Path(sys.executable).parent / "perf_analyzer"
    return candidate if candidate.exists() else None


def perf_analyzer_env() -> dict[str, str]:
    """The environment perf_analyzer needs to find its two shared libraries."""
    dirs = [_venv_root() / "opt" / "libb64"]
    try:
        import nvidia.cuda_runtime as cudart  # type: ignore[import-not-found]

        dirs.append(Path(next(iter(cudart.__path__))) / "lib")
    except ImportError:
        pass
    existing = os.environ.get("LD_LIBRARY_PATH", "")
    path = ":".join(str(d) for d in dirs) + (f":{existing}" if existing else "")
    return {**os.environ, "LD_LIBRARY_PATH": path}


def unavailable_reason() -> str:
    """Why perf_analyzer cannot run here, or "" when it can."""
    binary = perf_analyzer_path()
    if binary is None:
        return "perf_analyzer binary not found (install tritonclient==2.51.0)"
    result = subprocess.run(
        [str(binary), "--version"], env=perf_analyzer_env(), capture_output=True, text=True
    )
    if result.returncode != 0:
        return f"perf_analyzer does not start: {result.stderr.strip()[:300]}"
    return ""


@dataclass
class PerfPoint:
    """One concurrency level of a perf_analyzer run."""

    concurrency: int
    throughput: float
    p50_us: int
    p90_us: int
    p95_us: int
    p99_us: int


def run_perf_analyzer(
    model: str,
    url: str,
    *,
    protocol: str = "http",
    concurrency: int = 1,
    measurement_ms: int = 3000,
    stability: int = 25,
    extra: list[str] | None = None,
    timeout: float = 600,
) -> tuple[PerfPoint, str]:
    """Run perf_analyzer at one concurrency; returns the parsed result and its output."""
    binary = perf_analyzer_path()
    if binary is None:
        raise FileNotFoundError("perf_analyzer not found")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.csv"
        args = [
            str(binary),
            "-m", model,
            "-u", url,
            "-i", protocol,
            "--concurrency-range", f"{concurrency}:{concurrency}",
            "--measurement-interval", str(measurement_ms),
            "--stability-percentage", str(stability),
            "-f", str(report),
            *(extra or []),
        ]  # fmt: skip
        result = subprocess.run(
            args, env=perf_analyzer_env(), capture_output=True, text=True, timeout=timeout
        )
        output = result.stdout + result.stderr
        if result.returncode != 0:
            raise RuntimeError(f"perf_analyzer failed ({result.returncode}):\n{output}")
        rows = list(csv.DictReader(io.StringIO(report.read_text())))
    if not rows:
        raise RuntimeError(f"perf_analyzer wrote no results:\n{output}")
    row = rows[-1]
    point = PerfPoint(
        concurrency=int(row["Concurrency"]),
        throughput=float(row["Inferences/Second"]),
        p50_us=int(row["p50 latency"]),
        p90_us=int(row["p90 latency"]),
        p95_us=int(row["p95 latency"]),
        p99_us=int(row["p99 latency"]),
    )
    return point, output
