"""Load and fault test: two replicas on one store under concurrent fetches,
uploads through both replicas and a stream of INVALID uploads; one replica
is SIGKILLed mid-run and restarted. Afterwards every acknowledged version is
fetchable with its digest, --fsck is clean and server RSS stayed bounded.

Bounded in count and time. WG_LOAD=full runs the full form (make load):
64 concurrent fetch streams, 2x4 concurrent uploads (8 versions), 200
INVALID uploads; the default short form (make test) runs a smaller mix.
Prints the figures the README quotes."""
import concurrent.futures as futures
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from harness import SERVER, WeightgateServer, run_cli  # noqa: E402

FULL = os.environ.get("WG_LOAD") == "full"
FETCH_STREAMS = 64 if FULL else 16
UPLOADS_PER_REPLICA = 4 if FULL else 2
INVALID_UPLOADS = 200 if FULL else 24
TENSOR_FLOATS = (1 << 20) if FULL else (1 << 18)  # x4 tensors x4 bytes: 16 MiB or 4 MiB
RSS_LIMIT_MB = 1536
TIME_LIMIT_S = 600


def safetensors(path, tensors):
    header, data = {}, bytearray()
    for name, (shape, raw) in tensors.items():
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class RssSampler(threading.Thread):
    def __init__(self, servers):
        super().__init__(daemon=True)
        self.servers = servers
        self.peak = 0.0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            for s in self.servers:
                if s.proc is not None and s.proc.poll() is None:
                    self.peak = max(self.peak, rss_mb(s.proc.pid))
            time.sleep(0.1)


