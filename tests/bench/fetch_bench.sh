#!/usr/bin/env bash
# Fetch throughput: `weightgate fetch` and the C++ client's FetchToFile
# (weightgate-cpp-example --out; concurrent range streams, CRC32C per chunk,
# sha256 of the whole file) against bare nginx + curl (sendfile, no checksum)
# serving the same stored blob as a static file, side by side in one run.
# Prints medians and ratios for one client and for 8 concurrent clients.
#   tests/bench/fetch_bench.sh [BUILD_DIR] [SIZE_MIB]   (default 1024 MiB)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
size_mib=${2:-1024}
reps=${REPS:-3}
"$root/scripts/install-deps.sh" bench >/dev/null
. "$root/tests/bench/bench_lib.sh"
bench_workdir fetch

nginx_port=$(free_port)

serve_checkpoint "$size_mib"
blob=$(ls "$work/store/blobs" | head -1)

mkdir -p "$work/www"
ln "$work/store/blobs/$blob" "$work/www/weights.safetensors"
cat > "$work/nginx.conf" <<NGINX
worker_processes 2;
user root;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  server {
    listen 127.0.0.1:$nginx_port;
    root $work/www;
  }
}
NGINX
nginx -c "$work/nginx.conf"
sleep 0.3

one_wg() { rm -f "$work/out.$1"*; wg fetch bench -o "$work/out.$1" >/dev/null; }
one_cpp() { rm -f "$work/cpp.$1"*; "$build/bin/weightgate-cpp-example" --server "127.0.0.1:$port" --out "$work/cpp.$1" bench >/dev/null 2>&1; }
one_curl() { curl -sf -o "$work/curl.$1" "http://127.0.0.1:$nginx_port/weights.safetensors"; }
timed() { local t0; t0=$(now); "$@"; echo "$(now) - $t0" | bc -l; }
# Waits for its own clients only (a bare `wait` would also wait for the server).
parallel() { local f=$1 pids=(); for i in $(seq 8); do $f "$i" & pids+=($!); done; wait "${pids[@]}"; }

: > "$work/wg1"; : > "$work/cpp1"; : > "$work/curl1"; : > "$work/wg8"; : > "$work/cpp8"; : > "$work/curl8"
# On a virtual machine, page-cache pages the guest has not used for a while
# are slow to touch again (the host backs them anew): whichever tool writes
# 8 GiB first after a pause pays for it. One unmeasured 8-client round warms
# the page cache, and the order rotates every repetition, so no tool always
# goes first.
parallel one_curl; rm -f "$work"/curl.*
parallel one_wg; rm -f "$work"/out.*
kinds=(wg cpp curl)
for r in $(seq "$reps"); do
  for k in 0 1 2; do
    kind=${kinds[$(( (r + k) % 3 ))]}
    timed "one_$kind" 0 >> "$work/${kind}1"
    rm -f "$work"/out.* "$work"/cpp.* "$work"/curl.*
  done
  for k in 0 1 2; do
    kind=${kinds[$(( (r + k) % 3 ))]}
    timed parallel "one_$kind" >> "$work/${kind}8"
    rm -f "$work"/out.* "$work"/cpp.* "$work"/curl.*
  done
done
bytes=$(stat -c %s "$work/store/blobs/$blob")
report() {
  local name=$1 file=$2 clients=$3
  local m; m=$(median < "$file")
  printf '%-34s median %6.3f s  %7.0f MiB/s\n' "$name" "$m" "$(echo "$bytes * $clients / 1048576 / $m" | bc -l)"
}
echo "blob: $((bytes >> 20)) MiB, $reps repetitions, order rotating, after one warm-up round; $(nproc) cores"
report "weightgate fetch, 1 client" "$work/wg1" 1
report "C++ client FetchToFile, 1 client" "$work/cpp1" 1
report "nginx + curl, 1 client" "$work/curl1" 1
report "weightgate fetch, 8 clients" "$work/wg8" 8
report "C++ client FetchToFile, 8 clients" "$work/cpp8" 8
report "nginx + curl, 8 clients" "$work/curl8" 8
ratio() { echo "$(median < "$work/$1") / $(median < "$work/$2")" | bc -l; }
printf 'ratio weightgate fetch / nginx+curl wall time: 1 client %.2fx, 8 clients %.2fx\n' \
  "$(ratio wg1 curl1)" "$(ratio wg8 curl8)"
printf 'ratio C++ FetchToFile / nginx+curl wall time:  1 client %.2fx, 8 clients %.2fx\n' \
  "$(ratio cpp1 curl1)" "$(ratio cpp8 curl8)"
