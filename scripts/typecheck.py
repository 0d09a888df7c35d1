#!/usr/bin/env python3
"""Run mypy over src/openeas and hold it to a baseline that only shrinks.

``scripts/mypy-baseline.json`` records how many mypy errors each file had when type
checking was introduced. This script fails when a file has more errors than its baseline
(a new file starts at zero), printing the errors of the files that grew, and says so when
a file has fewer, so that ``--update`` can lower the baseline. ``--update`` never raises a
count: fix the new errors instead.

Usage: scripts/typecheck.py [--update]
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "scripts" / "mypy-baseline.json"
_ERROR = re.compile(r"^(?P<path>[^:]+):\d+: error: ")


def run_mypy() -> dict[str, list[str]]:
    """Each file's mypy error lines (config: [tool.mypy] in pyproject.toml)."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--no-pretty"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode not in (0, 1):  # 2: mypy itself failed (bad config, crash)
        sys.exit(f"typecheck: mypy failed:\n{result.stdout}{result.stderr}")
    errors: dict[str, list[str]] = defaultdict(list)
    for line in result.stdout.splitlines():
        match = _ERROR.match(line)
        if match:
            errors[match["path"]].append(line)
    return errors


def main(argv: list[str]) -> int:
    update = "--update" in argv
    errors = run_mypy()
    counts = Counter({path: len(lines) for path, lines in errors.items()})
    baseline: dict[str, int] = json.loads(BASELINE.read_text()) if BASELINE.exists() else {}
    grown = sorted(p for p in counts if counts[p] > baseline.get(p, 0))
    shrunk = sorted(p for p in baseline if counts.get(p, 0) < baseline[p])
    for path in grown:
        print(f"typecheck: {path}: {counts[path]} errors, baseline {baseline.get(path, 0)}")
        print("\n".join(f"  {line}" for line in errors[path]))
    if update:
        lowered = {p: min(n, counts.get(p, 0)) for p, n in baseline.items() if counts.get(p, 0)}
        if not BASELINE.exists():
            lowered = dict(counts)
        BASELINE.write_text(json.dumps(dict(sorted(lowered.items())), indent=1) + "\n")
        print(f"typecheck: baseline written ({sum(lowered.values())} errors)")
    elif shrunk:
        print(
            f"typecheck: fewer errors than the baseline in {len(shrunk)} file(s): "
            "run scripts/typecheck.py --update"
        )
    total = sum(counts.values())
    if grown:
        print(f"typecheck: FAILED, {len(grown)} file(s) above the baseline ({total} errors in all)")
        return 1
    print(f"typecheck: ok ({total} errors, none above the baseline)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
