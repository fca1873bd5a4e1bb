#!/usr/bin/env bash
# Runs every benchmark in tests/bench against BUILD_DIR (default build) and
# prints their figures. Each benchmark compares weightgate with what users run
# instead, side by side in the same run, and prints medians and ratios.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-build}
status=0
for bench in "$here"/*_bench.sh; do
  echo "== $(basename "$bench")"
  bash "$bench" "$build" || status=1
done
exit $status
