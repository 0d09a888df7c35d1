#!/usr/bin/env bash
# Create .venv and install OpenEAS with everything the tests and benchmarks need.
# Idempotent: re-running only installs what is missing.  Usage: scripts/bootstrap.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
      PYTHON=$candidate; break
    fi
  done
fi
[ -n "$PYTHON" ] || { echo "bootstrap: Python >= 3.11 is required" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.openeas-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing openeas[dev] into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi

# perf_analyzer (inside the tritonclient 2.51.0 wheel) needs libb64.so.0d from Debian's
# libb64-0d; unpack it into the venv so that no system-wide install is needed.
libdir=.venv/opt/libb64
if [ ! -e "$libdir/libb64.so.0d" ] && command -v apt-get >/dev/null 2>&1; then
  echo "==> fetching libb64 for perf_analyzer"
  tmp=$(mktemp -d)
  if ! (cd "$tmp" && apt-get download libb64-0d >/dev/null 2>&1); then
    if [ "$(id -u)" = 0 ]; then apt-get update -qq >/dev/null 2>&1 || true; fi
    (cd "$tmp" && apt-get download libb64-0d >/dev/null 2>&1) || true
  fi
  if ls "$tmp"/libb64-0d_*.deb >/dev/null 2>&1; then
    dpkg -x "$tmp"/libb64-0d_*.deb "$tmp/x"
    mkdir -p "$libdir"
    cp -a "$tmp"/x/usr/lib/*/libb64.so.0d* "$libdir"/
  else
    echo "bootstrap: could not fetch libb64-0d; perf_analyzer tests will be skipped" >&2
  fi
  rm -rf "$tmp"
fi

# The web console's browser tests (tests/integration/platform/test_console.py) drive
# Debian's chromium through playwright (never `playwright install`).  Installed here when
# missing and we are root; otherwise those tests fail saying what to install.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "==> installing chromium for the console's browser tests"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
      >/dev/null 2>&1 ||
      echo "bootstrap: could not install chromium; the console's browser tests will fail" >&2
  else
    echo "bootstrap: /usr/bin/chromium is missing (apt-get install chromium as root);" \
      "the console's browser tests will fail" >&2
  fi
fi
