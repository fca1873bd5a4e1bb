# Shared by the fetch, Python-fetch and upload benchmarks: a scratch folder
# removed on exit, a free loopback port, a torch.save checkpoint of 64 fp32
# tensors with its JSON spec, and a server on a fresh store holding it.
# Source it after setting $build.

# bench_workdir NAME: $work, removed on exit with the server (and nginx, if
# the benchmark wrote $work/nginx.pid).
bench_workdir() {
  work=$(mktemp -d "/tmp/wg-$1-bench.XXXXXX")
  trap bench_cleanup EXIT
}
bench_cleanup() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null || true
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# make_checkpoint SIZE_MIB: $work/ckpt.pt and $work/spec.json.
make_checkpoint() {
  /usr/bin/python3 - "$work" "$1" <<'PY'
import json, sys, torch
work, size_mib = sys.argv[1], int(sys.argv[2])
n = 64
per = size_mib * (1 << 20) // 4 // n
sd = {f"layers.{i}.weight": torch.randn(per) for i in range(n)}
torch.save(sd, f"{work}/ckpt.pt")
json.dump({"tensors": {k: {"dtype": "F32", "shape": [per]} for k in sd}}, open(f"{work}/spec.json", "w"))
PY
}

# start_server PORT: a server on $work/store (pid in $server_pid), ready when
# this returns; `wg ARGS...` then runs the CLI against it.
start_server() {
  port=$1
  "$build/bin/weightgate-server" --listen "127.0.0.1:$port" --metrics_listen "" \
    --store "$work/store" 2>"$work/server.log" &
  server_pid=$!
  for _ in $(seq 100); do wg ls >/dev/null 2>&1 && break; sleep 0.1; done
}
wg() { "$build/bin/weightgate" --server "127.0.0.1:$port" "$@"; }

# serve_checkpoint SIZE_MIB: the checkpoint above, registered as model
# `bench` from its spec and uploaded once, on a fresh server.
serve_checkpoint() {
  make_checkpoint "$1"
  start_server "$(free_port)"
  wg register bench --from "$work/spec.json" >/dev/null
  wg upload bench "$work/ckpt.pt" >/dev/null
}
