"""A small real model and checkpoint writers for integration tests.
Run with Debian's /usr/bin/python3 (python3-torch)."""
import sys

import torch
import torch.nn as nn


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.flatten(1))


def make(outdir):
    import os
    torch.manual_seed(0)
    model = TinyNet()
    # Non-trivial BN statistics so a wrong mapping would change outputs.
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 8, 8))
    model.eval()
    torch.save(model.state_dict(), os.path.join(outdir, "reference.pt"))
    wrapped = nn.DataParallel(model)
    torch.save(wrapped.state_dict(), os.path.join(outdir, "dataparallel.pt"))
    torch.save({"epoch": 3, "step": 300, "state_dict": wrapped.state_dict(),
                "optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict()},
               os.path.join(outdir, "training.pt"))
    bad = {k: v.clone() for k, v in model.state_dict().items()}
    bad["fc.weight"][0, 0] = float("nan")
    torch.save(bad, os.path.join(outdir, "nan.pt"))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.save({"x": x, "y": model(x).detach()}, os.path.join(outdir, "io.pt"))


def check(weights_path, io_path, fmt):
    """Loads weights (safetensors or pt) strictly into TinyNet; prints max |dy|."""
    import json
    import struct
    if fmt == "pt":
        sd = torch.load(weights_path, weights_only=True)
    else:
        blob = open(weights_path, "rb").read()
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8:8 + n])
        names = {"F32": torch.float32, "F16": torch.float16, "I64": torch.int64}
        sd = {}
        for k, info in header.items():
            if k == "__metadata__":
                continue
            b, e = info["data_offsets"]
            sd[k] = torch.frombuffer(bytearray(blob[8 + n + b:8 + n + e]),
                                     dtype=names[info["dtype"]]).reshape(info["shape"])
    model = TinyNet()
    model.load_state_dict(sd, strict=True)
    model.eval()
    io = torch.load(io_path)
    print(float((model(io["x"]) - io["y"]).abs().max()))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        check(sys.argv[2], sys.argv[3], sys.argv[4])
