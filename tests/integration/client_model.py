"""A real model with tied weights for the client tests (Python and C++).

    /usr/bin/python3 client_model.py make DIR [EMBED_ROWS]
writes DIR/reference.pt (its state_dict, embedding and head tied), DIR/spec
inputs and DIR/io.pt (a fixed input and the model's output).
    /usr/bin/python3 client_model.py check SAFETENSORS IO
loads a fetched blob strictly (ties honoured by name) and prints max |dy|.
"""
import os
import sys

import torch
import torch.nn as nn


class TiedLM(nn.Module):
    def __init__(self, rows=2048, dim=256):
        super().__init__()
        self.embed = nn.Embedding(rows, dim)
        self.norm = nn.LayerNorm(dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, rows, bias=False)
        self.head.weight = self.embed.weight  # tied, as in most language models
        self.register_buffer("steps", torch.tensor(7, dtype=torch.int64))

    def forward(self, ids):
        h = torch.tanh(self.mix(self.norm(self.embed(ids))))
        return self.head(h)


def model_rows(path):
    rows_file = os.path.join(os.path.dirname(path), "rows")
    if not os.path.exists(rows_file):
        return 2048
    with open(rows_file) as f:
        return int(f.read())


def make(outdir, rows=2048):
    torch.manual_seed(0)
    model = TiedLM(rows)
    model.eval()
    torch.save(model.state_dict(), os.path.join(outdir, "reference.pt"))
    ids = torch.randint(0, rows, (3, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(ids)
    torch.save({"ids": ids, "y": y}, os.path.join(outdir, "io.pt"))
    with open(os.path.join(outdir, "rows"), "w") as f:
        f.write(str(rows))


def outputs_differ(state_dict, io_path):
    """Max |dy| of TiedLM loaded strictly from `state_dict` against io.pt."""
    model = TiedLM(model_rows(io_path))
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    io = torch.load(io_path)
    with torch.no_grad():
        return float((model(io["ids"]) - io["y"]).abs().max())


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 2048)
    else:
        raise SystemExit(f"unknown command {sys.argv[1]}")
