#!/usr/bin/env bash
# Install the benchmark peers into their own virtual environments under benchmarks/.peers:
# real Triton 2.51 (inside nvidia-pytriton 0.7.0) and MLServer 1.7.1.
set -euo pipefail
cd "$(dirname "$0")"
PEERS=${OPENEAS_PEERS_DIR:-.peers}
mkdir -p "$PEERS"
if [ ! -x "$PEERS/triton/bin/python" ]; then python3.11 -m venv "$PEERS/triton"; fi
"$PEERS/triton/bin/pip" install -q 'nvidia-pytriton==0.7.0' 'numpy<2'
if [ ! -x "$PEERS/mlserver/bin/python" ]; then python3.11 -m venv "$PEERS/mlserver"; fi
"$PEERS/mlserver/bin/pip" install -q 'mlserver==1.7.1' 'uvloop<0.22'
# The AWS CLI (v1, from PyPI) for benchmarks/storage_sync.py (`aws s3 sync`).
if [ ! -x "$PEERS/awscli/bin/python" ]; then python3.11 -m venv "$PEERS/awscli"; fi
"$PEERS/awscli/bin/pip" install -q 'awscli>=1.36,<2'
echo "peers installed in $PEERS"
