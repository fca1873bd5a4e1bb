#!/usr/bin/env bash
# Python client: weightgate.fetch_state_dict (range streams into one buffer,
# CRC32C per chunk, sha256) against `weightgate fetch` of the same model to a
# file, side by side in one run, with the peak RSS of each above its
# process's baseline (for Python: after `import torch, weightgate`). A
# torch.load of a local copy of the same weights is the reference line.
#   tests/bench/python_fetch_bench.sh [BUILD_DIR] [SIZE_MIB]   (default 512 MiB)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
size_mib=${2:-512}
reps=${REPS:-3}
. "$root/tests/bench/bench_lib.sh"
bench_workdir pyfetch

serve_checkpoint "$size_mib"
wg fetch bench -o "$work/local.pt" --format pt >/dev/null

# Each line: seconds and peak RSS above the baseline, in MiB.
cat > "$work/py_fetch.py" <<'PY'
import resource, sys, time
import torch, weightgate
def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / (1 << 20)
base = rss_mib()
t0 = time.perf_counter()
if sys.argv[1] == "fetch_state_dict":
    sd = weightgate.fetch_state_dict("bench", server=sys.argv[2])
else:
    sd = torch.load(sys.argv[2], weights_only=True)
t = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
assert len(sd) == 64
print(f"{t:.4f} {peak - base:.1f}")
PY
cli_fetch() {
  rm -f "$work/out.st"*
  /usr/bin/time -f "%e %M" -o "$work/time" "$build/bin/weightgate" --server "127.0.0.1:$port" fetch bench -o "$work/out.st" >/dev/null
  read -r secs kib < "$work/time"
  echo "$secs $(echo "$kib / 1024" | bc -l)"
}
py() { PYTHONPATH="$build/python" /usr/bin/python3 "$work/py_fetch.py" "$@"; }

: > "$work/cli"; : > "$work/py"; : > "$work/load"
for r in $(seq "$reps"); do
  cli_fetch >> "$work/cli"
  py fetch_state_dict "127.0.0.1:$port" >> "$work/py"
  py torch_load "$work/local.pt" >> "$work/load"
done
col() { awk -v c="$2" '{print $c}' "$work/$1" | median; }
echo "model: $size_mib MiB (64 F32 tensors), $reps repetitions, alternating; $(nproc) cores"
printf '%-40s median %6.3f s  peak RSS %7.1f MiB (whole process)\n' "weightgate fetch -o FILE" "$(col cli 1)" "$(col cli 2)"
printf '%-40s median %6.3f s  peak RSS %7.1f MiB above baseline\n' "weightgate.fetch_state_dict" "$(col py 1)" "$(col py 2)"
printf '%-40s median %6.3f s  peak RSS %7.1f MiB above baseline\n' "torch.load(local copy) (reference)" "$(col load 1)" "$(col load 2)"
printf 'ratio fetch_state_dict / weightgate fetch: %.2fx; RSS above baseline - model size: %.1f MiB\n' \
  "$(echo "$(col py 1) / $(col cli 1)" | bc -l)" "$(echo "$(col py 2) - $size_mib" | bc -l)"
