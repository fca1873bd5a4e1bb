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
. "$root/tests/bench/bench_lib.sh"
bench_workdir upload

serve_checkpoint "$size_mib"
wg fetch bench -o "$work/canonical.safetensors" >/dev/null
mkdir -p "$work/copies"

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
