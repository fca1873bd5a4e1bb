#!/usr/bin/env bash
# Upload: `weightgate upload` of a torch.save checkpoint (receive, validate,
# normalise to safetensors, commit; all included) against `cp FILE DIR &&
# sync` of the same file, side by side in one run; plus an upload of a file
# that already is the canonical safetensors form (what `weightgate fetch`
# returns). Prints medians and ratios.
#   tests/bench/upload_bench.sh [BUILD_DIR] [SIZE_MIB]   (default 512 MiB)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
size_mib=${2:-512}
reps=${REPS:-3}
work=$(mktemp -d /tmp/wg-upload-bench.XXXXXX)
cleanup() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

/usr/bin/python3 - "$work" "$size_mib" <<'PY'
import json, sys, torch
work, size_mib = sys.argv[1], int(sys.argv[2])
n = 64
per = size_mib * (1 << 20) // 4 // n
sd = {f"layers.{i}.weight": torch.randn(per) for i in range(n)}
torch.save(sd, f"{work}/ckpt.pt")
json.dump({"tensors": {k: {"dtype": "F32", "shape": [per]} for k in sd}}, open(f"{work}/spec.json", "w"))
PY

"$build/bin/weightgate-server" --listen "127.0.0.1:$port" --metrics_listen "" --store "$work/store" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 100); do "$build/bin/weightgate" --server "127.0.0.1:$port" ls >/dev/null 2>&1 && break; sleep 0.1; done
wg() { "$build/bin/weightgate" --server "127.0.0.1:$port" "$@"; }
wg register bench --from "$work/spec.json" >/dev/null
wg upload bench "$work/ckpt.pt" >/dev/null
wg fetch bench -o "$work/canonical.safetensors" >/dev/null
mkdir -p "$work/copies"

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
timed() { local t0; t0=$(now); "$@" >/dev/null; echo "$(now) - $t0" | bc -l; }
# Every upload is a new version of the same bytes; drop them between runs so
# the store does not grow (blobs are content-addressed: one blob either way).
upload() { wg upload bench "$1"; }
copy() { cp "$1" "$work/copies/" && sync; }

: > "$work/up"; : > "$work/cp"; : > "$work/upst"
for r in $(seq "$reps"); do
  sync
  timed upload "$work/ckpt.pt" >> "$work/up"
  sync
  timed copy "$work/ckpt.pt" >> "$work/cp"
  rm -f "$work/copies/"*
  sync
  timed upload "$work/canonical.safetensors" >> "$work/upst"
done
echo "checkpoint: $size_mib MiB torch.save (64 F32 tensors), $reps repetitions, alternating; $(nproc) cores"
printf '%-44s median %6.3f s\n' "weightgate upload ckpt.pt" "$(median < "$work/up")"
printf '%-44s median %6.3f s\n' "weightgate upload canonical .safetensors" "$(median < "$work/upst")"
printf '%-44s median %6.3f s\n' "cp ckpt.pt DIR && sync" "$(median < "$work/cp")"
printf 'ratio upload / (cp && sync): torch.save %.2fx, canonical safetensors %.2fx\n' \
  "$(echo "$(median < "$work/up") / $(median < "$work/cp")" | bc -l)" \
  "$(echo "$(median < "$work/upst") / $(median < "$work/cp")" | bc -l)"
