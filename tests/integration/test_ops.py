"""Operating weightgate: roles and policy overrides, INVALID reports of any
size, --fsck on a damaged store, TLS and mutual TLS through the CLI, and a
real Prometheus scraping the metrics. Runs the real binaries."""
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

from harness import SERVER, WeightgateServer, free_port

HERE = os.path.dirname(os.path.abspath(__file__))


def safetensors(path, tensors):
    """Writes a safetensors file: tensors is {name: (dtype, shape, bytes)}."""
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def json_spec(path, names):
    with open(path, "w") as f:
        json.dump({"tensors": {n: {"dtype": "F32", "shape": [2]} for n in names}}, f)


class OpsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="wg-ops-")
        cls.dir = cls.tmp.name
        cls.tokens = os.path.join(cls.dir, "tokens")
        with open(cls.tokens, "w") as f:
            f.write("r0 reader worker\nw0 writer ci-bot\na0 admin owner\n")
        cls.server = WeightgateServer(extra_args=["--tokens_file", cls.tokens]).start()
        # A two-tensor model and a checkpoint of it whose "b" is zeros-free but missing.
        json_spec(cls.path("spec.json"), ["a", "b"])
        safetensors(cls.path("good.safetensors"), {"a": ("F32", [2], b"\x00\x00\x80\x3f" * 2),
                                                   "b": ("F32", [2], b"\x00\x00\x00\x40" * 2)})
        safetensors(cls.path("junk.safetensors"), {"a": ("F32", [2], b"\x00" * 8)})

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.tmp.cleanup()

    @classmethod
    def path(cls, name):
        return os.path.join(cls.dir, name)

    def cli(self, token, *args):
        return self.server.cli("--token", token, *args)

    def test_writer_cannot_loosen_policy_or_delete_admin_can(self):
        r = self.cli("w0", "register", "owned", "--from", self.path("spec.json"))
        self.assertEqual(r.returncode, 2)
        self.assertIn("needs admin", r.stderr)
        r = self.cli("a0", "register", "owned", "--from", self.path("spec.json"))
        self.assertEqual(r.returncode, 0, r.stderr)
        # The attack of issue 8: every key optional, junk stored under prod.
        r = self.cli("w0", "upload", "owned", self.path("junk.safetensors"), "--optional", "*",
                     "--alias", "prod")
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("loosens", r.stderr)
        r = self.cli("a0", "--json", "ls", "owned")
        self.assertNotIn("versions", json.loads(r.stdout))
        # A writer may store a checkpoint that satisfies the model's own policy.
        r = self.cli("w0", "upload", "owned", self.path("good.safetensors"))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # An admin may loosen per request.
        r = self.cli("a0", "upload", "owned", self.path("junk.safetensors"), "--optional", "*")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # Readers read; writers cannot delete; admins can.
        self.assertEqual(self.cli("r0", "ls", "owned").returncode, 0)
        r = self.cli("r0", "upload", "owned", self.path("good.safetensors"))
        self.assertIn("may only read", r.stderr)
        r = self.cli("w0", "delete", "owned@1")
        self.assertEqual(r.returncode, 2)
        self.assertIn("needs admin", r.stderr)
        r = self.cli("a0", "delete", "owned@1")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_huge_invalid_report_arrives_whole_with_exit_1(self):
        names = [f"layers.{i}.block.attention.projection.weight" for i in range(1500)]
        json_spec(self.path("big-spec.json"), names)
        self.assertEqual(self.cli("a0", "register", "wide", "--from", self.path("big-spec.json")).returncode, 0)
        r = self.cli("w0", "--json", "upload", "wide", self.path("junk.safetensors"))
        self.assertEqual(r.returncode, 1, r.stderr[-2000:])
        body = json.loads(r.stdout)
        report = body.get("report", body)
        self.assertEqual(report["verdict"], "INVALID")
        self.assertEqual(sorted(report["missing_keys"]), sorted(names))
        r = self.cli("w0", "upload", "wide", self.path("junk.safetensors"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("missing_keys", r.stdout)
        self.assertIn("nothing stored", r.stderr)

    def test_fsck_names_a_blob_damaged_on_disk(self):
        store = os.path.join(self.dir, "fsck-store")
        with WeightgateServer(store=store) as server:
            self.assertEqual(server.cli("register", "f", "--from", self.path("spec.json")).returncode, 0)
            r = server.cli("--json", "upload", "f", self.path("good.safetensors"))
            self.assertEqual(r.returncode, 0, r.stderr)
            sha = json.loads(r.stdout)["version"]["blob_sha256"]
        clean = subprocess.run([SERVER, "--store", store, "--fsck"], capture_output=True, text=True, timeout=60)
        self.assertEqual(clean.returncode, 0, clean.stdout + clean.stderr)
        self.assertIn("0 problems", clean.stdout)
        blob = os.path.join(store, "blobs", sha)
        before = sorted(os.listdir(os.path.join(store, "blobs")))
        os.chmod(blob, 0o644)
        with open(blob, "r+b") as f:
            f.seek(-1, os.SEEK_END)
            f.write(b"\x7f")
        r = subprocess.run([SERVER, "--store", store, "--fsck"], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn(f"damaged blob {sha}", r.stdout)
        self.assertIn("f@1", r.stdout)
        # Read-only: nothing moved or removed.
        self.assertEqual(sorted(os.listdir(os.path.join(store, "blobs"))), before)
        os.unlink(blob)
        r = subprocess.run([SERVER, "--store", store, "--fsck"], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 1)
        self.assertIn(f"missing blob {sha}", r.stdout)

    def test_access_log_line_per_rpc(self):
        self.cli("r0", "ls")
        time.sleep(0.2)
        self.assertRegex(self.server.log(),
                         r"access method=ListModels ref=\"\" peer=\S+ identity=worker code=OK bytes=0 ms=[0-9.]+")


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


class TlsTest(unittest.TestCase):
    """Certificates are made at test time: a CA, a server cert for 127.0.0.1,
    and a client cert."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="wg-tls-")
        d = cls.d = cls.tmp.name
        p = lambda n: os.path.join(d, n)  # noqa: E731
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=wg-test-ca",
                "-keyout", p("ca.key"), "-out", p("ca.pem"))
        with open(p("san.ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        for name, cn in (("server", "localhost"), ("client", "worker-7")):
            openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", p(f"{name}.key"),
                    "-out", p(f"{name}.csr"))
            extra = ["-extfile", p("san.ext")] if name == "server" else []
            openssl("x509", "-req", "-in", p(f"{name}.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
                    "-CAcreateserial", "-days", "2", "-out", p(f"{name}.pem"), *extra)
        json_spec(p("spec.json"), ["a"])

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def p(self, name):
        return os.path.join(self.d, name)

    def creds(self, client_cert=False):
        import grpc
        def read(name):
            with open(self.p(name), "rb") as f:
                return f.read()
        if client_cert:
            return grpc.ssl_channel_credentials(read("ca.pem"), read("client.key"), read("client.pem"))
        return grpc.ssl_channel_credentials(read("ca.pem"))

    def test_tls_and_mutual_tls_through_the_cli(self):
        tls = ["--tls_cert", self.p("server.pem"), "--tls_key", self.p("server.key")]
        with WeightgateServer(extra_args=tls, credentials=self.creds()) as server:
            r = server.cli("--tls_ca", self.p("ca.pem"), "ls")
            self.assertEqual(r.returncode, 0, r.stderr)
            # Cleartext against a TLS port: a handshake failure, named as such.
            r = server.cli("ls")
            self.assertEqual(r.returncode, 2)
            self.assertIn("TLS", r.stderr)
        with WeightgateServer(extra_args=tls + ["--tls_client_ca", self.p("ca.pem")],
                              credentials=self.creds(client_cert=True)) as server:
            r = server.cli("--tls_ca", self.p("ca.pem"), "--tls_cert", self.p("client.pem"), "--tls_key",
                           self.p("client.key"), "register", "tls-m", "--from", self.p("spec.json"))
            self.assertEqual(r.returncode, 0, r.stderr)
            time.sleep(0.2)
            self.assertIn("identity=cn:worker-7", server.log())
            # Without a client certificate the handshake is refused.
            r = server.cli("--tls_ca", self.p("ca.pem"), "ls")
            self.assertEqual(r.returncode, 2)
            self.assertIn("TLS handshake", r.stderr)


class PrometheusTest(unittest.TestCase):
    """Debian's prometheus scrapes weightgate; its query API must show what we did."""

    def query(self, base, expr):
        url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as r:
            data = json.loads(r.read())
        result = data["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    @unittest.skipUnless(shutil.which("prometheus"), "Debian package prometheus not installed")
    def test_prometheus_sees_upload_count_and_fetched_bytes(self):
        with tempfile.TemporaryDirectory(prefix="wg-prom-") as d, WeightgateServer() as server:
            json_spec(os.path.join(d, "spec.json"), ["a", "b"])
            ckpt = os.path.join(d, "good.safetensors")
            safetensors(ckpt, {"a": ("F32", [2], b"\x00\x00\x80\x3f" * 2), "b": ("F32", [2], b"\x00\x00\x00\x40" * 2)})
            self.assertEqual(server.cli("register", "p", "--from", os.path.join(d, "spec.json")).returncode, 0)
            r = server.cli("upload", "p", ckpt)
            self.assertEqual(r.returncode, 0, r.stderr)
            out = os.path.join(d, "out.safetensors")
            self.assertEqual(server.cli("fetch", "p", "-o", out).returncode, 0)
            fetched = os.path.getsize(out)
            port = free_port()
            config = os.path.join(d, "prometheus.yml")
            with open(config, "w") as f:
                f.write("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: weightgate\n"
                        f"    static_configs:\n      - targets: ['127.0.0.1:{server.metrics_port}']\n")
            prom = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={d}/tsdb",
                                     f"--web.listen-address=127.0.0.1:{port}"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            base = f"http://127.0.0.1:{port}"
            try:
                uploads = out_bytes = None
                deadline = time.time() + 60
                while time.time() < deadline:
                    try:
                        uploads = self.query(base, 'sum(weightgate_validations_total{rpc="UploadCheckpoint"})')
                        out_bytes = self.query(base, "weightgate_bytes_out_total")
                    except (OSError, ValueError, KeyError):
                        pass
                    if uploads is not None and out_bytes is not None:
                        break
                    time.sleep(0.5)
                self.assertEqual(uploads, 1.0)
                self.assertEqual(out_bytes, float(fetched))
                # One fetch is a manifest call plus its byte-range streams.
                self.assertGreaterEqual(
                    self.query(base, 'weightgate_rpcs_total{method="FetchWeights",code="OK"}'), 2.0)
            finally:
                prom.terminate()
                prom.wait(timeout=30)


if __name__ == "__main__":
    unittest.main()
