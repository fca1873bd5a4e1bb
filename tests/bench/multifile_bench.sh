#!/usr/bin/env bash
# Peak RSS of weightgate-normalize validating (and writing) a sharded set
# against one file of the size of one shard: a 2 GiB HF safetensors set (two
# 1 GiB shards + index) vs a 1 GiB single file, plus a tiny checkpoint as the
# baseline (libtorch and the binary). Figures are medians of REPS runs.
#
#   tests/bench/multifile_bench.sh BUILD_DIR [REPS] [GIB]
#
# Target: the set's RSS growth over the baseline stays within the single
# file's growth (+ 64 MiB): memory is bounded by the largest piece, not the set.
set -euo pipefail
BUILD_DIR=$(cd "${1:?usage: multifile_bench.sh BUILD_DIR [REPS] [GIB]}" && pwd)
REPS=${2:-3}
GIB=${3:-2}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=/usr/bin/python3
BIN="$BUILD_DIR/bin/weightgate-normalize"
WORK="$BUILD_DIR/bench/multifile"
[ -x "$BIN" ] || { echo "missing $BIN (build target weightgate-normalize)" >&2; exit 2; }
mkdir -p "$WORK"
if [ ! -s "$WORK/sharded/model.safetensors.index.json" ]; then
  echo "generating a $GIB GiB sharded set under $WORK ..." >&2
  "$PY" "$HERE/multifile_bench.py" gen "$WORK" "$GIB"
fi
: > "$WORK/results"
run() {  # label input spec
  rm -f "$WORK/out.safetensors"
  /usr/bin/time -f '%e %M' -o "$WORK/time" "$BIN" "$2" --spec "$3" -o "$WORK/out.safetensors" \
    > "$WORK/log.$1" 2>&1 || { echo "$1 failed:" >&2; cat "$WORK/log.$1" >&2; exit 1; }
  grep -q "VALID" "$WORK/log.$1" || { cat "$WORK/log.$1" >&2; exit 1; }
  echo "$1 $(tail -1 "$WORK/time")" >> "$WORK/results"
}
for i in $(seq 1 "$REPS"); do
  run tiny "$WORK/tiny.safetensors" "$WORK/tiny.json"
  run single "$WORK/single/model.safetensors" "$WORK/single.json"
  run sharded "$WORK/sharded" "$WORK/sharded.json"
done
"$PY" - "$WORK/results" "$HERE" <<'PYEOF'
import sys
sys.path.insert(0, sys.argv[2])
from bench_results import medians
rows, med = medians(sys.argv[1])
base = med["tiny"][1]
for k in ("tiny", "single", "sharded"):
    w, r = med[k]
    print("%-8s wall %6.2f s  peak RSS %7.1f MiB  growth %7.1f MiB" % (k, w, r / 1024, (r - base) / 1024))
ok = med["sharded"][1] - base <= med["single"][1] - base + 64 * 1024
print("sharded growth within single-file growth + 64 MiB:", "OK" if ok else "FAIL")
sys.exit(0 if ok else 1)
PYEOF
