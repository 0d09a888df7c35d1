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
# Usage: scripts/quickstart.sh [--cleanup]     (--cleanup: delete the service and stop the
# platform at the end).  Environment: OPENEAS_HOME (state, default ~/.openeas),
# OPENEAS_QUICKSTART_MODELS (where the model is fetched, default $OPENEAS_HOME/quickstart),
# OPENEAS_UP_ARGS (extra `openeas up` flags, e.g. "--http-port 18080 --grpc-port 18081").
set -euo pipefail
cd "$(dirname "$0")/.."
CLEANUP=0
[ "${1:-}" = "--cleanup" ] && CLEANUP=1

scripts/bootstrap.sh
BIN=$PWD/.venv/bin
export OPENEAS_HOME=${OPENEAS_HOME:-$HOME/.openeas}
MODELS=${OPENEAS_QUICKSTART_MODELS:-$OPENEAS_HOME/quickstart}
CONFIG=examples/triton.config
SERVICE=$("$BIN/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["name"])' "$CONFIG")
field() { "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

echo "==> [1/5] fetch inception_graphdef into $MODELS and upload it to oss://triton-model-repo/models/"
if [ ! -f "$MODELS/inception_graphdef/1/model.graphdef" ]; then
  "$BIN/openeas" models fetch inception_graphdef "$MODELS"
fi
"$BIN/openeas" cp -r "$MODELS/inception_graphdef" oss://triton-model-repo/models/

echo "==> [2/5] start the platform and create the service from $CONFIG"
if ! "$BIN/eascmd" list >/dev/null 2>&1; then
  # shellcheck disable=SC2086 # OPENEAS_UP_ARGS is a list of flags
  "$BIN/openeas" up --detach ${OPENEAS_UP_ARGS:-}
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
else
  echo
  echo "The service is running: $URL (token $TOKEN)."
  echo "Query it again:   $BIN/python examples/query_inception.py --url $URL --token=$TOKEN"
  echo "Remove it:        $BIN/eascmd delete $SERVICE -y"
  echo "Stop everything:  $BIN/openeas down"
fi
