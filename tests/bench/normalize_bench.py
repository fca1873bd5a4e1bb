#!/usr/bin/python3
"""Helpers of normalize_bench.sh (Debian's torch).

  normalize_bench.py gen DIR     writes DIR/dp_1g.pt (1 GiB fp32 DataParallel
                                 state_dict), DIR/spec_fp16.json, DIR/tiny.pt
                                 and DIR/tiny_spec.json (RSS baseline)
  normalize_bench.py route IN OUT  the Python route a user would script:
                                 torch.load, strip "module.", load_state_dict
                                 strict into the model, half(), torch.save
  normalize_bench.py lean IN OUT   the least Python can do: torch.load, strip,
                                 half() per tensor, torch.save (no model)
"""

import collections
import json
import sys

import torch
import torch.nn as nn

LAYERS = 16
WIDTH = 4096  # 16 x 4096 x 4096 fp32 = 1 GiB of weights


class Big(nn.Module):
    def __init__(self, layers=LAYERS, width=WIDTH):
        super().__init__()
        self.blocks = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)

    def forward(self, x):
        return self.norm(self.blocks(x))


def spec(sd, path):
    tensors = collections.OrderedDict(
        (k, {"dtype": "F16" if v.is_floating_point() else "I64", "shape": list(v.shape)})
        for k, v in sd.items())
    with open(path, "w") as f:
        json.dump({"tensors": tensors}, f)


def gen(d):
    torch.manual_seed(0)
    with torch.no_grad():
        m = Big()
        sd = m.state_dict()
        torch.save(collections.OrderedDict(("module." + k, v) for k, v in sd.items()),
                   d + "/dp_1g.pt")
        spec(sd, d + "/spec_fp16.json")
        t = Big(layers=1, width=16)
        tsd = t.state_dict()
        torch.save(collections.OrderedDict(("module." + k, v) for k, v in tsd.items()),
                   d + "/tiny.pt")
        spec(tsd, d + "/tiny_spec.json")


def route(src, dst):
    sd = torch.load(src, map_location="cpu")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    model = Big()
    model.load_state_dict(sd, strict=True)
    model.half()
    torch.save(model.state_dict(), dst)


def lean(src, dst):
    sd = torch.load(src, map_location="cpu")
    out = collections.OrderedDict()
    for k in list(sd):
        v = sd.pop(k)
        out[k[len("module."):] if k.startswith("module.") else k] = v.half()
    torch.save(out, dst)


if __name__ == "__main__":
    {"gen": lambda: gen(sys.argv[2]), "route": lambda: route(sys.argv[2], sys.argv[3]),
     "lean": lambda: lean(sys.argv[2], sys.argv[3])}[sys.argv[1]]()
