#!/usr/bin/env bash
# The user's document, end to end, on this machine:
#   1. fetch inception_graphdef (Triton's fetch_models.sh) and upload it to
#      oss://triton-model-repo/models/ (the ossutil cp step; the embedded object store
#      unless OPENEAS_STORAGE_ENDPOINT names a real S3/OSS endpoint)
#   2. start the platform and `eascmd create examples/triton.config`
#   3. query the service over HTTP with the document's client script
#   4. the same over gRPC (through the gateway)
#   5. operate it: scale to 2 instances, stop, start
# The service stays up at the end; the script prints how to remove it.
#
# Usage: scripts/quickstart.sh [--cleanup] [--runtime ray]
#   --cleanup      delete the service and stop the platform at the end
#   --runtime ray  run the instances on a Ray cluster (docs/cluster.md): the one RAY_ADDRESS
#                  names, else a local one the script starts (OPENEAS_QUICKSTART_RAY_NODES
#                  nodes of group "default", default 2, so that the 2 instances of step 5
#                  run one per node; --cleanup stops it).  The model then goes to the S3
#                  server that `openeas up --runtime ray` runs (uploaded after step 2's
#                  `openeas up`), unless OPENEAS_STORAGE_ENDPOINT names one.
# Environment: OPENEAS_HOME (state, default ~/.openeas), OPENEAS_QUICKSTART_MODELS (where
# the model is fetched, default $OPENEAS_HOME/quickstart), OPENEAS_UP_ARGS (extra
# `openeas up` flags, e.g. "--http-port 18080 --grpc-port 18081"),
# OPENEAS_QUICKSTART_RAY_PORT (the local Ray head's port, default 6379).
set -euo pipefail
cd "$(dirname "$0")/.."
CLEANUP=0
RUNTIME=local
while [ $# -gt 0 ]; do
  case "$1" in
    --cleanup) CLEANUP=1 ;;
    --runtime) RUNTIME=${2:-}; shift ;;
    --runtime=*) RUNTIME=${1#--runtime=} ;;
    *) echo "usage: $0 [--cleanup] [--runtime local|ray]" >&2; exit 2 ;;
  esac
  shift
done
case "$RUNTIME" in local|ray) ;; *) echo "--runtime: local or ray, not '$RUNTIME'" >&2; exit 2 ;; esac

