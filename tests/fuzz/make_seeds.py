#!/usr/bin/python3
"""Writes small seed inputs for the fuzz targets under OUT/<target>/.

Usage: /usr/bin/python3 make_seeds.py OUT

Seeds are real files from Debian's torch (torch.save zip and legacy formats,
pickle protocols 2 and 4, a training checkpoint with optimizer state, a
TorchScript module), Python's zipfile and pickle, and safetensors / JSON spec
layouts written with json + struct. Nothing here is committed: run.sh calls
this at run time.
"""

import io
import json
import os
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict


def write(out, target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def torch_seeds():
    import torch
    torch.manual_seed(0)
    seeds = {}

    def save(name, obj, **kw):
        buf = io.BytesIO()
        torch.save(obj, buf, **kw)
        seeds[name] = buf.getvalue()

    lin = torch.nn.Linear(3, 2)
    save("state_dict.pt", lin.state_dict())
    save("legacy.pt", lin.state_dict(), _use_new_zipfile_serialization=False)
    save("protocol4.pt", lin.state_dict(), pickle_protocol=4)
    base = torch.arange(12, dtype=torch.float32)
    save("views.pt", {"a": base.view(3, 4), "t": base.view(3, 4).t(), "s": base[2:7],
                      "h": torch.ones(2, dtype=torch.float16), "b": torch.tensor([True]),
                      "i": torch.tensor(5), "e": torch.zeros(0, 2)})
    opt = torch.optim.Adam(lin.parameters())
    lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    save("training.pt", {"epoch": 3, "step": 10, "name": "run",
                         "state_dict": lin.state_dict(), "optimizer": opt.state_dict()})
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Linear(2, 2))), buf)
    seeds["torchscript.pt"] = buf.getvalue()
    return seeds


def pickle_seeds():
    data = {"int": 1, "big": 2 ** 100, "neg": -(2 ** 70), "float": 1.5, "str": "caf\u00e9",
            "bytes": b"\x00\x01", "tuple": (1, (2, 3)), "list": [1, [2]], "set": {1, 2},
            "frozen": frozenset({3}), "none": None, "bool": True,
            "od": OrderedDict(a=1)}
    shared = [1, 2]
    data["shared"] = [shared, shared]
    seeds = {}
    for proto in range(0, 6):
        seeds["plain_p%d.pkl" % proto] = pickle.dumps(data, protocol=proto)
    # Pickled, never unpickled: dangerous-global shapes the reader must flag.
    import os as _os

    class Reduce:
        def __init__(self, fn, args):
            self.fn, self.args = fn, args

        def __reduce__(self):
            return self.fn, self.args

    seeds["os_system_p0.pkl"] = pickle.dumps(Reduce(_os.system, ("touch /tmp/pwned",)), protocol=0)
    seeds["eval_p4.pkl"] = pickle.dumps({"x": Reduce(eval, ("1+1",))}, protocol=4)
    return seeds


def safetensors_bytes(tensors, metadata=None):
    header, blob, offset = {}, b"", 0
    if metadata:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blob += raw
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + blob


def hostile_seeds(out):
    """One file per attack class (tests/fixtures/make_hostile_fixtures.py):
    whole files for the reader and zip targets, their pickles (when small
    enough to mutate) for the pickle target."""
    import subprocess
    import tempfile
    here = os.path.dirname(os.path.abspath(__file__))
    gen = os.path.join(here, "..", "fixtures", "make_hostile_fixtures.py")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, gen, tmp], check=True)
        for name in sorted(os.listdir(tmp)):
            if name.startswith("manifest") or name == "DONE":
                continue
            with open(os.path.join(tmp, name), "rb") as f:
                data = f.read()
            write(out, "reader", "hostile_" + name, data)
            if data[:2] != b"PK":
                continue
            write(out, "zip", "hostile_" + name, data)
            try:
                with zipfile.ZipFile(io.BytesIO(data)) as zf:
                    pkl = zf.read(zf.namelist()[0])
            except Exception:  # noqa: BLE001 - damaged on purpose
                continue
            if len(pkl) <= 16384:
                write(out, "pickle", "hostile_" + name + ".pkl", pkl)


