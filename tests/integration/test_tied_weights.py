"""Tied weights through the real server, CLI and clients (client_model.TiedLM:
the head shares the embedding's storage). The stored blob holds the tied
bytes once, with a tie record; the manifest lists both names on one byte
range; FetchWeights filtered by a tied name sends that range; `fetch
--format safetensors` writes every name a strict load_state_dict needs (read
as safetensors.torch.load_file reads a file: one tensor per header key),
`--format pt`, fetch_state_dict and the C++ FetchTensors give one shared
storage, all with bit-identical forward output. A fetched file uploads back
to the same blob, and a blob stored before tie records existed (both copies)
is still served with its ties."""
import hashlib
import json
import os
import struct
import subprocess

import grpc
import torch

import weightgate
from client_model import TiedLM, outputs_differ
from client_support import ROWS, ServedModelTest
from harness import BINARY_DIR, SERVER, WeightgateServer
from weightgate.v1 import stream_pb2, stream_pb2_grpc

DIM = 256
DTYPES = {"F32": torch.float32, "I64": torch.int64}
TIE_KEY = "weightgate.tied_to:head.weight"


def split_safetensors(data):
    """(header dict, data start) of safetensors bytes."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), 8 + n


def load_file(path):
    """What safetensors.torch.load_file returns: one tensor per header key
    (the package is not in Debian bookworm, so the format is read here)."""
    with open(path, "rb") as f:
        data = f.read()
    header, base = split_safetensors(data)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = bytearray(data[base + begin:base + end])
        out[name] = torch.frombuffer(raw, dtype=DTYPES[info["dtype"]]).reshape(info["shape"]) \
            if raw else torch.empty(info["shape"], dtype=DTYPES[info["dtype"]])
    return out


class TiedWeightsTest(ServedModelTest):
    prefix = "wg-tied-"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.reference = torch.load(cls.path("reference.pt"))

    def cli_ok(self, *args):
        r = self.server.cli(*args)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r

    def assertStrictAndIdentical(self, sd, skip=()):
        self.assertEqual(sorted(sd), sorted(self.reference))
        for name, tensor in self.reference.items():
            if name not in skip:
                self.assertTrue(torch.equal(sd[name], tensor), name)
        self.assertEqual(outputs_differ(sd, self.path("io.pt")), 0.0)

    def fetch_raw(self, names):
        """(manifest, {offset: bytes}) of FetchWeights for `names`."""
        with grpc.insecure_channel(self.server.address) as channel:
            stub = stream_pb2_grpc.WeightStreamStub(channel)
            manifest, chunks = None, {}
            for m in stub.FetchWeights(stream_pb2.FetchRequest(ref="lm@prod", tensor_names=names),
                                       timeout=60):
                if m.HasField("manifest"):
                    manifest = m.manifest
                else:
                    self.assertNotIn(m.chunk.offset, chunks)
                    chunks[m.chunk.offset] = m.chunk.data
        return manifest, chunks

    def test_stored_blob_holds_the_tied_bytes_once(self):
        header, base = split_safetensors(self.blob)
        self.assertNotIn("head.weight", header)
        self.assertEqual(header["__metadata__"][TIE_KEY], "embed.weight")
        once = sum(t.numel() * t.element_size() for n, t in self.reference.items() if n != "head.weight")
        self.assertEqual(len(self.blob), base + once)
        self.assertLess(len(self.blob), ROWS * DIM * 4 * 2)  # not two 8 MiB copies
        # The version's byte totals are the stored bytes.
        self.assertEqual(int(self.version["size_bytes"]), len(self.blob))
        self.assertEqual(int(self.version["report"]["total_bytes"]), once)
        listed = json.loads(self.cli_ok("--json", "ls", "lm").stdout)
        self.assertIn(str(len(self.blob)), json.dumps(listed))
        # fsck reads the store as it is (the server holds no lock it needs).
        r = subprocess.run([SERVER, "--store", self.server.store, "--fsck"], capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("0 problems", r.stdout)

    def test_manifest_lists_both_names_on_one_range(self):
        manifest, chunks = self.fetch_raw(["head.weight"])
        entries = {t.name: t for t in manifest.tensors}
        self.assertEqual(len(entries), 7)
        head, embed = entries["head.weight"], entries["embed.weight"]
        self.assertEqual(head.tied_to, "embed.weight")
        self.assertEqual(embed.tied_to, "")
        self.assertEqual((head.offset, head.length), (embed.offset, embed.length))
        self.assertEqual((head.dtype, list(head.shape)), ("F32", [ROWS, DIM]))
        self.assertEqual(manifest.total_bytes, len(self.blob))
        # Filtered by the tied name: its partner's range, once.
        got = b"".join(chunks[o] for o in sorted(chunks))
        self.assertEqual(min(chunks), embed.offset)
        self.assertEqual(got, self.blob[embed.offset:embed.offset + embed.length])
        _, both = self.fetch_raw(["head.weight", "embed.weight"])
        self.assertEqual(sum(len(c) for c in both.values()), embed.length)

    def test_clients_give_one_storage_and_identical_outputs(self):
        sd = weightgate.fetch_state_dict("lm@prod", server=self.server.address, streams=2)
        self.assertEqual(sd["head.weight"].data_ptr(), sd["embed.weight"].data_ptr())
        self.assertStrictAndIdentical(sd)
        model = TiedLM(ROWS)
        weightgate.load_into(model, "lm@prod", server=self.server.address)
        self.assertIs(model.head.weight, model.embed.weight)
        # The C++ client's FetchTensors, saved with torch.save by the checker.
        out = self.path("tied_cpp.pt")
        r = subprocess.run([os.path.join(BINARY_DIR, "tests", "cpp_client_check"), "--server",
                            self.server.address, "lm@prod", out], capture_output=True, text=True,
                           timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        sd = torch.load(out)
        self.assertEqual(sd["head.weight"].data_ptr(), sd["embed.weight"].data_ptr())
        # pickle_save writes the one byte storage under the first tensor's
        # dtype, so the int64 buffer does not survive torch.load bit for bit.
        self.assertStrictAndIdentical(sd, skip=("steps",))

    def test_cli_fetch_safetensors_loads_strictly(self):
        out = self.path("fetched.safetensors")
        self.cli_ok("fetch", "lm@prod", "-o", out)
        with open(out, "rb") as f:
            header, _ = split_safetensors(f.read())
        self.assertIn("head.weight", header)
        self.assertNotIn(TIE_KEY, header.get("__metadata__", {}))
        self.assertFalse(os.path.exists(out + ".part"))
        sd = load_file(out)
        self.assertStrictAndIdentical(sd)
        model = TiedLM(ROWS)
        model.load_state_dict(sd, strict=True)

    def test_cli_fetch_pt_shares_one_storage(self):
        out = self.path("fetched.pt")
        self.cli_ok("fetch", "lm@prod", "-o", out, "--format", "pt")
        sd = torch.load(out, weights_only=True)
        self.assertEqual(sd["head.weight"].data_ptr(), sd["embed.weight"].data_ptr())
        self.assertStrictAndIdentical(sd)
        self.assertLess(os.path.getsize(out), ROWS * DIM * 4 * 2)

    def test_cli_tensor_subsets_with_a_tied_name(self):
        embed = self.reference["embed.weight"]
        out = self.path("head.safetensors")
        self.cli_ok("fetch", "lm@prod", "-o", out, "--tensor", "head.weight")
        sd = load_file(out)
        self.assertEqual(sorted(sd), ["head.weight"])
        self.assertTrue(torch.equal(sd["head.weight"], embed))
        out = self.path("pair.safetensors")
        self.cli_ok("fetch", "lm@prod", "-o", out, "--tensor", "head.weight", "--tensor", "embed.weight")
        sd = load_file(out)
        self.assertEqual(sorted(sd), ["embed.weight", "head.weight"])
        self.assertTrue(torch.equal(sd["head.weight"], embed))
        self.assertTrue(torch.equal(sd["embed.weight"], embed))
        out = self.path("pair.pt")
        self.cli_ok("fetch", "lm@prod", "-o", out, "--format", "pt", "--tensor", "head.weight",
                    "--tensor", "embed.weight")
        sd = torch.load(out, weights_only=True)
        self.assertEqual(sd["head.weight"].data_ptr(), sd["embed.weight"].data_ptr())
        self.assertTrue(torch.equal(sd["head.weight"], embed))

    def test_fetched_file_uploads_back_to_the_same_blob(self):
        out = self.path("roundtrip.safetensors")
        self.cli_ok("fetch", "lm@prod", "-o", out)
        r = json.loads(self.cli_ok("--json", "upload", "lm", out).stdout)
        self.assertEqual(r["report"]["verdict"], "VALID")
        self.assertEqual(r["version"]["blob_sha256"], self.sha)


class BlobBeforeTieRecordsTest(ServedModelTest):
    """A blob stored before tie records existed holds the tied tensor once per
    name: it keeps working, its ties found by comparing bytes."""

    prefix = "wg-oldtied-"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # Rewrite version 1 as the old form: every name with its own bytes.
        header, base = split_safetensors(cls.blob)
        meta = {k: v for k, v in header.pop("__metadata__").items() if not k.startswith("weightgate.")}
        names = [n for n in header]
        embed = header["embed.weight"]
        payload = {n: cls.blob[base + header[n]["data_offsets"][0]:base + header[n]["data_offsets"][1]]
                   for n in names}
        payload["head.weight"] = payload["embed.weight"]
        order = ["embed.weight", "norm.weight", "norm.bias", "mix.weight", "mix.bias", "head.weight",
                 "steps"]
        assert sorted(order) == sorted(names + ["head.weight"])
        new_header, offset = {"__metadata__": meta}, 0
        for n in order:
            info = dict(embed) if n == "head.weight" else dict(header[n])
            info["data_offsets"] = [offset, offset + len(payload[n])]
            offset += len(payload[n])
            new_header[n] = info
        text = json.dumps(new_header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        old = struct.pack("<Q", len(text)) + text + b"".join(payload[n] for n in order)
        cls.server.stop()
        sha = hashlib.sha256(old).hexdigest()
        with open(os.path.join(cls.server.store, "blobs", sha), "wb") as f:
            f.write(old)
        record = os.path.join(cls.server.store, "models", "lm", "versions", "1.json")
        with open(record) as f:
            version = json.load(f)
        version["blobSha256" if "blobSha256" in version else "blob_sha256"] = sha
        version["sizeBytes" if "sizeBytes" in version else "size_bytes"] = str(len(old))
        with open(record, "w") as f:
            json.dump(version, f)
        cls.server.start()
        cls.old, cls.old_sha = old, sha

    def test_old_blob_still_served_with_its_ties(self):
        manifest, blob = weightgate.fetch_bytes("lm@prod", server=self.server.address)
        self.assertEqual(manifest.blob_sha256, self.old_sha)
        self.assertEqual(bytes(blob), self.old)
        entries = {t.name: t for t in manifest.tensors}
        self.assertEqual(entries["head.weight"].tied_to, "embed.weight")
        self.assertNotEqual(entries["head.weight"].offset, entries["embed.weight"].offset)
        reference = torch.load(self.path("reference.pt"))
        sd = weightgate.fetch_state_dict("lm@prod", server=self.server.address)
        self.assertEqual(sd["head.weight"].data_ptr(), sd["embed.weight"].data_ptr())
        self.assertEqual(outputs_differ(sd, self.path("io.pt")), 0.0)
        # The CLI: safetensors is the blob as stored; pt shares one storage.
        out = self.path("old.safetensors")
        r = self.server.cli("fetch", "lm@prod", "-o", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), self.old)
        out = self.path("old.pt")
        r = self.server.cli("fetch", "lm@prod", "-o", out, "--format", "pt")
        self.assertEqual(r.returncode, 0, r.stderr)
        sd = torch.load(out, weights_only=True)
        self.assertEqual(sd["head.weight"].data_ptr(), sd["embed.weight"].data_ptr())
        self.assertEqual(sorted(sd), sorted(reference))
        self.assertEqual(outputs_differ(sd, self.path("io.pt")), 0.0)
        r = self.server.cli("fetch", "lm@prod", "-o", self.path("old_head.safetensors"), "--tensor",
                            "head.weight")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(torch.equal(load_file(self.path("old_head.safetensors"))["head.weight"],
                                    reference["embed.weight"]))
        # Uploaded again, the old form is stored in the new one (bytes once).
        r = self.server.cli("--json", "upload", "lm", self.path("old.safetensors"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["version"]["blob_sha256"], self.sha)


if __name__ == "__main__":
    import unittest
    unittest.main()