scripts/bootstrap.sh
BIN=$PWD/.venv/bin
export OPENEAS_HOME=${OPENEAS_HOME:-$HOME/.openeas}
MODELS=${OPENEAS_QUICKSTART_MODELS:-$OPENEAS_HOME/quickstart}
CONFIG=examples/triton.config
SERVICE=$("$BIN/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["name"])' "$CONFIG")
field() { "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
RAY_PIDS=$OPENEAS_HOME/quickstart-ray.pids

fetch_model() {
  if [ ! -f "$MODELS/inception_graphdef/1/model.graphdef" ]; then
    "$BIN/openeas" models fetch inception_graphdef "$MODELS"
  fi
}
upload_model() { "$BIN/openeas" cp -r "$MODELS/inception_graphdef" oss://triton-model-repo/models/; }

# A local Ray cluster for --runtime ray without RAY_ADDRESS: `ray start --block` processes
# (each stops its node's Ray processes when it gets SIGTERM), pids in $RAY_PIDS.
start_ray() {
  local port=${OPENEAS_QUICKSTART_RAY_PORT:-6379} nodes=${OPENEAS_QUICKSTART_RAY_NODES:-2} n
  local node=(--num-cpus 4 --object-store-memory 80000000 --disable-usage-stats --block
              --resources '{"openeas_group_default": 1000}')
  RAY_ADDRESS=127.0.0.1:$port
  export RAY_ADDRESS
  # Ray's token authentication: every node and the platform use ~/.ray/auth_token.
  export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
  if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ] && [ ! -f "$HOME/.ray/auth_token" ]; then
    "$BIN/ray" get-auth-token --generate >/dev/null
  fi
  if [ -f "$RAY_PIDS" ] && kill -0 "$(head -n1 "$RAY_PIDS")" 2>/dev/null; then
    echo "(the Ray cluster of an earlier run answers at $RAY_ADDRESS)"
    return
  fi
  mkdir -p "$OPENEAS_HOME/logs"
  : >"$RAY_PIDS"
  setsid "$BIN/ray" start --head --port "$port" --include-dashboard false "${node[@]}" \
    >"$OPENEAS_HOME/logs/ray-node-1.log" 2>&1 &
  echo $! >>"$RAY_PIDS"
  wait_port "$port"
  for n in $(seq 2 "$nodes"); do
    setsid "$BIN/ray" start --address "$RAY_ADDRESS" "${node[@]}" \
      >"$OPENEAS_HOME/logs/ray-node-$n.log" 2>&1 &
    echo $! >>"$RAY_PIDS"
  done
  "$BIN/python" - "$nodes" <<'PY'
import sys, time, ray
ray.init(logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + 120
while len([n for n in ray.nodes() if n["Alive"]]) < int(sys.argv[1]):
    if time.monotonic() > deadline:
        sys.exit("the Ray nodes did not join within 120s")
    time.sleep(0.5)
PY
  echo "Ray cluster of $nodes node(s) at $RAY_ADDRESS (logs: $OPENEAS_HOME/logs/ray-node-*.log)"
}
wait_port() {
  "$BIN/python" - "$1" <<'PY'
import socket, sys, time
deadline = time.monotonic() + 120
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(f"nothing answers on port {sys.argv[1]} after 120s")
        time.sleep(0.5)
PY
}
stop_ray() {
  [ -f "$RAY_PIDS" ] || return 0
  # shellcheck disable=SC2046 # one pid per line
  kill $(tac "$RAY_PIDS") 2>/dev/null || true
  rm -f "$RAY_PIDS"
}

start_platform() {
  local runtime_args=()
  [ "$RUNTIME" = ray ] && runtime_args=(--runtime ray --ray-address "$RAY_ADDRESS")
  if ! "$BIN/eascmd" list >/dev/null 2>&1; then
    # shellcheck disable=SC2086 # OPENEAS_UP_ARGS is a list of flags
    "$BIN/openeas" up --detach "${runtime_args[@]}" ${OPENEAS_UP_ARGS:-}
  fi
}

if [ "$RUNTIME" = local ]; then
  echo "==> [1/5] fetch inception_graphdef into $MODELS and upload it to oss://triton-model-repo/models/"
  fetch_model
  upload_model
  echo "==> [2/5] start the platform and create the service from $CONFIG"
  start_platform
else
  echo "==> [1/5] fetch inception_graphdef into $MODELS"
  fetch_model
  echo "==> [2/5] start the platform on a Ray cluster, upload the model to oss://triton-model-repo/models/, create the service from $CONFIG"
  [ -n "${RAY_ADDRESS:-}" ] || start_ray
  start_platform
  upload_model
fi
if "$BIN/eascmd" desc "$SERVICE" >/dev/null 2>&1; then
  echo "(a service named $SERVICE exists from an earlier run: deleting it first)"
  "$BIN/eascmd" delete "$SERVICE" -y
fi
"$BIN/eascmd" create "$CONFIG"

desc=$("$BIN/eascmd" desc "$SERVICE" --json)
URL=$(field internet_endpoint <<<"$desc")
TOKEN=$(field token <<<"$desc")
GRPC=$(field grpc_endpoint <<<"$desc")

echo "==> [3/5] query $URL over HTTP (the document's client script)"
"$BIN/python" examples/query_inception.py --url "$URL" --token="$TOKEN"

echo "==> [4/5] the same over gRPC: $GRPC with metadata x-eas-service=$SERVICE"
"$BIN/python" examples/query_inception_grpc.py --url "$GRPC" --service "$SERVICE" --token="$TOKEN"

echo "==> [5/5] scale to 2 instances, stop, start"
"$BIN/eascmd" modify "$SERVICE" -Dmetadata.instance=2
"$BIN/eascmd" instances "$SERVICE"
"$BIN/eascmd" stop "$SERVICE"
"$BIN/eascmd" start "$SERVICE"
"$BIN/eascmd" desc "$SERVICE"

if [ $CLEANUP = 1 ]; then
  echo "==> cleaning up"
  "$BIN/eascmd" delete "$SERVICE" -y
  "$BIN/openeas" down
  stop_ray
else
  echo
  echo "The service is running: $URL (token $TOKEN)."
  echo "Query it again:   $BIN/python examples/query_inception.py --url $URL --token=$TOKEN"
  echo "Remove it:        $BIN/eascmd delete $SERVICE -y"
  echo "Stop everything:  $BIN/openeas down"
  if [ -f "$RAY_PIDS" ]; then
    echo "                  kill \$(cat $RAY_PIDS)   # the local Ray cluster"
  fi
fi
