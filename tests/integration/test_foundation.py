"""The foundation contract: server flags and lifecycle, health, reflection,
metrics, CLI errors. Runs the real binaries."""
import json
import signal
import time
import os
import subprocess
import tempfile
import unittest

import grpc

from harness import CLI, SERVER, WeightgateServer, free_port, health_status, raw_unary, run_cli


class ServerLifecycleTest(unittest.TestCase):
    def test_serving_then_sigterm_exits_cleanly(self):
        server = WeightgateServer().start()
        try:
            self.assertEqual(health_status(server.address), 1)
            self.assertEqual(health_status(server.address, "weightgate.v1.ModelRegistry"), 1)
            self.assertEqual(health_status(server.address, "weightgate.v1.WeightStream"), 1)
        finally:
            code = server.stop()
        self.assertEqual(code, 0, server.log())
        self.assertIn("stopped", server.log())

    def test_store_directory_is_created_with_layout(self):
        with tempfile.TemporaryDirectory() as tmp:
            store = os.path.join(tmp, "nested", "store")
            with WeightgateServer(store=store):
                for sub in ("blobs", "models", "tmp"):
                    self.assertTrue(os.path.isdir(os.path.join(store, sub)), sub)

    def test_unknown_flag_is_usage_error(self):
        r = subprocess.run([SERVER, "--no_such_flag=1"], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        self.assertIn("no_such_flag", r.stderr)

    def test_non_loopback_without_tls_or_tokens_is_refused(self):
        with tempfile.TemporaryDirectory() as tmp:
            r = subprocess.run([SERVER, "--listen", f"0.0.0.0:{free_port()}", "--metrics_listen", "",
                                "--store", tmp], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2)
        self.assertIn("--insecure", r.stderr)

    def test_port_in_use_is_clear_error(self):
        with WeightgateServer() as first:
            with tempfile.TemporaryDirectory() as tmp:
                r = subprocess.run([SERVER, "--listen", first.address, "--metrics_listen", "",
                                    "--store", tmp], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2)
        self.assertIn("cannot listen", r.stderr)

    def test_stale_staging_files_survive_only_when_fresh(self):
        with tempfile.TemporaryDirectory() as tmp:
            store = os.path.join(tmp, "store")
            os.makedirs(os.path.join(store, "tmp"))
            old = os.path.join(store, "tmp", "stage.old")
            fresh = os.path.join(store, "tmp", "stage.fresh")
            for p in (old, fresh):
                with open(p, "w") as f:
                    f.write("partial")
            os.utime(old, (0, 0))
            with WeightgateServer(store=store):
                self.assertFalse(os.path.exists(old))
                self.assertTrue(os.path.exists(fresh))


class ServiceTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = WeightgateServer().start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def test_ls_empty(self):
        r = self.server.cli("ls")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("no models", r.stdout)

    def test_ls_json_is_proto_json(self):
        r = self.server.cli("--json", "ls")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout), {})

    def test_ls_unknown_model_is_not_found(self):
        r = self.server.cli("ls", "nosuchmodel")
        self.assertEqual(r.returncode, 2)
        self.assertIn("not registered", r.stderr)

    def test_invalid_model_id(self):
        for bad in ("Upper", "_lead", "a" * 129, "sp ace", "a/b"):
            r = self.server.cli("validate", bad, "/etc/hostname")
            self.assertEqual(r.returncode, 2, bad)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
            self.assertIn("invalid model id", r.stderr)

    def test_metrics_exported(self):
        self.assertEqual(self.server.cli("ls").returncode, 0)
        text = self.server.metrics()
        self.assertIn("weightgate_rpcs_total", text)
        self.assertRegex(text, r'weightgate_rpcs_total\{[^}]*method="ListModels"[^}]*\} [1-9]')
        for name in ("weightgate_bytes_in_total", "weightgate_active_streams", "weightgate_store_bytes",
                     "weightgate_cache_requests_total", "weightgate_fetch_seconds"):
            self.assertIn(name, text)

    def test_reflection_lists_services(self):
        # ServerReflectionRequest{list_services: ""} = field 7, empty string.
        with grpc.insecure_channel(self.server.address) as channel:
            call = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                         request_serializer=lambda b: b, response_deserializer=lambda b: b)
            responses = list(call(iter([b"\x3a\x00"]), timeout=5))
        blob = b"".join(responses)
        self.assertIn(b"weightgate.v1.ModelRegistry", blob)
        self.assertIn(b"weightgate.v1.WeightStream", blob)
        self.assertIn(b"grpc.health.v1.Health", blob)


