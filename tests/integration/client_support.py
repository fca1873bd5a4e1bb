"""Shared pieces of the client tests: test certificates, a TLS server, and a
TCP proxy that breaks the wire on purpose (cuts a connection mid-stream or
flips one payload byte inside an HTTP/2 DATA frame)."""
import hashlib
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import grpc

from client_model import make
from harness import WeightgateServer

# 8192 rows x 256 x F32 = 8 MiB embedding: enough for several chunks per stream.
ROWS = 8192


class ServedModelTest(unittest.TestCase):
    """A server holding model `lm` (client_model.TiedLM, version 1, alias
    `prod`); `cls.blob` / `cls.sha` are its stored safetensors bytes (the
    tied head held once), `cls.version` its upload's version record."""

    prefix = "wg-client-"

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix=cls.prefix)
        cls.dir = cls.tmp.name
        make(cls.dir, ROWS)
        cls.server = WeightgateServer().start()
        r = cls.server.cli("register", "lm", "--from", cls.path("reference.pt"))
        assert r.returncode == 0, r.stdout + r.stderr
        r = cls.server.cli("--json", "upload", "lm", cls.path("reference.pt"), "--alias", "prod")
        assert r.returncode == 0, r.stdout + r.stderr
        cls.version = json.loads(r.stdout)["version"]
        with open(os.path.join(cls.server.store, "blobs", cls.version["blob_sha256"]), "rb") as f:
            cls.blob = f.read()
        cls.sha = hashlib.sha256(cls.blob).hexdigest()
        assert cls.sha == cls.version["blob_sha256"]

    @classmethod
    def tearDownClass(cls):
        code = cls.server.stop()
        cls.tmp.cleanup()
        assert code == 0, cls.server.log()

    @classmethod
    def path(cls, name):
        return os.path.join(cls.dir, name)


def make_certs(directory):
    """CA, server (127.0.0.1/localhost) and client certificates under `directory`."""
    def run(*args):
        subprocess.run(["openssl"] + list(args), check=True, capture_output=True, cwd=directory)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=wg-test-ca")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        with open(os.path.join(directory, f"{name}.ext"), "w") as f:
            f.write(ext)
        run("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=wg-test-{name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return {n: os.path.join(directory, n) for n in
            ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


class TlsServer(WeightgateServer):
    """A weightgate-server with --tls_cert/--tls_key (and --tls_client_ca when mtls)."""

    def __init__(self, certs, mtls=False, store=None):
        args = ["--tls_cert", certs["server.pem"], "--tls_key", certs["server.key"]]
        if mtls:
            args += ["--tls_client_ca", certs["ca.pem"]]
        super().__init__(store=store, extra_args=args)
        self.certs = certs
        self.mtls = mtls

    def _ready(self):
        def read(name):
            with open(self.certs[name], "rb") as f:
                return f.read()
        creds = grpc.ssl_channel_credentials(
            read("ca.pem"), read("client.key") if self.mtls else None,
            read("client.pem") if self.mtls else None)
        try:
            with grpc.secure_channel(self.address, creds) as channel:
                call = channel.unary_unary("/grpc.health.v1.Health/Check",
                                           request_serializer=lambda b: b, response_deserializer=lambda b: b)
                return call(b"", timeout=2) == b"\x08\x01"
        except grpc.RpcError:
            return False

    def start(self, timeout=30):
        import tempfile
        log = tempfile.NamedTemporaryFile(prefix="wg-server-", suffix=".log", delete=False)
        self.log_path = log.name
        from harness import SERVER
        cmd = [SERVER, "--listen", self.address, "--metrics_listen", f"127.0.0.1:{self.metrics_port}",
               "--store", self.store] + self.extra_args
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if self._ready():
                return self
            time.sleep(0.1)
        self.proc.kill()
        raise RuntimeError(f"TLS server not SERVING after {timeout}s:\n{self.log()}")


class WireProxy:
    """Forwards 127.0.0.1:port to `target`. Server-to-client bytes are parsed
    as HTTP/2 frames (plaintext h2c only) so damage lands in DATA payloads:

    cut_after: once this many DATA payload bytes have passed (over all
        connections), the connection carrying them is reset, once.
    flip_after: the first DATA frame of at least 4 KiB after this many DATA
        bytes gets its middle byte inverted, once.
    """

    def __init__(self, target, cut_after=None, flip_after=None):
        self.target = target
        self.cut_after = cut_after
        self.flip_after = flip_after
        self.data_bytes = 0
        self.connections = 0
        self.cuts = 0
        self.flips = 0
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self._closed = True
        self._listener.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _accept(self):
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            host, port = self.target.rsplit(":", 1)
            server = socket.create_connection((host, int(port)))
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._pump_up, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(server, client), daemon=True).start()

    @staticmethod
    def _close(*socks):
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _pump_up(self, src, dst):
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        self._close(src, dst)

    def _pump_down(self, src, dst):
        pending = bytearray()
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                pending += data
                out = bytearray()
                while len(pending) >= 9:
                    length = int.from_bytes(pending[0:3], "big")
                    if len(pending) < 9 + length:
                        break
                    frame = pending[:9 + length]
                    del pending[:9 + length]
                    cut = False
                    if frame[3] == 0:  # DATA
                        with self._lock:
                            self.data_bytes += length
                            if (self.flip_after is not None and not self.flips and length >= 4096
                                    and self.data_bytes >= self.flip_after):
                                frame[9 + length // 2] ^= 0xFF
                                self.flips += 1
                            if self.cut_after is not None and not self.cuts and self.data_bytes >= self.cut_after:
                                self.cuts += 1
                                cut = True
                    if cut:
                        dst.sendall(out)
                        raise OSError("cut")
                    out += frame
                dst.sendall(out)
        except OSError:
            pass
        self._close(src, dst)
