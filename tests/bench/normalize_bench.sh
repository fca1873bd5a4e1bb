#!/usr/bin/env bash
# Validate + normalise a 1 GiB fp32 DataParallel checkpoint to fp16 safetensors
# with weightgate-normalize, side by side with the Python route a user would
# script (torch.load, strip prefix, load_state_dict strict, half(), torch.save),
# alternating, REPS times each; wall time and peak RSS via /usr/bin/time.
#
#   tests/bench/normalize_bench.sh BUILD_DIR [REPS]
#
# Targets: weightgate wall <= 0.5x the Python route's; peak RSS growth (1 GiB
# run minus a tiny-checkpoint run of the same binary, i.e. what the checkpoint
# adds on top of loading libtorch) <= 256 MiB.
set -euo pipefail
BUILD_DIR=$(cd "${1:?usage: normalize_bench.sh BUILD_DIR [REPS]}" && pwd)
REPS=${2:-5}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=/usr/bin/python3
BIN="$BUILD_DIR/bin/weightgate-normalize"
WORK="$BUILD_DIR/bench/normalize"
mkdir -p "$WORK"
[ -x "$BIN" ] || { echo "missing $BIN (build target weightgate-normalize)" >&2; exit 2; }

if [ ! -s "$WORK/dp_1g.pt" ]; then
  echo "generating 1 GiB checkpoint under $WORK ..." >&2
  "$PY" "$HERE/normalize_bench.py" gen "$WORK"
fi
CKPT="$WORK/dp_1g.pt"
ls -l "$CKPT" >&2

measure() {  # label cmd... -> appends "label wall_s maxrss_kib" to $WORK/results
  local label=$1; shift
  local t="$WORK/time.$label"
  # Each run writes a fresh output and starts with no dirty pages left by the
  # previous run, so nobody pays for another run's writeback or for freeing
  # (and, on a `discard` mount, trimming) the blocks of an old output.
  rm -f "$WORK"/out.safetensors "$WORK"/out_py.pt "$WORK"/out_lean.pt "$WORK"/tiny.safetensors
  sync
  /usr/bin/time -f '%e %M' -o "$t" "$@" > "$WORK/log.$label" 2>&1 || {
    echo "$label failed:" >&2; cat "$WORK/log.$label" >&2; exit 1; }
  echo "$label $(tail -1 "$t")" >> "$WORK/results"
}

: > "$WORK/results"
# Warm the page cache the same way for everyone.
cat "$CKPT" > /dev/null
for i in $(seq 1 "$REPS"); do
  measure weightgate "$BIN" "$CKPT" --spec "$WORK/spec_fp16.json" -o "$WORK/out.safetensors" --dtype cast
  measure python "$PY" "$HERE/normalize_bench.py" route "$CKPT" "$WORK/out_py.pt"
  measure python_lean "$PY" "$HERE/normalize_bench.py" lean "$CKPT" "$WORK/out_lean.pt"
  measure weightgate_tiny "$BIN" "$WORK/tiny.pt" --spec "$WORK/tiny_spec.json" -o "$WORK/tiny.safetensors" --dtype cast
done
grep -q NORMALIZED "$WORK/log.weightgate" || { echo "unexpected verdict:" >&2; cat "$WORK/log.weightgate" >&2; exit 1; }

"$PY" - "$WORK/results" "$HERE" <<'PYEOF'
import sys
sys.path.insert(0, sys.argv[2])
from bench_results import medians
rows, med = medians(sys.argv[1])
for k in ("weightgate", "python", "python_lean", "weightgate_tiny"):
    w, r = med[k]
    print("%-16s n=%d  wall median %6.2f s  peak RSS median %7.1f MiB  (walls: %s)" % (
        k, len(rows[k]), w, r / 1024, " ".join("%.2f" % x for x, _ in rows[k])))
wg, py, lean, tiny = med["weightgate"], med["python"], med["python_lean"], med["weightgate_tiny"]
growth = (wg[1] - tiny[1]) / 1024
print("wall ratio weightgate/python       %.2fx (target <= 0.50x)" % (wg[0] / py[0]))
print("wall ratio weightgate/python_lean  %.2fx (no model, no strict check)" % (wg[0] / lean[0]))
print("peak RSS growth (1 GiB run - tiny run) %.1f MiB (target <= 256 MiB)" % growth)
ok = wg[0] <= 0.5 * py[0] and growth <= 256
print("RESULT", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PYEOF
