"""deploy/ stays loadable: Prometheus config and rules pass promtool, every
dashboard query names a metric the server really exports."""
import json
import os
import re
import shutil
import subprocess
import unittest

from harness import SOURCE_DIR, WeightgateServer

DEPLOY = os.path.join(SOURCE_DIR, "deploy")


class DeployTest(unittest.TestCase):
    @unittest.skipUnless(shutil.which("promtool"), "promtool (package prometheus) not installed")
    def test_prometheus_config_and_rules(self):
        r = subprocess.run(["promtool", "check", "config", os.path.join(DEPLOY, "prometheus", "prometheus.yml")],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = subprocess.run(["promtool", "check", "rules", os.path.join(DEPLOY, "prometheus", "alerts.yml")],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_dashboard_queries_name_exported_metrics(self):
        with open(os.path.join(DEPLOY, "grafana", "weightgate-dashboard.json")) as f:
            dashboard = json.load(f)
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        self.assertGreater(len(exprs), 5)
        with WeightgateServer() as server:
            server.cli("ls")
            exported = set(re.findall(r"^# TYPE (\w+) ", server.metrics(), re.M))
        histogram_suffixes = ("_bucket", "_sum", "_count")
        for expr in exprs:
            for name in re.findall(r"weightgate_\w+", expr):
                base = name
                for suffix in histogram_suffixes:
                    if base.endswith(suffix):
                        base = base[: -len(suffix)]
                self.assertIn(base, exported, f"{name} in {expr!r}")


if __name__ == "__main__":
    unittest.main()
