"""Checkpoint sets end to end through the real server and CLI: every layout
of make_multifile_fixtures.py (HF sharded with both index formats and none,
torch.distributed.checkpoint from torch 1.13's writer and the torch >= 2.0
layout, DeepSpeed ZeRO 1-3, Megatron tensor-parallel ranks and tensor x
pipeline-parallel ranks, a YOLOv5 whole
pickled module) is inspected, validated and uploaded as one version from
its directory or index file; `fetch --format pt` and the Python client's
`fetch_state_dict` give weights that load into the real module with
strict=True and the same forward output and bytes. Broken sets are INVALID with a named reason."""
import json
import os
import subprocess
import tempfile
import unittest

import torch

import weightgate
from harness import BINARY_DIR, SOURCE_DIR, TORCH_PYTHON, WeightgateServer, run_cli

FIXTURES = os.path.join(SOURCE_DIR, "tests", "fixtures")


class MultifileTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="wg-multifile-")
        cls.fx = os.path.join(cls.tmp.name, "fx")
        subprocess.run([TORCH_PYTHON, os.path.join(FIXTURES, "make_multifile_fixtures.py"), cls.fx],
                       check=True, capture_output=True, timeout=600)
        cls.server = WeightgateServer(store=os.path.join(cls.tmp.name, "store"))
        cls.server.start()
        for model, ref in (("net", "model.pt"), ("gpt", "megatron_ref.pt"), ("yolo", "yolo_ref.pt"),
                           ("gptpp", "megatron_pp_ref.pt"), ("gptcore", "megatron_pp_core_ref.pt"),
                           ("gptvpp", "megatron_vpp_ref.pt")):
            r = cls.server.cli("register", model, "--from", os.path.join(cls.fx, ref))
            assert r.returncode == 0, r.stderr

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.tmp.cleanup()

    def roundtrip(self, model, path, layout, ref):
        r = self.server.cli("--json", "upload", model, os.path.join(self.fx, path))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        version = json.loads(r.stdout)["version"]["version"]
        out = os.path.join(self.tmp.name, layout + ".pt")
        r = self.server.cli("fetch", "%s@%s" % (model, version), "-o", out, "--format", "pt")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.check(out, layout, ref)
        # The same version through the Python client. Its tensors are views of
        # one byte buffer, which torch.save refuses to mix dtypes over: clone
        # them for the file the checker loads.
        state = weightgate.fetch_state_dict("%s@%s" % (model, version), server=self.server.address)
        client_out = os.path.join(self.tmp.name, layout + ".client.pt")
        torch.save({k: v.clone() for k, v in state.items()}, client_out)
        self.check(client_out, layout, ref)

    def check(self, out, layout, ref):
        r = subprocess.run([TORCH_PYTHON, os.path.join(FIXTURES, "check_multifile_roundtrip.py"),
                            out, self.fx, layout, "--spec", os.path.join(self.fx, ref)],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertTrue(r.stdout.startswith("OK"), r.stdout)

    def test_inspect_lists_merged_tensors(self):
        r = run_cli("inspect", os.path.join(self.fx, "hf_bin", "pytorch_model.bin.index.json"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("set_layout=hf_index", r.stdout)
        for name in ("embed.weight", "proj.weight", "head.weight", "steps"):
            self.assertIn(name, r.stdout)
        r = run_cli("inspect", os.path.join(self.fx, "dcp_v2"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("set_layout=dcp", r.stdout)

    def test_hf_layouts(self):
        for layout, path in (("hf_bin", "hf_bin"), ("hf_st", "hf_st/model.safetensors.index.json"),
                             ("hf_series", "hf_series")):
            with self.subTest(layout=layout):
                r = self.server.cli("validate", "net", os.path.join(self.fx, path))
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertIn("VALID", r.stdout)
                self.roundtrip("net", path, layout, "model.pt")

    def test_dcp_zero_megatron_module(self):
        for model, layout, path, ref in (("net", "dcp_113", "dcp_113", "model.pt"),
                                         ("net", "dcp_v2", "dcp_v2", "model.pt"),
                                         ("net", "zero2", "zero2", "model.pt"),
                                         ("net", "zero3", "zero3", "model.pt"),
                                         ("gpt", "megatron_tp2", "megatron_tp2", "megatron_ref.pt"),
                                         ("gptpp", "megatron_pp", "megatron_pp",
                                          "megatron_pp_ref.pt"),
                                         ("gptcore", "megatron_pp_core", "megatron_pp_core",
                                          "megatron_pp_core_ref.pt"),
                                         ("gptvpp", "megatron_vpp", "megatron_vpp",
                                          "megatron_vpp_ref.pt"),
                                         ("yolo", "yolo", "yolo.pt", "yolo_ref.pt")):
            with self.subTest(layout=layout):
                self.roundtrip(model, path, layout, ref)

    def test_megatron_pipeline_stages(self):
        # inspect: the merged tensors under their global layer numbers.
        r = run_cli("inspect", os.path.join(self.fx, "megatron_pp"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("set_layout=megatron_tp_pp", r.stdout)
        self.assertIn("set_pp_layers=3,2", r.stdout)
        for name in ("language_model.encoder.layers.2.mlp.dense_h_to_4h.weight",
                     "language_model.encoder.layers.3.mlp.dense_h_to_4h.weight",
                     "language_model.encoder.layers.4.self_attention.query_key_value.weight",
                     "language_model.encoder.final_layernorm.weight"):
            self.assertRegex(r.stdout, r"(?m)^%s\s" % name.replace(".", r"\."))
        self.assertNotIn("layers.5.", r.stdout)
        # One stored version (fetched and run in test_dcp_zero_megatron_module).
        r = self.server.cli("--json", "upload", "gptpp", os.path.join(self.fx, "megatron_pp"))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(json.loads(r.stdout)["report"]["verdict"], "VALID")
        self.assertTrue(json.loads(r.stdout)["version"]["version"])
        # Megatron core's names: the last stage's output_layer.weight is the tied
        # head's copy against this spec (which has no output layer), so the
        # upload is VALID as it is (no unexpected tensor dropped); without a
        # spec, inspect lists it as a tensor of its own.
        r = run_cli("inspect", os.path.join(self.fx, "megatron_pp_core"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("set_pp_layers=3,2", r.stdout)
        self.assertIn("65 tensors", r.stdout)
        r = self.server.cli("--json", "upload", "gptcore", os.path.join(self.fx, "megatron_pp_core"))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        report = json.loads(r.stdout)["report"]
        self.assertEqual(report["verdict"], "VALID", r.stdout)
        for path, reason in (
                ("megatron_pp_missing_rank", "tensor-parallel rank 1 of pipeline stage 1 is missing"),
                ("megatron_pp_missing_stage", "args.pipeline_model_parallel_size is 2 but 1"),
                ("megatron_pp_global_numbers", "numbers its 2 layers 3..4, not from 0"),
                ("megatron_pp_layer_count", "args.num_layers is 6"),
                ("megatron_pp_untied", "tied weights differ"),
                ("megatron_pp_duplicate", "duplicate tensor language_model.encoder.final_layernorm")):
            with self.subTest(path=path):
                r = self.server.cli("upload", "gptpp", os.path.join(self.fx, path))
                self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                self.assertIn("INVALID", r.stdout)
                self.assertIn(reason, r.stdout)

    def test_broken_sets_are_invalid(self):
        for path, reason in (("hf_missing_shard", "missing shard"),
                             ("dcp_overlap", "overlapping chunks"),
                             ("dcp_gap", "missing chunks"),
                             ("zero2_missing_rank", "inconsistent ranks"),
                             ("megatron_missing", "inconsistent ranks")):
            with self.subTest(path=path):
                r = self.server.cli("validate", "net", os.path.join(self.fx, path))
                self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                self.assertIn("INVALID", r.stdout)
                self.assertIn(reason, r.stdout)


if __name__ == "__main__":
    unittest.main()
