#!/usr/bin/env bash
# The price of validating in worker processes: ping round trip, a small
# checkpoint validated in-process and in a worker (the difference is the
# per-validation overhead), worker start-up and recovery after a SIGKILL.
#
# usage: tests/bench/worker_bench.sh BUILD_DIR [RUNS]
# Needs /usr/bin/python3 with torch (writes the checkpoint once).
set -euo pipefail

BUILD_DIR=${1:?usage: worker_bench.sh BUILD_DIR [RUNS]}
RUNS=${2:-30}
BUILD_DIR=$(cd "$BUILD_DIR" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
DRIVER="$BUILD_DIR/tests/worker_roundtrip"
SERVER="$BUILD_DIR/bin/weightgate-server"
DIR="$BUILD_DIR/bench/worker"

[[ -x "$DRIVER" && -x "$SERVER" ]] || {
  echo "worker_bench: build the targets worker_roundtrip and weightgate-server" >&2
  exit 2
}
mkdir -p "$DIR"
if [[ ! -s "$DIR/dataparallel.pt" ]]; then
  /usr/bin/python3 "$HERE/../integration/tiny_model.py" make "$DIR"
fi
"$DRIVER" "$SERVER" "$DIR/reference.pt" "$DIR/dataparallel.pt" "$RUNS"
