"""Hostile uploads against a running server, and validation workers dying.

HostileStormTest: 200 hostile uploads (every class of
tests/fixtures/make_hostile_fixtures.py: amplification, shared-subtree
flattening, matcher wrappers, long keys, code-running globals, zip bombs,
truncated and garbage files) interleaved with 8 valid uploads and 16 fetch
streams. Every valid request succeeds; every hostile one gets a clear error
within 5 s; the server's peak RSS stays under RSS_BOUND_MIB (printed); no
payload ever runs (none may create the marker file).

WorkerCrashTest: a validation worker SIGKILLed mid-request, and one crashing
inside TorchScript loading (a test hook of the worker): that request fails
clearly, the next one succeeds, and the server process is the same.

WG_HOSTILE_UPLOADS (default 200) scales the storm; `make load` runs it longer.
"""
import concurrent.futures
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import grpc

from harness import SOURCE_DIR, TORCH_PYTHON, WeightgateServer
from weightgate.v1 import registry_pb2, registry_pb2_grpc, stream_pb2, stream_pb2_grpc, types_pb2

HERE = os.path.dirname(os.path.abspath(__file__))
HOSTILE_UPLOADS = int(os.environ.get("WG_HOSTILE_UPLOADS", "200"))
VALID_UPLOADS = 8
FETCH_STREAMS = 16
# Client threads sending hostile uploads: twice the workers, so a request
# waits for at most one other per worker.
HOSTILE_CLIENTS = 4
WORKERS = 2
CLEAR_ERROR_SECONDS = 5.0
# Peak RSS of the server process (VmHWM). The server maps libtorch but never
# parses an upload itself, so hostile files must not move it.
RSS_BOUND_MIB = 256
CHUNK = 64 << 10

# The model every hostile file is uploaded to: the generator's valid
# checkpoint is nn.Linear(3, 2) as `fc`; long keys end in `.gamma`.
LINEAR_SPEC = {"tensors": {"fc.weight": {"dtype": "F32", "shape": [2, 3]},
                           "fc.bias": {"dtype": "F32", "shape": [2]}}}


def chunks(header, path, request_type):
    yield request_type(header=header)
    with open(path, "rb") as f:
        while True:
            data = f.read(CHUNK)
            if not data:
                return
            yield request_type(chunk=data)


def register(stub, model_id, path, policy=None, timeout=60):
    header = registry_pb2.RegisterModelHeader(model_id=model_id, replace=True,
                                              total_bytes=os.path.getsize(path))
    if policy is not None:
        header.policy.CopyFrom(policy)
    return stub.RegisterModel(chunks(header, path, registry_pb2.RegisterModelRequest),
                              timeout=timeout)


def upload(stub, model_id, path, timeout=60):
    header = registry_pb2.UploadHeader(model_id=model_id, total_bytes=os.path.getsize(path),
                                       filename=os.path.basename(path))
    return stub.UploadCheckpoint(chunks(header, path, registry_pb2.UploadRequest), timeout=timeout)


def validate(stub, model_id, path, timeout=60):
    header = registry_pb2.UploadHeader(model_id=model_id, total_bytes=os.path.getsize(path))
    return stub.ValidateCheckpoint(chunks(header, path, registry_pb2.UploadRequest),
                                   timeout=timeout)


