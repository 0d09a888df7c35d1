#!/usr/bin/env bash
# Serve the example model repository with openeas-server and query it with tritonclient.
# Usage: scripts/demo.sh   (installs into .venv first; stops the server when done)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
PORT=${OPENEAS_DEMO_PORT:-8000}
LOG=$(mktemp -t openeas-demo.XXXXXX.log)
echo "==> starting openeas-server on :$PORT (log: $LOG)"
.venv/bin/openeas-server --model-repository=examples/models --http-port="$PORT" \
  --grpc-port=$((PORT + 1)) --metrics-port=$((PORT + 2)) >"$LOG" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  if .venv/bin/python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/v2/health/ready', timeout=1)" 2>/dev/null; then break; fi
  kill -0 $SERVER 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 0.1
done
echo "==> models:"
.venv/bin/python -c "import tritonclient.http as h; [print(' ', m) for m in h.InferenceServerClient('127.0.0.1:$PORT').get_model_repository_index()]"
echo "==> querying add_sub_onnx (binary tensors, as in the user's document)"
.venv/bin/python examples/client.py --url "127.0.0.1:$PORT" --model add_sub_onnx
echo "==> done; stopping the server"