class LoadTest(unittest.TestCase):
    def test_two_replicas_under_load_and_a_crash(self):
        started = time.time()
        with tempfile.TemporaryDirectory(prefix="wg-load-") as d:
            store = os.path.join(d, "store")
            names = [f"layer{i}.weight" for i in range(4)]
            with open(os.path.join(d, "spec.json"), "w") as f:
                json.dump({"tensors": {n: {"dtype": "F32", "shape": [TENSOR_FLOATS]} for n in names}}, f)
            checkpoints = []
            for i in range(2 * UPLOADS_PER_REPLICA):
                path = os.path.join(d, f"v{i}.safetensors")
                value = struct.pack("<f", float(i + 1))
                safetensors(path, {n: ([TENSOR_FLOATS], value * TENSOR_FLOATS) for n in names})
                checkpoints.append(path)
            junk = os.path.join(d, "junk.safetensors")
            safetensors(junk, {"unrelated": ([2], b"\0" * 8)})

            args = ["--access_log=false", "--stalled_reader_timeout_ms=20000"]
            a = WeightgateServer(store=store, extra_args=args).start()
            b = WeightgateServer(store=store, extra_args=args).start()
            replicas = [a, b]
            sampler = RssSampler(replicas)
            sampler.start()
            try:
                self.assertEqual(a.cli("register", "load", "--from", os.path.join(d, "spec.json")).returncode, 0)
                r = a.cli("--json", "upload", "load", checkpoints[0])
                self.assertEqual(r.returncode, 0, r.stderr)
                acked = {}  # version -> blob sha256
                v = json.loads(r.stdout)["version"]
                acked[int(v["version"])] = v["blob_sha256"]
                lock = threading.Lock()
                counts = {"fetch_ok": 0, "fetch_failed": 0, "fetch_bytes": 0, "upload_ok": 0,
                          "upload_failed": 0, "invalid_rejected": 0, "invalid_other": 0}

                acked_paths = {checkpoints[0]}

                def upload(replica, path):
                    r = replica.cli("--json", "upload", "load", path, timeout=300)
                    with lock:
                        if r.returncode == 0:
                            version = json.loads(r.stdout)["version"]
                            acked[int(version["version"])] = version["blob_sha256"]
                            acked_paths.add(path)
                            counts["upload_ok"] += 1
                        else:
                            counts["upload_failed"] += 1

                def invalid(replica):
                    r = replica.cli("upload", "load", junk, timeout=120)
                    with lock:
                        counts["invalid_rejected" if r.returncode == 1 else "invalid_other"] += 1

                def fetch(replica, i):
                    out = os.path.join(d, f"fetch{i}.safetensors")
                    r = replica.cli("fetch", "load@1", "-o", out, timeout=300)
                    with lock:
                        if r.returncode == 0:
                            counts["fetch_ok"] += 1
                            counts["fetch_bytes"] += os.path.getsize(out)
                        else:
                            counts["fetch_failed"] += 1
                    if os.path.exists(out):
                        os.unlink(out)

                load_start = time.time()
                with futures.ThreadPoolExecutor(max_workers=FETCH_STREAMS + 2 * UPLOADS_PER_REPLICA + 8) as pool:
                    jobs = [pool.submit(fetch, replicas[i % 2], i) for i in range(FETCH_STREAMS)]
                    jobs += [pool.submit(upload, replicas[i % 2], checkpoints[i])
                             for i in range(1, 2 * UPLOADS_PER_REPLICA)]
                    invalid_pool = futures.ThreadPoolExecutor(max_workers=8)
                    jobs += [invalid_pool.submit(invalid, replicas[i % 2]) for i in range(INVALID_UPLOADS)]
                    # Mid-run (fetches, uploads and INVALID uploads in flight): SIGKILL
                    # replica b, then restart it on the same store.
                    deadline = time.time() + 30
                    while time.time() < deadline:
                        with lock:
                            done = counts["invalid_rejected"] + counts["invalid_other"]
                            progressed = counts["upload_ok"] + counts["fetch_ok"] + done
                        if progressed >= 1:
                            break
                        time.sleep(0.05)
                    b.proc.send_signal(signal.SIGKILL)
                    b.proc.wait()
                    killed_at = time.time() - load_start
                    b.start()
                    for j in jobs:
                        j.result(timeout=TIME_LIMIT_S)
                    invalid_pool.shutdown()
                    # Uploads that died with b are retried through a.
                    retried = 0
                    for path in checkpoints:
                        if path in acked_paths:
                            continue
                        r = a.cli("--json", "upload", "load", path, timeout=300)
                        self.assertEqual(r.returncode, 0, r.stderr)
                        version = json.loads(r.stdout)["version"]
                        acked[int(version["version"])] = version["blob_sha256"]
                        acked_paths.add(path)
                        retried += 1
                load_seconds = time.time() - load_start

                # Every acknowledged version is fetchable, through either replica, with its digest.
                for version, sha in sorted(acked.items()):
                    for replica in replicas:
                        out = os.path.join(d, f"check{version}.safetensors")
                        r = replica.cli("fetch", f"load@{version}", "-o", out, timeout=120)
                        self.assertEqual(r.returncode, 0, r.stderr)
                        with open(out, "rb") as f:
                            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), sha)
                        os.unlink(out)
                self.assertEqual(len(set(acked.values())), 2 * UPLOADS_PER_REPLICA)
                self.assertEqual(counts["invalid_rejected"] + counts["invalid_other"], INVALID_UPLOADS)
                self.assertGreater(counts["invalid_rejected"], INVALID_UPLOADS // 2)
                self.assertGreater(counts["fetch_ok"], FETCH_STREAMS // 2)
            finally:
                sampler.stop.set()
                for s in replicas:
                    s.stop()
            fsck = subprocess.run([SERVER, "--store", store, "--fsck"], capture_output=True, text=True,
                                  timeout=300)
            self.assertEqual(fsck.returncode, 0, fsck.stdout)
            elapsed = time.time() - started
            self.assertLess(sampler.peak, RSS_LIMIT_MB)
            self.assertLess(elapsed, TIME_LIMIT_S)
            print(f"\nload ({'full' if FULL else 'short'}): {FETCH_STREAMS} concurrent fetches of "
                  f"{4 * TENSOR_FLOATS * 4 / 2**20:.0f} MiB, {2 * UPLOADS_PER_REPLICA} uploads through 2 replicas, "
                  f"{INVALID_UPLOADS} INVALID uploads, replica b SIGKILLed at {killed_at:.1f} s and restarted")
            print(f"  load phase {load_seconds:.1f} s; fetches ok {counts['fetch_ok']}, failed (killed replica) "
                  f"{counts['fetch_failed']}, {counts['fetch_bytes'] / 2**20:.0f} MiB fetched in the load phase")
            print(f"  uploads ok {counts['upload_ok']}, lost with the killed replica {counts['upload_failed']} "
                  f"(retried {retried}); INVALID rejected with exit 1: {counts['invalid_rejected']}, other: "
                  f"{counts['invalid_other']}")
            print(f"  acknowledged versions {len(acked)}, all fetchable with their sha256 through both replicas; "
                  f"fsck: {fsck.stdout.strip().splitlines()[-1]}")
            print(f"  peak server RSS {sampler.peak:.0f} MiB (limit {RSS_LIMIT_MB}); total {elapsed:.1f} s")


if __name__ == "__main__":
    unittest.main()
