"""End to end through the real server and CLI: register, validate, upload,
list, alias, fetch (safetensors, pt, Python client), watch, delete; two
replicas on one store; crash safety."""
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from harness import BINARY_DIR, TORCH_PYTHON, WeightgateServer

HERE = os.path.dirname(os.path.abspath(__file__))


def torch_py(*args):
    r = subprocess.run([TORCH_PYTHON, os.path.join(HERE, "tiny_model.py")] + list(args),
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise AssertionError(r.stderr)
    return r.stdout


def readline(proc, timeout=30):
    """Next stdout line of `proc`, or fail after `timeout` s instead of hanging."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"no output within {timeout}s")
    return proc.stdout.readline()


def staged_bytes(staging_dir):
    """Largest staging file's size under tmp/ (each process stages in its own
    subdirectory; files may vanish while we look)."""
    largest = 0
    for parent, _, names in os.walk(staging_dir):
        for name in names:
            if name.startswith("stage."):
                try:
                    largest = max(largest, os.path.getsize(os.path.join(parent, name)))
                except FileNotFoundError:
                    pass
    return largest


class WorkflowTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="wg-workflow-")
        cls.dir = cls.tmp.name
        torch_py("make", cls.dir)
        cls.server = WeightgateServer().start()

    @classmethod
    def tearDownClass(cls):
        code = cls.server.stop()
        cls.tmp.cleanup()
        assert code == 0, cls.server.log()

    def path(self, name):
        return os.path.join(self.dir, name)

    def cli_ok(self, *args):
        r = self.server.cli(*args)
        self.assertEqual(r.returncode, 0, f"{args}: {r.stdout}\n{r.stderr}")
        return r

    def register(self, model_id):
        r = self.server.cli("ls", model_id)
        if r.returncode != 0:
            self.cli_ok("register", model_id, "--from", self.path("reference.pt"))

    def test_register_then_show(self):
        self.register("tiny-show")
        r = self.cli_ok("--json", "show", "tiny-show")
        model = json.loads(r.stdout)
        names = [t["name"] for t in model["spec"]["tensors"]]
        self.assertIn("bn.num_batches_tracked", names)
        self.assertIn("fc.weight", names)
        r = self.server.cli("register", "tiny-show", "--from", self.path("reference.pt"))
        self.assertEqual(r.returncode, 2)
        self.assertIn("already", r.stderr)

    def test_validate_exit_codes(self):
        self.register("tiny-validate")
        r = self.server.cli("validate", "tiny-validate", self.path("reference.pt"))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("VALID", r.stdout)
        r = self.server.cli("--json", "validate", "tiny-validate", self.path("training.pt"))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        report = json.loads(r.stdout)
        self.assertEqual(report["verdict"], "NORMALIZED")
        self.assertEqual(report["container_path"], "state_dict")
        r = self.server.cli("--json", "validate", "tiny-validate", self.path("nan.pt"))
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("non_finite", json.loads(r.stdout)["reasons"])
        garbage = self.path("garbage.bin")
        with open(garbage, "wb") as f:
            f.write(os.urandom(4096))
        r = self.server.cli("validate", "tiny-validate", garbage)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        r = self.server.cli("validate", "not-registered", self.path("reference.pt"))
        self.assertEqual(r.returncode, 2)
        self.assertIn("not registered", r.stderr)
        metrics = self.server.metrics()
        self.assertRegex(metrics, r'weightgate_rejections_total\{reason="non_finite"\} [1-9]')
        self.assertRegex(metrics, r'weightgate_validations_total\{[^}]*verdict="NORMALIZED"[^}]*\} [1-9]')

    def test_upload_fetch_roundtrip(self):
        self.register("tiny")
        r = self.cli_ok("upload", "tiny", self.path("dataparallel.pt"), "--alias", "candidate")
        self.assertIn("stored tiny@", r.stdout)
        r = self.cli_ok("--json", "ls", "tiny")
        versions = json.loads(r.stdout)["versions"]
        version = versions[-1]["version"]
        self.assertIn("candidate", versions[-1]["aliases"])
        self.cli_ok("alias", "tiny", str(version), "prod")

        out = self.path("fetched.safetensors")
        self.cli_ok("fetch", "tiny@prod", "-o", out)
        dy = float(torch_py("check", out, self.path("io.pt"), "safetensors"))
        self.assertLess(dy, 1e-5)
        out_pt = self.path("fetched.pt")
        self.cli_ok("fetch", f"tiny@{version}", "-o", out_pt, "--format", "pt")
        dy = float(torch_py("check", out_pt, self.path("io.pt"), "pt"))
        self.assertLess(dy, 1e-5)

        # The Python client gives tensors that load strictly.
        code = ("import sys; sys.path[:0] = [%r, %r]\n"
                "from weightgate_client import fetch_state_dict\n"
                "sd = fetch_state_dict('tiny@prod', server=%r)\n"
                "import torch; sys.path.insert(0, %r); from tiny_model import TinyNet\n"
                "m = TinyNet(); m.load_state_dict(sd, strict=True); print(len(sd))\n") % (
            os.path.join(BINARY_DIR, "python"), os.path.join(HERE, "..", "..", "client", "python"),
            self.server.address, HERE)
        r = subprocess.run([TORCH_PYTHON, "-c", code], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(int(r.stdout), 9)  # conv 2, bn 5, fc 2

    def test_upload_invalid_stores_nothing(self):
        self.register("tiny-invalid")
        r = self.server.cli("upload", "tiny-invalid", self.path("nan.pt"))
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("nothing stored", r.stderr)
        r = self.cli_ok("--json", "ls", "tiny-invalid")
        self.assertEqual(json.loads(r.stdout), {})

    def test_fetch_resume_and_errors(self):
        self.register("tiny-resume")
        self.cli_ok("upload", "tiny-resume", self.path("reference.pt"))
        out = self.path("resume.safetensors")
        full = self.path("full.safetensors")
        self.cli_ok("fetch", "tiny-resume", "-o", full)
        with open(full, "rb") as f:
            blob = f.read()
        with open(out + ".part", "wb") as f:
            f.write(blob[: len(blob) // 2])
        r = self.cli_ok("fetch", "tiny-resume", "-o", out)
        self.assertIn("resumed", r.stdout)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), blob)
        r = self.server.cli("fetch", "tiny-resume@99", "-o", out)
        self.assertEqual(r.returncode, 2)
        self.assertIn("no version 99", r.stderr)

    def test_fetch_some_tensors(self):
        self.register("tiny-subset")
        self.cli_ok("upload", "tiny-subset", self.path("reference.pt"))
        full = self.path("subset-full.safetensors")
        self.cli_ok("fetch", "tiny-subset", "-o", full)
        out = self.path("subset.safetensors")
        r = self.cli_ok("fetch", "tiny-subset", "-o", out, "--tensor", "fc.weight",
                        "--tensor=bn.running_var")
        self.assertIn("2 tensors", r.stdout)

        def tensors(path):
            with open(path, "rb") as f:
                data = f.read()
            n = int.from_bytes(data[:8], "little")
            header = json.loads(data[8:8 + n])
            header.pop("__metadata__", None)
            body = data[8 + n:]
            return {name: (t["dtype"], t["shape"], body[t["data_offsets"][0]:t["data_offsets"][1]])
                    for name, t in header.items()}

        whole, some = tensors(full), tensors(out)
        self.assertEqual(sorted(some), ["bn.running_var", "fc.weight"])
        for name, t in some.items():
            self.assertEqual(t, whole[name], name)
        self.assertFalse(os.path.exists(out + ".tensors.tmp"))

        out_pt = self.path("subset.pt")
        self.cli_ok("fetch", "tiny-subset", "-o", out_pt, "--tensor", "fc.bias", "--format", "pt")
        code = ("import torch, sys; sd = torch.load(sys.argv[1], weights_only=True); "
                "print(sorted(sd), list(sd['fc.bias'].shape))")
        r = subprocess.run([TORCH_PYTHON, "-c", code, out_pt], capture_output=True, text=True,
                           timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), "['fc.bias'] [10]")

        r = self.server.cli("fetch", "tiny-subset", "-o", self.path("none.safetensors"),
                            "--tensor", "no.such")
        self.assertEqual(r.returncode, 2)
        self.assertIn("no.such", r.stderr)
        self.assertFalse(os.path.exists(self.path("none.safetensors")))

    def test_watch_sees_alias_move(self):
        self.register("tiny-watch")
        self.cli_ok("upload", "tiny-watch", self.path("reference.pt"))
        proc = subprocess.Popen([os.path.join(BINARY_DIR, "bin", "weightgate"), "--server", self.server.address,
                                 "watch", "tiny-watch@prod"], stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.5)
            self.cli_ok("alias", "tiny-watch", "1", "prod")
            line = readline(proc)
            self.assertIn("tiny-watch@prod -> 1", line)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)
            proc.stdout.close()

    def test_delete(self):
        self.register("tiny-delete")
        self.cli_ok("upload", "tiny-delete", self.path("reference.pt"))
        self.cli_ok("delete", "tiny-delete@1")
        r = self.server.cli("fetch", "tiny-delete", "-o", self.path("deleted.safetensors"))
        self.assertEqual(r.returncode, 2)
        self.cli_ok("delete", "tiny-delete")
        r = self.server.cli("ls", "tiny-delete")
        self.assertEqual(r.returncode, 2)


class ReplicaAndCrashTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="wg-replica-")
        torch_py("make", cls.tmp.name)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_two_replicas_share_one_store(self):
        store = os.path.join(self.tmp.name, "shared-store")
        ref = os.path.join(self.tmp.name, "reference.pt")
        with WeightgateServer(store=store) as a, WeightgateServer(store=store) as b:
            self.assertEqual(a.cli("register", "shared", "--from", ref).returncode, 0)
            r = a.cli("upload", "shared", os.path.join(self.tmp.name, "dataparallel.pt"))
            self.assertEqual(r.returncode, 0, r.stderr)
            r = b.cli("upload", "shared", ref)
            self.assertEqual(r.returncode, 0, r.stderr)
            r = b.cli("--json", "ls", "shared")
            self.assertEqual([v["version"] for v in json.loads(r.stdout)["versions"]], ["1", "2"])
            out = os.path.join(self.tmp.name, "from-b.safetensors")
            self.assertEqual(b.cli("fetch", "shared@1", "-o", out).returncode, 0)
            watcher = subprocess.Popen([os.path.join(BINARY_DIR, "bin", "weightgate"), "--server", b.address,
                                        "watch", "shared@prod"], stdout=subprocess.PIPE, text=True)
            try:
                time.sleep(0.5)
                self.assertEqual(a.cli("alias", "shared", "2", "prod").returncode, 0)
                self.assertIn("shared@prod -> 2", readline(watcher))
            finally:
                watcher.send_signal(signal.SIGINT)
                watcher.wait(timeout=10)
                watcher.stdout.close()

    def test_kill_during_upload_keeps_store_readable(self):
        store = os.path.join(self.tmp.name, "crash-store")
        ref = os.path.join(self.tmp.name, "reference.pt")
        server = WeightgateServer(store=store).start()
        try:
            self.assertEqual(server.cli("register", "crash", "--from", ref).returncode, 0)
            self.assertEqual(server.cli("upload", "crash", ref).returncode, 0)
            # Start an upload of a big file and SIGKILL the server while bytes are
            # still arriving (a staging file exists and is growing).
            big = os.path.join(self.tmp.name, "big.bin")
            with open(big, "wb") as f:
                f.truncate(2 << 30)  # sparse: quick to make, slow enough to send
            proc = subprocess.Popen([os.path.join(BINARY_DIR, "bin", "weightgate"), "--server", server.address,
                                     "upload", "crash", big], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            staging = os.path.join(store, "tmp")
            deadline = time.time() + 30
            while time.time() < deadline:
                if staged_bytes(staging) > (1 << 20):
                    break
                time.sleep(0.01)
            else:
                self.fail("upload never started")
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait()
            proc.communicate(timeout=30)
            self.assertEqual(proc.returncode, 2)
        finally:
            server.stop()
        with WeightgateServer(store=store) as again:
            r = again.cli("--json", "ls", "crash")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(len(json.loads(r.stdout)["versions"]), 1)
            out = os.path.join(self.tmp.name, "after-crash.safetensors")
            self.assertEqual(again.cli("fetch", "crash", "-o", out).returncode, 0)

    def test_sigterm_with_open_watch_exits_cleanly(self):
        with tempfile.TemporaryDirectory() as store:
            server = WeightgateServer(store=store).start()
            self.assertEqual(server.cli("register", "w", "--from",
                                        os.path.join(self.tmp.name, "reference.pt")).returncode, 0)
            watcher = subprocess.Popen([os.path.join(BINARY_DIR, "bin", "weightgate"), "--server",
                                        server.address, "watch", "w"], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
            time.sleep(0.5)
            start = time.time()
            self.assertEqual(server.stop(), 0, server.log())
            self.assertLess(time.time() - start, 15)
            watcher.wait(timeout=10)
            watcher.stdout.close()
            watcher.stderr.close()


if __name__ == "__main__":
    unittest.main()