class CliErrorTest(unittest.TestCase):
    def test_unreachable_server(self):
        r = run_cli("ls", server=f"127.0.0.1:{free_port()}", env={"WG_UNUSED": "1"})
        self.assertEqual(r.returncode, 2)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        self.assertIn("cannot connect", r.stderr)

    def test_unknown_flag(self):
        r = run_cli("ls", "--bogus")
        self.assertEqual(r.returncode, 2)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        self.assertIn("--bogus", r.stderr)

    def test_unknown_command(self):
        r = run_cli("frobnicate")
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown command", r.stderr)

    def test_every_command_has_help(self):
        for command in ("inspect", "normalize", "register", "validate", "upload", "ls", "show",
                        "alias", "delete", "fetch", "watch"):
            r = run_cli(command, "--help")
            self.assertEqual(r.returncode, 0, f"{command}: {r.stderr}")
            self.assertIn("usage: weightgate", r.stdout, command)

    def test_no_arguments_prints_usage(self):
        r = run_cli()
        self.assertEqual(r.returncode, 2)
        self.assertIn("usage: weightgate", r.stdout)


class AuthTest(unittest.TestCase):
    def test_tokens(self):
        with tempfile.NamedTemporaryFile("w", suffix=".tokens", delete=False) as f:
            f.write("# comment\nwritertoken writer\nreadertoken reader\nadmintoken admin ops\n")
            tokens = f.name
        try:
            with WeightgateServer(extra_args=["--tokens_file", tokens]) as server:
                r = server.cli("ls")
                self.assertEqual(r.returncode, 2)
                self.assertIn("authorization", r.stderr)
                r = server.cli("--token", "wrong", "ls")
                self.assertEqual(r.returncode, 2)
                self.assertIn("unknown token", r.stderr)
                r = server.cli("ls", env={"WEIGHTGATE_TOKEN": "readertoken"})
                self.assertEqual(r.returncode, 0, r.stderr)
                r = server.cli("--token", "readertoken", "delete", "somemodel")
                self.assertEqual(r.returncode, 2)
                self.assertIn("may only read", r.stderr)
                # Deleting is an admin's job.
                r = server.cli("--token", "writertoken", "delete", "somemodel")
                self.assertEqual(r.returncode, 2)
                self.assertIn("needs admin", r.stderr)
                r = server.cli("--token", "admintoken", "delete", "somemodel")
                self.assertEqual(r.returncode, 2)
                self.assertIn("not registered", r.stderr)
                # The access log names the caller.
                self.assertRegex(server.log(), r"access method=DeleteModel ref=somemodel .*identity=ops code=NOT_FOUND")
                # SIGHUP re-reads the file: the old reader token stops working.
                with open(tokens, "w") as f:
                    f.write("rotated reader\n")
                server.proc.send_signal(signal.SIGHUP)
                deadline = time.time() + 10
                while time.time() < deadline and "tokens reloaded" not in server.log():
                    time.sleep(0.1)
                self.assertIn("tokens reloaded", server.log())
                r = server.cli("--token", "readertoken", "ls")
                self.assertEqual(r.returncode, 2)
                self.assertIn("unknown token", r.stderr)
                r = server.cli("--token", "rotated", "ls")
                self.assertEqual(r.returncode, 0, r.stderr)
        finally:
            os.unlink(tokens)

    def test_tokens_on_public_address_need_tls(self):
        with tempfile.TemporaryDirectory() as tmp:
            tokens = os.path.join(tmp, "tokens")
            with open(tokens, "w") as f:
                f.write("t admin\n")
            r = subprocess.run([SERVER, "--listen", "0.0.0.0:0", "--metrics_listen", "",
                                "--store", os.path.join(tmp, "store"), "--tokens_file", tokens],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 2)
            self.assertIn("cleartext", r.stderr)


if __name__ == "__main__":
    unittest.main()
