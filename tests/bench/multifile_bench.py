#!/usr/bin/python3
"""Writes the inputs of multifile_bench.sh.

  multifile_bench.py gen WORK [GIB]

WORK/single/model.safetensors      GIB/2 GiB in 64 MiB fp32 tensors
WORK/sharded/                      GIB GiB as model-0000k-of-0000n.safetensors (1 GiB
                                   shards) + model.safetensors.index.json
WORK/{single,sharded,tiny}.json    JSON specs; WORK/tiny.safetensors one small tensor
"""
import json
import os
import struct
import sys

import torch

ROWS, COLS = 4096, 4096  # 64 MiB of fp32


def write(path, tensors):
    header, off = {}, 0
    for name, t in tensors:
        n = t.numel() * t.element_size()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for _, t in tensors:
            f.write(t.numpy().tobytes())


def spec(path, names, shape):
    with open(path, "w") as f:
        json.dump({"tensors": {n: {"dtype": "F32", "shape": list(shape)} for n in names}}, f)


def main():
    work = sys.argv[2]
    gib = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    per_gib = (1 << 30) // (ROWS * COLS * 4)
    os.makedirs(os.path.join(work, "single"), exist_ok=True)
    os.makedirs(os.path.join(work, "sharded"), exist_ok=True)
    g = torch.Generator().manual_seed(0)
    names = ["layers.%d.weight" % i for i in range(gib * per_gib)]
    weight_map, total = {}, 0
    for k in range(gib):
        shard = "model-%05d-of-%05d.safetensors" % (k + 1, gib)
        part = [(n, torch.randn(ROWS, COLS, generator=g)) for n in names[k * per_gib:(k + 1) * per_gib]]
        write(os.path.join(work, "sharded", shard), part)
        for n, t in part:
            weight_map[n] = shard
            total += t.numel() * 4
        if k == 0:
            half = part[:max(1, len(part) // 2)] if gib == 1 else part
            write(os.path.join(work, "single", "model.safetensors"), half)
            spec(os.path.join(work, "single.json"), [n for n, _ in half], (ROWS, COLS))
        del part
    with open(os.path.join(work, "sharded", "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    spec(os.path.join(work, "sharded.json"), names, (ROWS, COLS))
    write(os.path.join(work, "tiny.safetensors"), [("w", torch.zeros(4, 4))])
    spec(os.path.join(work, "tiny.json"), ["w"], (4, 4))


if __name__ == "__main__":
    main()
