"""Upload of a file that already is the canonical stored form: validated,
then committed as uploaded (no normaliser output written); anything else is
still rewritten into the canonical form."""
import hashlib
import json
import os
import struct
import tempfile
import unittest

from client_model import make
from harness import WeightgateServer


def safetensors_header(blob):
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), 8 + n


class FastUploadTest(unittest.TestCase):
    def test_canonical_upload_is_committed_as_uploaded(self):
        with tempfile.TemporaryDirectory(prefix="wg-fastup-") as tmp, WeightgateServer() as server:
            make(tmp, 1024)
            ref = os.path.join(tmp, "reference.pt")

            def cli(*args):
                r = server.cli(*args)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                return r

            cli("register", "lm", "--from", ref)
            first = json.loads(cli("--json", "upload", "lm", ref).stdout)
            self.assertIn("write_ms", first["report"]["timings"])  # torch.save: normalised and written
            # The validation worker hashed the stored form as it wrote it; the
            # store named the blob by that hash without reading it again. The
            # stored blob is what a client's fetch_bytes or FetchToFile gets
            # (the tied head is a tie record, its bytes held once).
            first_sha = first["version"]["blob_sha256"]
            with open(os.path.join(server.store, "blobs", first_sha), "rb") as f:
                blob = bytearray(f.read())
            self.assertEqual(hashlib.sha256(blob).hexdigest(), first_sha)
            header, data_start = safetensors_header(blob)
            self.assertNotIn("head.weight", header)
            self.assertEqual(header["__metadata__"]["weightgate.tied_to:head.weight"], "embed.weight")

            # Uploaded again as it is: canonical, committed as uploaded, same blob.
            stored = os.path.join(tmp, "stored.safetensors")
            with open(stored, "wb") as f:
                f.write(blob)
            again = json.loads(cli("--json", "upload", "lm", stored).stdout)
            self.assertEqual(again["report"]["verdict"], "VALID")
            self.assertNotIn("write_ms", again["report"]["timings"])
            self.assertEqual(again["version"]["blob_sha256"], first["version"]["blob_sha256"])

            # New bytes in the canonical layout: one weight changed, still finite.
            begin = data_start + header["mix.weight"]["data_offsets"][0]
            blob[begin:begin + 4] = struct.pack("<f", 0.25)
            canonical = os.path.join(tmp, "canonical.safetensors")
            with open(canonical, "wb") as f:
                f.write(blob)
            sha = hashlib.sha256(blob).hexdigest()
            second = json.loads(cli("--json", "upload", "lm", canonical).stdout)
            self.assertEqual(second["report"]["verdict"], "VALID")
            self.assertNotIn("write_ms", second["report"]["timings"])  # nothing rewritten
            self.assertEqual(second["version"]["blob_sha256"], sha)
            self.assertEqual(second["report"]["input_sha256"], sha)
            with open(os.path.join(server.store, "blobs", sha), "rb") as f:
                self.assertEqual(f.read(), bytes(blob))

            # Same tensors, other metadata (the tie record gone, so the head
            # is filled from its tied partner): not canonical, so normalised.
            meta = dict(header)
            meta["__metadata__"] = {"format": "pt", "producer": "someone-else"}
            text = json.dumps(meta).encode()
            other = struct.pack("<Q", len(text)) + text + bytes(blob[data_start:])
            path = os.path.join(tmp, "other.safetensors")
            with open(path, "wb") as f:
                f.write(other)
            third = json.loads(cli("--json", "upload", "lm", path).stdout)
            self.assertIn("write_ms", third["report"]["timings"])
            self.assertEqual(third["version"]["blob_sha256"], sha)  # rewritten to the canonical bytes
            self.assertEqual(third["report"]["input_sha256"], hashlib.sha256(other).hexdigest())


if __name__ == "__main__":
    unittest.main()
