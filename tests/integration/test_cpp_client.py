"""The C++ client library against the real server: FetchTensors round trip
into the real model with identical outputs (one storage, ties kept),
FetchToFile, resume after a cut connection, a flipped byte caught by the
chunk check, TLS and mTLS, and find_package(weightgate) from an install."""
import hashlib
import os
import re
import subprocess
import unittest

import torch

from client_model import outputs_differ
from client_support import ServedModelTest, TlsServer, WireProxy, make_certs
from harness import BINARY_DIR, SOURCE_DIR

EXAMPLE = os.path.join(BINARY_DIR, "bin", "weightgate-cpp-example")
CHECK = os.path.join(BINARY_DIR, "tests", "cpp_client_check")


def run(*cmd, timeout=300, cwd=None):
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, cwd=cwd)


class CppClientTest(ServedModelTest):
    prefix = "wg-cppclient-"

    def example(self, *args, server=None):
        return run(EXAMPLE, "--server", server or self.server.address, *args)

    def assertSummary(self, r):
        self.assertEqual(r.returncode, 0, r.stderr)
        m = re.fullmatch(r"(\d+) tensors, (\d+) bytes, sha256 ([0-9a-f]{64})\n", r.stdout)
        self.assertIsNotNone(m, r.stdout)
        self.assertEqual(int(m.group(1)), 7)  # embed, head (tied), norm x2, mix x2, steps
        self.assertEqual(int(m.group(2)), len(self.blob))
        self.assertEqual(m.group(3), self.sha)

    def test_fetch_tensors_round_trip_loads_strictly_with_identical_outputs(self):
        out = self.path("from_cpp.pt")
        r = run(CHECK, "--server", self.server.address, "lm@prod", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("one storage", r.stdout)
        sd = torch.load(out)
        self.assertEqual(sd["head.weight"].data_ptr(), sd["embed.weight"].data_ptr())
        self.assertEqual(outputs_differ(sd, self.path("io.pt")), 0.0)

    def test_example_prints_the_summary(self):
        for streams in ("1", "3"):
            self.assertSummary(self.example("--streams", streams, "lm@prod"))

    def test_fetch_to_file(self):
        out = self.path("cpp.safetensors")
        self.assertSummary(self.example("--streams", "4", "--out", out, "lm"))
        with open(out, "rb") as f:
            self.assertEqual(f.read(), self.blob)
        self.assertFalse(os.path.exists(out + ".part"))

    def test_cut_connection_resumes_and_sha256_matches(self):
        out = self.path("resumed.safetensors")
        with WireProxy(self.server.address, cut_after=len(self.blob) // 2) as proxy:
            r = self.example("--streams", "1", "--out", out, "lm@prod", server=proxy.address)
            self.assertSummary(r)
            self.assertIn("resumes 1", r.stderr)
            self.assertEqual(proxy.cuts, 1)
            self.assertLess(proxy.data_bytes, len(self.blob) * 1.4)
        with open(out, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), self.sha)

    def test_flipped_byte_is_caught_by_the_chunk_check(self):
        out = self.path("flipped.safetensors")
        with WireProxy(self.server.address, flip_after=len(self.blob) // 3) as proxy:
            r = self.example("--streams", "1", "--out", out, "lm@prod", server=proxy.address)
            self.assertEqual(proxy.flips, 1)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("DATA_LOSS", r.stderr)
        self.assertIn("checksum mismatch", r.stderr)
        self.assertFalse(os.path.exists(out))
        self.assertFalse(os.path.exists(out + ".part"))

    def test_errors(self):
        r = self.example("nosuch@prod")
        self.assertEqual(r.returncode, 1)
        self.assertIn("NOT_FOUND", r.stderr)
        r = self.example("--tls_ca", "/nonexistent.pem", "lm")
        self.assertEqual(r.returncode, 2)
        self.assertIn("cannot read tls_ca", r.stderr)

    def test_tls_and_mtls(self):
        certs = make_certs(self.dir)
        for mtls in (False, True):
            with TlsServer(certs, mtls=mtls, store=self.server.store) as tls:
                address = f"localhost:{tls.port}"
                extra = ["--tls_cert", certs["client.pem"], "--tls_key", certs["client.key"]] if mtls else []
                self.assertSummary(self.example("--tls_ca", certs["ca.pem"], *extra, "lm@prod", server=address))
                out = self.path(f"tls-{mtls}.pt")
                r = run(CHECK, "--server", address, "--tls_ca", certs["ca.pem"], *extra, "lm@prod", out)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(outputs_differ(torch.load(out), self.path("io.pt")), 0.0)
                # Plaintext to a TLS port fails.
                self.assertEqual(self.example("lm@prod", server=address).returncode, 1)

    def test_find_package_from_an_install(self):
        prefix = self.path("prefix")
        r = run("cmake", "--install", BINARY_DIR, "--component", "weightgate_client", "--prefix", prefix)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for f in ("include/weightgate/client.h", "include/weightgate/tensors.h"):
            self.assertTrue(os.path.exists(os.path.join(prefix, f)), f)
        build = self.path("consumer")
        r = run("cmake", "-S", os.path.join(SOURCE_DIR, "client", "cpp", "examples"), "-B", build,
                f"-DCMAKE_PREFIX_PATH={prefix}", "-DCMAKE_BUILD_TYPE=Release")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = run("cmake", "--build", build, timeout=900)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        binary = os.path.join(build, "weightgate-cpp-example")
        r = run("ldd", binary)
        self.assertIn(os.path.join(prefix, "lib"), r.stdout)  # the installed shared library
        r = run(binary, "--server", self.server.address, "lm@prod")
        self.assertSummary(r)


if __name__ == "__main__":
    unittest.main()
