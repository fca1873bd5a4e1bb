"""Integration-test harness: runs the real weightgate-server binary.

WeightgateServer starts build/bin/weightgate-server on free loopback ports
with a temporary store, waits until grpc.health.v1 reports SERVING, runs CLI
commands against it, and on stop() sends SIGTERM and checks the exit code.

Uses only the Python standard library and grpcio (Debian's python3-grpcio);
health and reflection are called with raw protobuf bytes so no extra stubs
are needed.
"""
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import grpc

BINARY_DIR = os.environ.get("WG_BINARY_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "build"))
SOURCE_DIR = os.environ.get("WG_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
SERVER = os.path.join(BINARY_DIR, "bin", "weightgate-server")
CLI = os.path.join(BINARY_DIR, "bin", "weightgate")
TORCH_PYTHON = "/usr/bin/python3"  # Debian's interpreter, the one with python3-torch


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_unary(channel, method, request=b"", timeout=5):
    call = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    return call(request, timeout=timeout)


def health_status(address, service="", credentials=None):
    """Returns the grpc.health.v1 status number (1 = SERVING) or None.
    `credentials`: grpc.ssl_channel_credentials for a TLS server."""
    request = b"" if not service else b"\x0a" + bytes([len(service)]) + service.encode()
    try:
        channel = (grpc.secure_channel(address, credentials) if credentials is not None
                   else grpc.insecure_channel(address))
        with channel:
            response = raw_unary(channel, "/grpc.health.v1.Health/Check", request, timeout=2)
    except grpc.RpcError:
        return None
    # HealthCheckResponse{status=1}: 08 01 (absent field = UNKNOWN = 0)
    return response[1] if len(response) >= 2 and response[0] == 0x08 else 0


def run_cli(*args, server=None, env=None, timeout=120, stdin=None):
    cmd = [CLI]
    if server is not None:
        cmd += ["--server", server]
    cmd += list(args)
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env,
                          stdin=stdin if stdin is not None else subprocess.DEVNULL)


class WeightgateServer:
    """A running weightgate-server. Use as a context manager or call start()/stop()."""

    def __init__(self, store=None, extra_args=(), env=None, credentials=None):
        self._tmp = None
        if store is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="wg-store-")
            store = os.path.join(self._tmp.name, "store")
        self.store = store
        self.port = free_port()
        self.metrics_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.extra_args = list(extra_args)
        self.env = env
        self.credentials = credentials
        self.proc = None
        self.log_path = None

    def start(self, timeout=30):
        log = tempfile.NamedTemporaryFile(prefix="wg-server-", suffix=".log", delete=False)
        self.log_path = log.name
        cmd = [SERVER, "--listen", self.address, "--metrics_listen", f"127.0.0.1:{self.metrics_port}",
               "--store", self.store] + self.extra_args
        env = dict(os.environ)
        env.update(self.env or {})
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if health_status(self.address, credentials=self.credentials) == 1:
                return self
            time.sleep(0.1)
        self.proc.kill()
        raise RuntimeError(f"server not SERVING after {timeout}s:\n{self.log()}")

    def log(self):
        if not self.log_path:
            return ""
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def cli(self, *args, **kwargs):
        return run_cli(*args, server=self.address, **kwargs)

    def metrics(self):
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return r.read().decode()

    def stop(self, timeout=30):
        """SIGTERM, wait, return the exit code (None if it had to be killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        if self.log_path and os.path.exists(self.log_path):
            os.unlink(self.log_path)
        if self._tmp is not None:
            self._tmp.cleanup()
        return False