def bundle_bytes(files, count=None):
    """A set bundle (server/checkpoint/set_bundle.h): magic, u32 count, then per
    file u16 path length, path, u64 size, bytes."""
    out = b"WGSET\0\1\n" + struct.pack("<I", len(files) if count is None else count)
    for path, data in files:
        p = path.encode()
        out += struct.pack("<H", len(p)) + p + struct.pack("<Q", len(data)) + data
    return out


def bundle_seeds(out):
    # The first byte of each seed is the fuzzer's piece-size selector.
    seeds = {
        "shards.bundle": bundle_bytes([
            ("model.safetensors.index.json", b'{"weight_map": {"a": "model-00001-of-00002.safetensors"}}'),
            ("model-00001-of-00002.safetensors", b"x" * 64),
            ("model-00002-of-00002.safetensors", b"y" * 40)]),
        "nested.bundle": bundle_bytes([("global_step3/mp_rank_00_model_states.pt", b"pt" * 20),
                                       ("latest", b"global_step3"), ("empty", b"")]),
        "short.bundle": bundle_bytes([("a", b"abc")])[:-1],
        "count.bundle": bundle_bytes([("a", b"abc")], count=2),
        "dotdot.bundle": bundle_bytes([("../a", b"abc")]),
        "dup.bundle": bundle_bytes([("a/b", b"1"), ("a/b", b"2")]),
        "through.bundle": bundle_bytes([("a", b"1"), ("a/b", b"2")]),
        "long.bundle": bundle_bytes([("d/" + "n" * 260, b"1")]),
    }
    for i, (name, data) in enumerate(sorted(seeds.items())):
        write(out, "set_bundle", name, bytes([i * 5]) + data)


def main():
    out = sys.argv[1]
    bundle_seeds(out)
    for name, data in torch_seeds().items():
        write(out, "reader", name, data)
        write(out, "zip", name, data)
        if data[:2] == b"PK":
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                for info in zf.infolist():
                    if info.filename.endswith(".pkl"):
                        write(out, "pickle", name + "." + info.filename.replace("/", "_"),
                              zf.read(info))
        else:
            write(out, "pickle", name, data)

    for name, data in pickle_seeds().items():
        write(out, "pickle", name, data)
        write(out, "reader", name, data)

    hostile_seeds(out)

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"a": 1}, protocol=2))
        zf.writestr("archive/text", b"abc" * 100)
        zf.writestr("archive/empty", b"")
    write(out, "zip", "deflated.zip", buf.getvalue())
    write(out, "reader", "deflated.zip", buf.getvalue())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("archive/data.pkl")
        with zf.open(info, "w", force_zip64=True) as f:
            f.write(pickle.dumps([1, 2], protocol=2))
    write(out, "zip", "zip64.zip", buf.getvalue())

    st = {
        "plain.safetensors": safetensors_bytes(
            {"w": ("F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)),
             "b": ("I64", [2], struct.pack("<2q", -1, 7)),
             "m": ("BOOL", [3], b"\x01\x00\x01")}, {"format": "pt"}),
        "scalar.safetensors": safetensors_bytes({"s": ("BF16", [], b"\x80\x3f"),
                                                 "e": ("F16", [0, 3], b"")}),
        "empty.safetensors": safetensors_bytes({}),
    }
    for name, data in st.items():
        write(out, "safetensors", name, data)
        write(out, "reader", name, data)
        n, = struct.unpack("<Q", data[:8])
        write(out, "json", name + ".json", data[8:8 + n])

    specs = {
        "spec.json": {"tensors": {"fc.weight": {"dtype": "F32", "shape": [10, 20]},
                                  "fc.bias": {"dtype": "float16", "shape": [10]},
                                  "n": {"dtype": "torch.int64", "shape": []}},
                      "metadata": {"source": "seed"}},
        "escapes.json": {"tensors": {"caf\u00e9 \"q\" \\ \n \U0001F600": {"dtype": "bf16",
                                                                        "shape": [0, 1]}},
                         "notes": [1, -2.5e-3, True, False, None, {}]},
    }
    for name, doc in specs.items():
        for ascii_only in (True, False):
            data = json.dumps(doc, ensure_ascii=ascii_only, indent=1).encode()
            tag = name + (".ascii" if ascii_only else ".utf8")
            write(out, "json", tag, data)
            write(out, "reader", tag, data)


if __name__ == "__main__":
    main()
