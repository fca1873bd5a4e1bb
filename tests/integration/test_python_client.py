"""The Python package against the real server: strict round trip with
identical outputs, one buffer, ties, range streams, resume after a cut
connection, a flipped byte caught by the chunk check, errors, TLS and mTLS,
and `pip install ./client/python` into a fresh venv."""
import hashlib
import os
import random
import shutil
import subprocess
import tempfile
import unittest

import crc32c
import torch

import weightgate
from weightgate import _fetch
from client_model import TiedLM, outputs_differ
from client_support import ROWS, ServedModelTest, TlsServer, WireProxy, make_certs
from harness import SOURCE_DIR



class PythonClientTest(ServedModelTest):
    prefix = "wg-pyclient-"

    def fetch(self, ref="lm@prod", **kwargs):
        kwargs.setdefault("server", self.server.address)
        return weightgate.fetch_state_dict(ref, **kwargs)

    def test_round_trip_loads_strictly_with_identical_outputs(self):
        for streams in (1, 3):
            sd = self.fetch(streams=streams)
            self.assertEqual(outputs_differ(sd, self.path("io.pt")), 0.0)

    def test_tensors_are_views_of_one_buffer_and_ties_share_storage(self):
        sd = self.fetch(streams=2)
        bases = {t.storage().data_ptr() for t in sd.values() if t.numel() > 0}
        self.assertEqual(len(bases), 1)
        self.assertEqual(sd["head.weight"].data_ptr(), sd["embed.weight"].data_ptr())
        self.assertEqual(sd["steps"].item(), 7)
        reference = torch.load(self.path("reference.pt"))
        self.assertEqual(sorted(sd), sorted(reference))
        for name, tensor in reference.items():
            self.assertTrue(torch.equal(sd[name], tensor), name)

    def test_load_into(self):
        model = TiedLM(ROWS)
        result = weightgate.load_into(model, "lm@prod", server=self.server.address)
        self.assertEqual((result.missing_keys, result.unexpected_keys), ([], []))
        self.assertIs(model.head.weight, model.embed.weight)
        self.assertEqual(outputs_differ(model.state_dict(), self.path("io.pt")), 0.0)

    def test_fetch_bytes_are_the_stored_blob(self):
        manifest, blob = weightgate.fetch_bytes("lm", server=self.server.address, streams=4)
        self.assertEqual(bytes(blob), self.blob)
        self.assertEqual(hashlib.sha256(blob).hexdigest(), manifest.blob_sha256)

    def test_cut_connection_resumes_and_sha256_matches(self):
        half = len(self.blob) // 2
        with WireProxy(self.server.address, cut_after=half) as proxy:
            manifest, blob = weightgate.fetch_bytes("lm@prod", server=proxy.address, streams=1)
            self.assertEqual(proxy.cuts, 1)
            self.assertGreaterEqual(proxy.connections, 2)
            # Resumed, not restarted: well under 1.5x the blob crossed the wire.
            self.assertLess(proxy.data_bytes, len(self.blob) * 1.4)
        self.assertEqual(hashlib.sha256(blob).hexdigest(), manifest.blob_sha256)
        self.assertEqual(bytes(blob), self.blob)

    def test_flipped_byte_is_caught_by_the_chunk_check(self):
        with WireProxy(self.server.address, flip_after=len(self.blob) // 3) as proxy:
            with self.assertRaises(weightgate.Error) as caught:
                self.fetch(server=proxy.address, streams=1)
            self.assertEqual(proxy.flips, 1)
        self.assertEqual(caught.exception.code.name, "DATA_LOSS")
        self.assertIn("checksum mismatch", str(caught.exception))

    def test_flipped_byte_is_caught_without_the_native_module(self):
        # The fallback path (python3-crc32c and a slice copy) checks as well.
        native, _fetch._native = _fetch._native, None
        try:
            with WireProxy(self.server.address, flip_after=len(self.blob) // 3) as proxy:
                with self.assertRaises(weightgate.Error) as caught:
                    self.fetch(server=proxy.address, streams=1)
                self.assertEqual(proxy.flips, 1)
            sd = self.fetch(streams=2)
            self.assertEqual(outputs_differ(sd, self.path("io.pt")), 0.0)
        finally:
            _fetch._native = native
        self.assertEqual(caught.exception.code.name, "DATA_LOSS")

    def test_flipped_byte_without_chunk_check_is_caught_by_sha256(self):
        with WireProxy(self.server.address, flip_after=len(self.blob) // 3) as proxy:
            with self.assertRaises(weightgate.Error) as caught:
                self.fetch(server=proxy.address, streams=1, verify_chunks=False)
            self.assertEqual(proxy.flips, 1)
        self.assertEqual(caught.exception.code.name, "DATA_LOSS")
        self.assertIn("sha256 mismatch", str(caught.exception))

    def test_errors_carry_the_grpc_code(self):
        with self.assertRaises(weightgate.Error) as caught:
            self.fetch("nosuch@prod")
        self.assertEqual(caught.exception.code.name, "NOT_FOUND")
        with self.assertRaises(weightgate.Error) as caught:
            self.fetch(tls_ca="/nonexistent/ca.pem")
        self.assertEqual(caught.exception.code.name, "INVALID_ARGUMENT")
        with self.assertRaises(weightgate.Error) as caught:
            self.fetch(server="127.0.0.1:1", retries=1, timeout=5)
        self.assertEqual(caught.exception.code.name, "UNAVAILABLE")

    def test_tls_and_mtls(self):
        certs = make_certs(self.dir)
        for mtls in (False, True):
            with TlsServer(certs, mtls=mtls, store=self.server.store) as tls:
                extra = {"tls_cert": certs["client.pem"], "tls_key": certs["client.key"]} if mtls else {}
                sd = self.fetch(server=f"localhost:{tls.port}", tls_ca=certs["ca.pem"], streams=2, **extra)
                self.assertEqual(outputs_differ(sd, self.path("io.pt")), 0.0)
                if mtls:  # no client certificate: refused
                    with self.assertRaises(weightgate.Error) as caught:
                        self.fetch(server=f"localhost:{tls.port}", tls_ca=certs["ca.pem"], retries=0,
                                   timeout=10)
                    self.assertEqual(caught.exception.code.name, "UNAVAILABLE")


class NativeModuleTest(unittest.TestCase):
    """weightgate._native, built with the package (python3-dev is a test dependency)."""

    def test_built_and_used(self):
        self.assertIsNotNone(_fetch._native)

    def test_crc32c_matches_python3_crc32c_at_every_length_class(self):
        rng = random.Random(5)
        data = bytes(rng.getrandbits(8) for _ in range(3 * 8192 * 2 + 3 * 256 + 41))
        for length in (0, 1, 7, 8, 255, 768, 769, 3 * 8192, 3 * 8192 + 3 * 256 + 9, len(data) - 8):
            for start in range(8):
                piece = data[start:start + length]
                self.assertEqual(_fetch._native.crc32c(piece), crc32c.crc32c(piece), (length, start))
        self.assertEqual(_fetch._native.crc32c(b"123456789"), 0xE3069283)
        self.assertEqual(_fetch._native.crc32c(b"6789", _fetch._native.crc32c(b"12345")), 0xE3069283)

    def test_land_copies_only_a_matching_chunk_inside_the_buffer(self):
        dest = bytearray(32)
        self.assertTrue(_fetch._native.land(dest, 4, b"abc", crc32c.crc32c(b"abc")))
        self.assertEqual(bytes(dest[4:7]), b"abc")
        self.assertFalse(_fetch._native.land(dest, 10, b"xyz", crc32c.crc32c(b"xyz") ^ 1))
        self.assertEqual(bytes(dest[10:13]), bytes(3))
        for offset in (30, -1, 1 << 40):
            with self.assertRaises(ValueError):
                _fetch._native.land(dest, offset, b"abc", crc32c.crc32c(b"abc"))
        with self.assertRaises(TypeError):  # read-only destination
            _fetch._native.land(b"x" * 8, 0, b"a", crc32c.crc32c(b"a"))


class PipInstallTest(unittest.TestCase):
    def test_pip_install_into_a_system_site_packages_venv(self):
        with tempfile.TemporaryDirectory(prefix="wg-venv-") as tmp:
            # A copy of the package and the protos, laid out as in the source
            # tree, so the in-tree build leaves no files in the checkout.
            src = os.path.join(tmp, "src")
            shutil.copytree(os.path.join(SOURCE_DIR, "client", "python"), os.path.join(src, "client", "python"),
                            ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
            shutil.copytree(os.path.join(SOURCE_DIR, "proto"), os.path.join(src, "proto"))
            venv = os.path.join(tmp, "venv")
            subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", venv], check=True)
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            r = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "--no-build-isolation", "--no-deps",
                                "--no-index", os.path.join(src, "client", "python")],
                               capture_output=True, text=True, env=env, timeout=300)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            code = ("import weightgate, weightgate._native, weightgate.v1.stream_pb2 as s; "
                    "print(weightgate.__file__); print(s.FetchRequest(end_offset=5).end_offset)")
            r = subprocess.run([os.path.join(venv, "bin", "python"), "-c", code], capture_output=True, text=True,
                               env=env, cwd=tmp, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            path, end = r.stdout.split()
            self.assertTrue(path.startswith(venv), path)
            self.assertEqual(end, "5")


if __name__ == "__main__":
    unittest.main()