def report_of(error):
    """The ValidationReport an INVALID upload carries in its status details."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            report = types_pb2.ValidationReport()
            report.ParseFromString(value)
            return report
    return None


def clear_error(error):
    """'' when `error` is a clear refusal, else what is wrong with it. (INVALID
    reports come back as OK responses; older servers sent FAILED_PRECONDITION.)"""
    code, message = error.code(), error.details() or ""
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        report = report_of(error)
        if report is None or report.verdict != types_pb2.INVALID or not report.reasons:
            return f"FAILED_PRECONDITION without an INVALID report: {message}"
        return ""
    if code == grpc.StatusCode.INTERNAL:
        return "" if "validation worker crashed" in message else f"INTERNAL: {message}"
    if code == grpc.StatusCode.INVALID_ARGUMENT and message:
        return ""
    return f"{code.name}: {message}"


def fetch_all(stub, ref):
    """Streams ref; returns (manifest, sha256 of the bytes, byte count)."""
    digest, count, manifest = hashlib.sha256(), 0, None
    for message in stub.FetchWeights(stream_pb2.FetchRequest(ref=ref), timeout=60):
        if message.HasField("manifest"):
            manifest = message.manifest
        else:
            if message.chunk.offset != count:
                raise AssertionError(f"chunk at {message.chunk.offset}, expected {count}")
            digest.update(message.chunk.data)
            count += len(message.chunk.data)
    return manifest, digest.hexdigest(), count


def proc_status(pid, field):
    """A /proc/PID/status field in bytes (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def children(pid):
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
        except FileNotFoundError:
            pass
    return found


MAKE_TINY = """
import os, sys
sys.path.insert(0, sys.argv[1])
import torch
from tiny_model import TinyNet, make
make(sys.argv[2])
torch.manual_seed(0)
torch.jit.script(TinyNet().eval()).save(os.path.join(sys.argv[2], "scripted.pt"))
"""

FIXTURES = {}


def setUpModule():
    """One set of fixtures for every test here: torch starts once."""
    tmp = tempfile.TemporaryDirectory(prefix="wg-hostile-")
    hostile = os.path.join(tmp.name, "hostile")
    subprocess.run([sys.executable, os.path.join(SOURCE_DIR, "tests", "fixtures",
                                                 "make_hostile_fixtures.py"), hostile],
                   check=True, capture_output=True, timeout=120)
    tiny = os.path.join(tmp.name, "tiny")
    os.makedirs(tiny)
    r = subprocess.run([TORCH_PYTHON, "-c", MAKE_TINY, HERE, tiny], capture_output=True,
                       text=True, timeout=300)
    if r.returncode != 0:
        raise AssertionError(r.stderr)
    with open(os.path.join(hostile, "manifest.json")) as f:
        manifest = json.load(f)
    FIXTURES.update(tmp=tmp, hostile=hostile, tiny=tiny, manifest=manifest)


def tearDownModule():
    FIXTURES["tmp"].cleanup()


class HostileStormTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.hostile, cls.tiny = FIXTURES["hostile"], FIXTURES["tiny"]
        cls.manifest = FIXTURES["manifest"]
        cls.marker = os.path.join(cls.hostile, "PWNED")
        cls.server = WeightgateServer(extra_args=[
            "--validation_workers", str(WORKERS),
            "--validation_memory_bytes", str(256 << 20),
            "--validation_timeout", "2s",
            "--max_pending_validations", "64"]).start()
        cls.channel = grpc.insecure_channel(cls.server.address)
        cls.registry = registry_pb2_grpc.ModelRegistryStub(cls.channel)
        cls.stream = stream_pb2_grpc.WeightStreamStub(cls.channel)
        spec = os.path.join(cls.tiny, "linear.json")
        with open(spec, "w") as f:
            json.dump(LINEAR_SPEC, f)
        policy = types_pb2.NormalizationPolicy(
            rename_rules=[types_pb2.RenameRule(pattern=r"(.*)\.gamma$", replacement="$1.weight")])
        register(cls.registry, "linear", spec, policy)
        register(cls.registry, "tiny", os.path.join(cls.tiny, "reference.pt"))
        first = upload(cls.registry, "tiny", os.path.join(cls.tiny, "dataparallel.pt"))
        cls.blob_sha256 = first.version.blob_sha256

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        code = cls.server.stop()
        assert code == 0, cls.server.log()

    def test_storm(self):
        hostile = sorted(n for n, m in self.manifest.items() if m["reason"])
        classes = {self.manifest[n]["class"] for n in hostile}
        for cls in ("amplification", "dag_flatten", "matcher_wrappers", "long_key", "code_global",
                    "zip_bomb", "truncated", "garbage"):
            self.assertIn(cls, classes)
        jobs = [("hostile", hostile[i % len(hostile)]) for i in range(HOSTILE_UPLOADS)]
        random.Random(7).shuffle(jobs)
        # Valid uploads and fetch streams start spread over the storm.
        others = [("valid", None)] * VALID_UPLOADS + [("fetch", None)] * FETCH_STREAMS
        random.Random(8).shuffle(others)
        pid = self.server.proc.pid

        peak = {"rss": 0}
        stop = threading.Event()

        def sample_rss():
            while not stop.is_set():
                peak["rss"] = max(peak["rss"], proc_status(pid, "VmRSS"))
                time.sleep(0.05)

        def run_hostile(name):
            start = time.monotonic()
            try:
                response = upload(self.registry, "linear", os.path.join(self.hostile, name),
                                  timeout=30)
                seconds = time.monotonic() - start
                # An INVALID checkpoint is answered OK with the report and no version.
                report = response.report
                if (report.verdict == types_pb2.INVALID and report.reasons
                        and not response.HasField("version")):
                    return name, seconds, "", ",".join(report.reasons)
                return name, seconds, f"stored as version {response.version.version}", None
            except grpc.RpcError as e:
                seconds = time.monotonic() - start
                report = report_of(e)
                label = ",".join(report.reasons) if report is not None else e.code().name
                return name, seconds, clear_error(e), label

        def run_other(kind):
            if kind == "valid":
                response = upload(self.registry, "tiny", os.path.join(self.tiny, "dataparallel.pt"))
                self.assertTrue(response.HasField("version"))
                return kind, response.report.verdict
            manifest, sha, count = fetch_all(self.stream, "tiny")
            self.assertEqual(count, manifest.total_bytes)
            self.assertEqual(sha, manifest.blob_sha256)
            return kind, None

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        storm_start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(HOSTILE_CLIENTS) as hostile_pool, \
                concurrent.futures.ThreadPoolExecutor(4) as other_pool:
            hostile_futures = []
            other_futures = []
            spacing = max(1, len(jobs) // (len(others) + 1))
            for i, (_, name) in enumerate(jobs):
                hostile_futures.append(hostile_pool.submit(run_hostile, name))
                if i % spacing == spacing - 1 and len(other_futures) < len(others):
                    other_futures.append(other_pool.submit(run_other, others[len(other_futures)][0]))
            while len(other_futures) < len(others):
                other_futures.append(other_pool.submit(run_other, others[len(other_futures)][0]))
            results = [f.result() for f in hostile_futures]
            other_results = [f.result() for f in other_futures]
        storm_seconds = time.monotonic() - storm_start
        stop.set()
        sampler.join()

        hwm = proc_status(pid, "VmHWM")
        by_outcome = {}
        for name, seconds, problem, label in results:
            key = (self.manifest[name]["class"], label or "-")
            by_outcome[key] = by_outcome.get(key, 0) + 1
        slowest = max(results, key=lambda r: r[1])
        print(f"\nhostile storm: {len(results)} hostile uploads, {VALID_UPLOADS} valid uploads, "
              f"{FETCH_STREAMS} fetch streams in {storm_seconds:.1f} s; slowest hostile "
              f"{slowest[1]:.2f} s ({slowest[0]}); server RSS peak {hwm / 2**20:.0f} MiB "
              f"(sampled {peak['rss'] / 2**20:.0f} MiB, bound {RSS_BOUND_MIB} MiB)", file=sys.stderr)
        for (cls, label), n in sorted(by_outcome.items()):
            print(f"  {cls:18s} {label:40s} {n}", file=sys.stderr)

        problems = [f"{name}: {problem}" for name, _, problem, _ in results if problem]
        self.assertEqual(problems, [])
        slow = [f"{name}: {seconds:.2f} s" for name, seconds, _, _ in results
                if seconds >= CLEAR_ERROR_SECONDS]
        self.assertEqual(slow, [])
        for kind, verdict in other_results:
            if kind == "valid":
                self.assertIn(verdict, (types_pb2.VALID, types_pb2.NORMALIZED))
        self.assertLess(hwm, RSS_BOUND_MIB << 20)
        self.assertFalse(os.path.exists(self.marker), "a payload ran")
        # Same process, still serving.
        self.assertIsNone(self.server.proc.poll())
        self.assertEqual(self.server.proc.pid, pid)
        response = upload(self.registry, "tiny", os.path.join(self.tiny, "training.pt"))
        self.assertIn(response.report.verdict, (types_pb2.VALID, types_pb2.NORMALIZED))


class WorkerCrashTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = FIXTURES["tiny"]
        cls.scripted = os.path.join(cls.dir, "scripted.pt")
        cls.server = WeightgateServer(
            extra_args=["--validation_workers", "1"],
            env={"WEIGHTGATE_TEST_WORKER_DELAY_MS": "1500",
                 "WEIGHTGATE_TEST_CRASH_IN_TORCHSCRIPT": "1"}).start()
        cls.channel = grpc.insecure_channel(cls.server.address)
        cls.registry = registry_pb2_grpc.ModelRegistryStub(cls.channel)
        register(cls.registry, "tiny", os.path.join(cls.dir, "reference.pt"))

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        code = cls.server.stop()
        assert code == 0, cls.server.log()

    def test_sigkill_mid_request(self):
        pid = self.server.proc.pid
        checkpoint = os.path.join(self.dir, "dataparallel.pt")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(validate, self.registry, "tiny", checkpoint)
            time.sleep(0.8)  # the worker is inside the request (the 1.5 s hook)
            workers = children(pid)
            self.assertEqual(len(workers), 1, workers)
            os.kill(workers[0], signal.SIGKILL)
            with self.assertRaises(grpc.RpcError) as caught:
                running.result()
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INTERNAL)
        self.assertIn("validation worker crashed (killed by signal 9", caught.exception.details())
        report = validate(self.registry, "tiny", checkpoint)
        self.assertEqual(report.verdict, types_pb2.NORMALIZED)
        self.assertEqual(self.server.proc.pid, pid)
        self.assertIsNone(self.server.proc.poll())
        self.assertNotIn(workers[0], children(pid))

    def test_crash_inside_torchscript_loading(self):
        pid = self.server.proc.pid
        with self.assertRaises(grpc.RpcError) as caught:
            register(self.registry, "scripted", self.scripted)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INTERNAL)
        self.assertIn("validation worker crashed", caught.exception.details())
        self.assertIn("signal 11", caught.exception.details())
        # Nothing was registered; a plain reference still registers.
        with self.assertRaises(grpc.RpcError) as missing:
            self.registry.GetModel(registry_pb2.GetModelRequest(model_id="scripted"), timeout=10)
        self.assertEqual(missing.exception.code(), grpc.StatusCode.NOT_FOUND)
        model = register(self.registry, "plain", os.path.join(self.dir, "reference.pt"))
        self.assertEqual(model.model_id, "plain")
        self.assertEqual(self.server.proc.pid, pid)
        self.assertIsNone(self.server.proc.poll())

    def test_cancelled_request_stops_its_work(self):
        pid = self.server.proc.pid
        checkpoint = os.path.join(self.dir, "dataparallel.pt")
        header = registry_pb2.UploadHeader(model_id="tiny",
                                           total_bytes=os.path.getsize(checkpoint))
        call = self.registry.ValidateCheckpoint.future(
            chunks(header, checkpoint, registry_pb2.UploadRequest), timeout=60)
        time.sleep(0.6)  # the request's child is inside the 1.5 s hook
        workers = children(pid)
        self.assertEqual(len(workers), 1, workers)
        running = children(workers[0])  # the request's child, the worker's only one now
        self.assertEqual(len(running), 1)
        cancelled = time.monotonic()
        call.cancel()
        # The child doing the work is killed at once, not after the hook.
        while running[0] in children(workers[0]) and time.monotonic() - cancelled < 5:
            time.sleep(0.02)
        self.assertLess(time.monotonic() - cancelled, 0.5)
        self.assertEqual(children(pid), workers)  # the worker itself stays
        report = validate(self.registry, "tiny", checkpoint)
        self.assertEqual(report.verdict, types_pb2.NORMALIZED)


