#!/usr/bin/env bash
# Matcher figures (large state_dicts, a hostile shared-container DAG); see match_bench.py.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec /usr/bin/python3 "$here/match_bench.py" "${1:-build}"
