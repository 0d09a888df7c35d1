"""Where a benchmark's results go: ``benchmarks/results/<stem>.md`` (the report, also
printed) and, with raw data, ``<stem>.json`` beside it (charts are drawn from those)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def write_results(out: Path, stem: str, report: str, data: dict[str, Any] | None = None) -> Path:
    """Print ``report`` and write it (and ``data`` as JSON) under ``out``; returns the
    markdown file's path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.md"
    path.write_text(report if report.endswith("\n") else report + "\n")
    if data is not None:
        (out / f"{stem}.json").write_text(json.dumps(data, indent=1))
    print(report)
    print(f"written: {path}")
    return path


def args_record(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's arguments as JSON can hold them (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