class QueueBoundTest(unittest.TestCase):
    """One worker, one waiting place: a burst beyond that is refused at once."""

    def test_burst_beyond_the_queue_is_refused_with_a_retry_hint(self):
        tmp = FIXTURES["tiny"]
        with WeightgateServer(extra_args=["--validation_workers", "1",
                                          "--max_pending_validations", "1"],
                              env={"WEIGHTGATE_TEST_WORKER_DELAY_MS": "1000"}) as server, \
                grpc.insecure_channel(server.address) as channel:
            stub = registry_pb2_grpc.ModelRegistryStub(channel)
            register(stub, "tiny", os.path.join(tmp, "reference.pt"))
            checkpoint = os.path.join(tmp, "dataparallel.pt")

            def one(_):
                start = time.monotonic()
                try:
                    validate(stub, "tiny", checkpoint)
                    return "ok", time.monotonic() - start, None
                except grpc.RpcError as e:
                    hint = dict(e.trailing_metadata() or ()).get("retry-after-ms")
                    return e.code(), time.monotonic() - start, (e.details(), hint)

            with concurrent.futures.ThreadPoolExecutor(5) as pool:
                outcomes = list(pool.map(one, range(5)))
            ok = [o for o in outcomes if o[0] == "ok"]
            refused = [o for o in outcomes if o[0] == grpc.StatusCode.RESOURCE_EXHAUSTED]
            self.assertEqual(len(ok) + len(refused), 5, outcomes)
            # One running and one waiting at most (fewer when the burst beats the
            # worker thread to the queue); without the bound all five would pass.
            self.assertTrue(1 <= len(ok) <= 2, outcomes)
            for _, seconds, (details, hint) in refused:
                self.assertIn("--max_pending_validations", details)
                self.assertEqual(hint, "1000")
                self.assertLess(seconds, 1.0)  # refused at once, not after waiting
            # Once the burst is over the server takes work again.
            self.assertEqual(validate(stub, "tiny", checkpoint).verdict, types_pb2.NORMALIZED)


if __name__ == "__main__":
    unittest.main()
