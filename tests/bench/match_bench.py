#!/usr/bin/python3
"""Matcher figures: time to match a large state_dict, and a small hostile file.

Usage: /usr/bin/python3 match_bench.py BUILD_DIR

  large     N tensors under {'state_dict': {'module.' + key}} plus an
            optimizer, against a JSON spec: the candidate search must stay
            near-linear in the number of keys.
  dag       a pickle of a few hundred bytes: container and wrapper keys
            (state_dict, model, module, _orig_mod, ...) that all share one
            sub-dict, LEVELS deep. It once took 44 s of CPU.

Prints match_ms (weightgate's own timing) and the CPU seconds of the
weightgate-normalize process for each.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile

import torch

CONTAINERS = ["state_dict", "model_state_dict", "model", "module", "net", "state_dict_ema",
              "model_ema", "ema", "_orig_mod", "_fsdp_wrapped_module",
              "_checkpoint_wrapped_module"]


def run(binary, ckpt, spec):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([binary, ckpt, "--spec", spec, "--json"], capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report = json.loads(out.stdout)
    return report, cpu


def main():
    binary = os.path.join(sys.argv[1] if len(sys.argv) > 1 else "build", "bin",
                          "weightgate-normalize")
    with tempfile.TemporaryDirectory(prefix="wg-match-bench-") as d:
        for n in (1000, 20000, 100000):
            sd = {"layers.%d.w%d" % (i // 4, i % 4): torch.zeros(1) for i in range(n)}
            spec = {"tensors": {k: {"dtype": "F32", "shape": [1]} for k in sd}}
            spec_path = os.path.join(d, "spec.json")
            with open(spec_path, "w") as f:
                json.dump(spec, f)
            ckpt = os.path.join(d, "large.pt")
            torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in sd.items()},
                        "optimizer": {"state": {}}}, ckpt)
            report, cpu = run(binary, ckpt, spec_path)
            print("large  %6d tensors: verdict %-10s match %8.1f ms  process cpu %.2f s" %
                  (n, report["verdict"], report["timings"].get("match_ms", report["timings"].get("matchMs", 0)), cpu))
        spec = {"tensors": {"w": {"dtype": "F32", "shape": [1]}}}
        spec_path = os.path.join(d, "small.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        for levels in (2, 3, 4, 5):
            level = {"w": torch.zeros(1)}
            for _ in range(levels):
                level = {k: level for k in CONTAINERS}  # one shared dict, memoised
            ckpt = os.path.join(d, "dag.pt")
            torch.save(level, ckpt, _use_new_zipfile_serialization=False)
            report, cpu = run(binary, ckpt, spec_path)
            print("dag    %d levels (%5d bytes): verdict %-8s %-16s match %8.1f ms  cpu %.2f s" %
                  (levels, os.path.getsize(ckpt), report["verdict"],
                   ",".join(report.get("reasons", [])), report["timings"].get("match_ms", report["timings"].get("matchMs", 0)), cpu))


if __name__ == "__main__":
    main()
