#!/usr/bin/env bash
# Run the whole test suite (installs what it needs first).  Usage: scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/python scripts/typecheck.py
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
