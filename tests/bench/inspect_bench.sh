#!/usr/bin/env bash
# Whole process against whole process, in one run: `weightgate inspect FILE`
# against `torch.load(FILE, map_location="cpu")` in Debian's python3-torch,
# on a 1 GiB torch.save checkpoint of 256 tensors. Prints wall time and peak
# RSS medians and their ratios (targets: wall <= 0.05x, RSS <= 0.1x).
#
# usage: tests/bench/inspect_bench.sh BUILD_DIR [RUNS]
# Needs /usr/bin/time (Debian package `time`) and /usr/bin/python3 with torch.
set -euo pipefail

BUILD_DIR=${1:?usage: inspect_bench.sh BUILD_DIR [RUNS]}
RUNS=${2:-5}
BUILD_DIR=$(cd "$BUILD_DIR" && pwd)
WEIGHTGATE="$BUILD_DIR/bin/weightgate"
PYTHON=/usr/bin/python3
TIME=/usr/bin/time
DIR="$BUILD_DIR/bench"
FILE="$DIR/inspect_1gib_256.pt"

[[ -x "$WEIGHTGATE" ]] || { echo "inspect_bench: $WEIGHTGATE not built" >&2; exit 2; }
[[ -x "$TIME" ]] || { echo "inspect_bench: $TIME missing (install the Debian package 'time')" >&2; exit 2; }
"$PYTHON" -c 'import torch' 2>/dev/null || { echo "inspect_bench: $PYTHON has no torch" >&2; exit 2; }

mkdir -p "$DIR"
if [[ ! -s "$FILE" ]]; then
  echo "generating $FILE (256 x 4 MiB float32) ..."
  "$PYTHON" - "$FILE" <<'PY'
import collections, os, sys, torch
g = torch.Generator().manual_seed(0)
sd = collections.OrderedDict(
    (f"layers.{i}.weight", torch.randn(1024, 1024, generator=g)) for i in range(256))
tmp = sys.argv[1] + ".tmp"
torch.save(sd, tmp)
os.replace(tmp, sys.argv[1])
PY
fi
SIZE=$(stat -c %s "$FILE")

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# run_once NAME CMD...: appends "wall_seconds peak_rss_kib" to $TMP/NAME.
run_once() {
  local name=$1
  shift
  local start end
  start=$(date +%s%N)
  "$TIME" -f '%M' -o "$TMP/rss" "$@" >/dev/null 2>"$TMP/stderr" || {
    echo "inspect_bench: '$*' failed:" >&2
    cat "$TMP/stderr" >&2
    exit 1
  }
  end=$(date +%s%N)
  echo "$(( (end - start) / 1000 )) $(tail -n1 "$TMP/rss")" >>"$TMP/$name"
}

wg() { run_once weightgate "$WEIGHTGATE" inspect "$FILE"; }
tl() { run_once torch "$PYTHON" -c 'import torch, sys; torch.load(sys.argv[1], map_location="cpu")' "$FILE"; }

# Warm the page cache for both, then alternate.
wg; tl
: >"$TMP/weightgate"
: >"$TMP/torch"
for ((i = 0; i < RUNS; i++)); do
  wg
  tl
done

median() {  # median of column $2 of file $1
  sort -n -k"$2","$2" "$1" | awk -v c="$2" '{v[NR]=$c} END {m=(NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2; print m}'
}

wg_wall=$(median "$TMP/weightgate" 1)
wg_rss=$(median "$TMP/weightgate" 2)
tl_wall=$(median "$TMP/torch" 1)
tl_rss=$(median "$TMP/torch" 2)

echo "inspect benchmark: $FILE ($SIZE bytes, 256 tensors), $RUNS alternating runs, medians"
awk -v a="$wg_wall" -v b="$wg_rss" -v c="$tl_wall" -v d="$tl_rss" 'BEGIN {
  printf "  %-34s wall %8.1f ms   peak RSS %8.1f MiB\n", "weightgate inspect FILE", a/1000, b/1024
  printf "  %-34s wall %8.1f ms   peak RSS %8.1f MiB\n", "python3 torch.load(FILE, cpu)", c/1000, d/1024
  wr = a / c; rr = b / d
  printf "  ratio (weightgate / torch.load)    wall %8.4fx  peak RSS %8.4fx\n", wr, rr
  printf "  targets: wall <= 0.05x %s, RSS <= 0.1x %s\n", (wr <= 0.05 ? "MET" : "MISSED"), (rr <= 0.1 ? "MET" : "MISSED")
}'
