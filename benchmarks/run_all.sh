#!/usr/bin/env bash
# Every benchmark scenario, side by side with its peer, in one command:
#   benchmarks/run_all.sh [--quick]
# Installs OpenEAS (.venv) and the peers (benchmarks/.peers), then runs each scenario and
# writes markdown tables, JSON and PNG charts to benchmarks/results/.  A full run takes
# about an hour on a 2-core machine; --quick runs one repetition with short windows
# (a smoke test of the harness, not numbers to quote).
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
REPEAT=3; MS=3000; LOOP_S=20; OUT=benchmarks/results
if [ $QUICK = 1 ]; then
  # A smoke test of the harness: its numbers are not for quoting, so they stay out of
  # benchmarks/results/.
  REPEAT=1; MS=1500; LOOP_S=5; OUT=${OPENEAS_BENCH_OUT:-$(mktemp -d -t openeas-bench.XXXXXX)}
fi

scripts/bootstrap.sh
benchmarks/setup_peers.sh
PY=.venv/bin/python
echo "==> machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -m)"

FAILED=()
run() {
  local title=$1; shift
  echo
  echo "==> $title"
  if ! "$PY" "$@"; then
    echo "!! $title failed; continuing with the next scenario"
    FAILED+=("$title")
  fi
}

run "1. identity Python model, HTTP: OpenEAS vs Triton 2.51 vs MLServer 1.7" \
  benchmarks/processor.py --protocol http --repeat "$REPEAT" --measurement-ms "$MS" --out "$OUT"
run "1. identity Python model, gRPC: OpenEAS vs Triton 2.51 vs MLServer 1.7" \
  benchmarks/processor.py --protocol grpc --repeat "$REPEAT" --measurement-ms "$MS" \
  --peers openeas,triton,mlserver-pw0 --out "$OUT"
run "2. ResNet-18 ONNX with dynamic batching vs the in-process ONNX Runtime limit" \
  benchmarks/cnn_batching.py --repeat "$REPEAT" --measurement-ms $((MS + 2000)) \
  --loop-seconds $((LOOP_S / 4)) --out "$OUT"
run "2b. inception_graphdef (TensorFlow) vs an in-process TensorFlow session loop" \
  benchmarks/inception.py --repeat "$REPEAT" --seconds "$LOOP_S" --out "$OUT"
run "3. through the gateway vs straight to the instance (product path and bare; HTTP and gRPC)" \
  benchmarks/gateway.py --repeat "$REPEAT" --measurement-ms "$MS" --out "$OUT"
run "4. cold start: eascmd create -> Service is running" \
  benchmarks/platform_coldstart.py --repeat $((REPEAT + 2)) --out "$OUT"
run "4b. model repository sync from the object store vs aws s3 sync" \
  benchmarks/storage_sync.py --repeat $((REPEAT + 2)) --out "$OUT"
echo
echo "==> results in $OUT (markdown, JSON, PNG)"
if [ ${#FAILED[@]} -gt 0 ]; then
  printf '!! failed: %s\n' "${FAILED[@]}"
  exit 1
fi
