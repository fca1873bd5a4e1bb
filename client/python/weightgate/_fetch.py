"""FetchWeights client: concurrent byte-range streams into one buffer.

One small call reads the manifest (and pins an alias to its version); the rest
of the blob is split into N ranges, each fetched by its own stream on its own
connection and written straight into the caller's buffer. Chunks are parsed
from the raw response bytes (no protobuf copy of the payload), CRC32C-checked
and copied once, in C without the GIL (weightgate._native; python3-crc32c and
a slice copy when that module was not built). A hashing thread follows the
contiguous prefix of received bytes, so the sha256 is nearly done when the
last chunk lands.
"""
import dataclasses
import hashlib
import os
import threading
import time

import crc32c as _crc32c
import grpc

from weightgate._errors import Error

try:
    from weightgate import _native
except ImportError:  # built without a C compiler or python3-dev
    _native = None
from weightgate.v1 import stream_pb2

_FETCH = "/weightgate.v1.WeightStream/FetchWeights"
_MIB = 1 << 20
# A blob is a safetensors file: its first 8 bytes (the header length) always exist.
_HEAD_BYTES = 8
# One range stream per this many bytes, at most one per two cores (each
# stream's thread lands chunks, the hashing thread follows) and _MAX_STREAMS:
# each stream adds ~20 MiB of gRPC receive buffers.
_BYTES_PER_STREAM = 64 * _MIB
_MAX_STREAMS = 2
_RANGE_ALIGN = _MIB

_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "BOOL": "bool", "C64": "complex64", "C128": "complex128",
}


@dataclasses.dataclass
class FetchOptions:
    """Connection and transfer settings; every field has a usable default.

    server: host:port ($WEIGHTGATE_SERVER, else 127.0.0.1:50051).
    token: bearer token ($WEIGHTGATE_TOKEN).
    tls_ca: PEM file of the roots that sign the server's certificate; giving
        it (or tls_cert) turns TLS on. tls_cert/tls_key: client certificate and
        key for mTLS.
    streams: concurrent range streams; None picks from size and cores.
    timeout: deadline in seconds of each call (None: none).
    retries: how many times in a row a stream cut by UNAVAILABLE is resumed.
    chunk_bytes: preferred chunk size (the server clamps it).
    verify_chunks: CRC32C-check every chunk (the sha256 check always runs).
    """
    server: str = None
    token: str = None
    tls_ca: str = None
    tls_cert: str = None
    tls_key: str = None
    streams: int = None
    timeout: float = None
    retries: int = 5
    chunk_bytes: int = 0
    verify_chunks: bool = True


def default_streams(total_bytes, cores=None):
    """Streams for a blob of `total_bytes`: one per 64 MiB, at most one per two cores, at most 2."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(cores // 2, _MAX_STREAMS, total_bytes // _BYTES_PER_STREAM))


def _read_pem(path, what):
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise Error(grpc.StatusCode.INVALID_ARGUMENT, f"cannot read {what} {path}: {e.strerror}") from None


class _Connection:
    """One channel (its own TCP connection) and the raw FetchWeights method."""

    def __init__(self, opts):
        self.server = opts.server or os.environ.get("WEIGHTGATE_SERVER", "127.0.0.1:50051")
        token = opts.token or os.environ.get("WEIGHTGATE_TOKEN")
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        channel_options = [
            ("grpc.max_receive_message_length", 64 * _MIB),
            # Without it channels to one target share a subchannel, i.e. one TCP connection.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if opts.tls_ca or opts.tls_cert or opts.tls_key:
            if bool(opts.tls_cert) != bool(opts.tls_key):
                raise Error(grpc.StatusCode.INVALID_ARGUMENT, "tls_cert and tls_key go together")
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read_pem(opts.tls_ca, "tls_ca"),
                private_key=_read_pem(opts.tls_key, "tls_key"),
                certificate_chain=_read_pem(opts.tls_cert, "tls_cert"))
            self.channel = grpc.secure_channel(self.server, creds, channel_options)
        else:
            self.channel = grpc.insecure_channel(self.server, channel_options)
        # response_deserializer=None: responses arrive as the raw message bytes.
        self.fetch = self.channel.unary_stream(
            _FETCH, request_serializer=stream_pb2.FetchRequest.SerializeToString, response_deserializer=None)

    def close(self):
        self.channel.close()


def _varint(buf, pos, end):
    result = 0
    shift = 0
    while pos < end:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            break
    raise Error(grpc.StatusCode.INTERNAL, "malformed chunk from the server")


def _parse_chunk(raw):
    """(offset, crc32c, data_begin, data_end) of a FetchResponse holding a chunk, or None."""
    n = len(raw)
    if n == 0 or raw[0] != 0x12:  # FetchResponse.chunk, length-delimited
        return None
    length, pos = _varint(raw, 1, n)
    if length > n - pos:
        raise Error(grpc.StatusCode.INTERNAL, "truncated chunk from the server")
    end = pos + length
    offset = crc = 0
    begin = stop = pos
    while pos < end:
        key, pos = _varint(raw, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(raw, pos, end)
            if field == 1:
                offset = value
            elif field == 3:
                crc = value
        elif wire == 2:
            size, pos = _varint(raw, pos, end)
            if size > end - pos:
                raise Error(grpc.StatusCode.INTERNAL, "truncated chunk from the server")
            if field == 2:
                begin, stop = pos, pos + size
            pos += size
        elif wire == 5 and 4 <= end - pos:
            pos += 4
        elif wire == 1 and 8 <= end - pos:
            pos += 8
        else:
            raise Error(grpc.StatusCode.INTERNAL, "malformed chunk from the server")
    return offset, crc, begin, stop


class _Progress:
    """Where each range stream has got to; feeds the hashing thread."""

    def __init__(self, ranges):
        self.ranges = ranges
        self.pos = [begin for begin, _ in ranges]
        self.cond = threading.Condition()
        self.failed = False

    def advance(self, index, pos):
        with self.cond:
            self.pos[index] = pos
            self.cond.notify_all()

    def fail(self):
        with self.cond:
            self.failed = True
            self.cond.notify_all()

    def prefix(self):
        """End of the contiguous received prefix (REQUIRES: cond held)."""
        for (begin, end), pos in zip(self.ranges, self.pos):
            if pos < end:
                return pos
        return self.ranges[-1][1] if self.ranges else 0


def _hash_prefix(progress, view, sha, start):
    """Hashes view[start:] as it becomes contiguous; returns where it stopped."""
    done = start
    total = len(view)
    while done < total:
        with progress.cond:
            while not progress.failed and progress.prefix() <= done:
                progress.cond.wait()
            if progress.failed:
                return done
            upto = progress.prefix()
        while done < upto:
            step = min(upto - done, 16 * _MIB)
            sha.update(view[done:done + step])
            done += step
    return done


def _backoff(attempt):
    time.sleep(min(2.0, 0.05 * (2 ** attempt)))


class _Fetch:
    """One fetch of one blob into a caller-provided buffer."""

    def __init__(self, ref, opts):
        self.ref = ref
        self.opts = opts
        self.connections = []
        self.calls = {}
        self.lock = threading.Lock()
        self.stopping = False
        self.errors = []
        self.resumes = 0

    def connection(self, index):
        while len(self.connections) <= index:
            self.connections.append(_Connection(self.opts))
        return self.connections[index]

    def close(self):
        for c in self.connections:
            c.close()

    def manifest(self):
        """Reads the manifest (and the first bytes) with one short call."""
        conn = self.connection(0)
        request = stream_pb2.FetchRequest(ref=self.ref, end_offset=_HEAD_BYTES)
        for attempt in range(self.opts.retries + 1):
            manifest, head = None, b""
            try:
                for raw in conn.fetch(request, metadata=conn.metadata, timeout=self.opts.timeout):
                    parsed = _parse_chunk(raw)
                    if parsed is None:
                        manifest = stream_pb2.FetchResponse.FromString(raw).manifest
                    else:
                        head += bytes(memoryview(raw)[parsed[2]:parsed[3]])
                if manifest is None:
                    raise Error(grpc.StatusCode.INTERNAL, f"fetch {self.ref}: no manifest")
                return manifest, head
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.opts.retries:
                    raise Error.from_rpc(f"fetch {self.ref}", e) from None
                _backoff(attempt)

    def run_range(self, index, progress, view, pinned_ref, sha256):
        begin, end = progress.ranges[index]
        pos = begin
        conn = self.connection(index)
        attempts = 0
        verify = self.opts.verify_chunks
        crc32c = _crc32c.crc32c
        land = _native.land if _native is not None and verify else None
        try:
            while pos < end:
                request = stream_pb2.FetchRequest(ref=pinned_ref, start_offset=pos, end_offset=end,
                                                  chunk_bytes=self.opts.chunk_bytes)
                with self.lock:
                    if self.stopping:
                        return
                    call = conn.fetch(request, metadata=conn.metadata, timeout=self.opts.timeout)
                    self.calls[index] = call
                try:
                    for raw in call:
                        parsed = _parse_chunk(raw)
                        if parsed is None:
                            manifest = stream_pb2.FetchResponse.FromString(raw)
                            if manifest.manifest.blob_sha256 != sha256:
                                raise Error(grpc.StatusCode.ABORTED,
                                            f"fetch {pinned_ref}: the blob changed during the fetch")
                            continue
                        offset, crc, d0, d1 = parsed
                        n = d1 - d0
                        if offset != pos or n == 0 or n > end - pos:
                            raise Error(grpc.StatusCode.INTERNAL,
                                        f"fetch {pinned_ref}: chunk at {offset} (+{n}), expected {pos}")
                        data = memoryview(raw)[d0:d1]
                        if land is not None:
                            ok = land(view, pos, data, crc)
                        else:
                            ok = not verify or crc32c(data) == crc
                            if ok:
                                view[pos:pos + n] = data
                        if not ok:
                            raise Error(grpc.StatusCode.DATA_LOSS,
                                        f"fetch {pinned_ref}: checksum mismatch in chunk at offset {offset}")
                        pos += n
                        attempts = 0
                        progress.advance(index, pos)
                    if pos < end:
                        raise Error(grpc.StatusCode.INTERNAL,
                                    f"fetch {pinned_ref}: stream ended at {pos} of [{begin}, {end})")
                except grpc.RpcError as e:
                    if self.stopping:
                        return
                    if e.code() != grpc.StatusCode.UNAVAILABLE or attempts >= self.opts.retries:
                        raise Error.from_rpc(f"fetch {pinned_ref}", e) from None
                    _backoff(attempts)
                    attempts += 1
                    with self.lock:
                        self.resumes += 1
        except BaseException as e:  # noqa: B902 - handed to the caller's thread
            self.stop(e)
            progress.fail()

    def stop(self, error):
        with self.lock:
            if error is not None:
                self.errors.append(error)
            self.stopping = True
            calls = list(self.calls.values())
        for call in calls:
            call.cancel()

    def into(self, allocate, streams=None):
        """Fetches the blob into allocate(manifest) (a writable buffer); returns the manifest."""
        manifest, head = self.manifest()
        total = manifest.total_bytes
        view = memoryview(allocate(manifest)).cast("B")
        if len(view) != total:
            raise Error(grpc.StatusCode.INTERNAL, "buffer size does not match the blob")
        start = min(len(head), total)
        view[:start] = head[:start]
        n = streams or self.opts.streams or default_streams(total)
        n = max(1, min(int(n), max(1, (total - start) // _RANGE_ALIGN)))
        bounds = [start]
        for i in range(1, n):
            cut = start + (total - start) * i // n
            bounds.append(max(bounds[-1], cut - cut % _RANGE_ALIGN))
        bounds.append(total)
        progress = _Progress([(bounds[i], bounds[i + 1]) for i in range(n)])
        pinned_ref = f"{manifest.model_id}@{manifest.version}"
        threads = [threading.Thread(target=self.run_range, args=(i, progress, view, pinned_ref, manifest.blob_sha256),
                                    name=f"weightgate-fetch-{i}", daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        sha = hashlib.sha256()
        sha.update(view[:start])
        hashed = start
        try:
            hashed = _hash_prefix(progress, view, sha, start)
        except BaseException as e:
            self.stop(e)
            progress.fail()
        for t in threads:
            t.join()
        if self.errors:
            raise self.errors[0]
        if hashed != total:
            raise Error(grpc.StatusCode.INTERNAL, f"fetch {pinned_ref}: only {hashed} of {total} bytes")
        if sha.hexdigest() != manifest.blob_sha256:
            raise Error(grpc.StatusCode.DATA_LOSS,
                        f"fetch {pinned_ref}: sha256 mismatch (got {sha.hexdigest()[:16]}, "
                        f"want {manifest.blob_sha256[:16]})")
        return manifest


def _options(server, token, tls_ca, tls_cert, tls_key, streams, kwargs):
    opts = FetchOptions(server=server, token=token, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                        streams=streams)
    for key, value in kwargs.items():
        if not hasattr(opts, key):
            raise TypeError(f"unexpected keyword argument '{key}'")
        setattr(opts, key, value)
    return opts


def _run(ref, opts, allocate):
    fetch = _Fetch(ref, opts)
    try:
        return fetch.into(allocate), fetch.resumes
    finally:
        fetch.close()


def fetch_bytes(ref, server=None, token=None, tls_ca=None, tls_cert=None, tls_key=None, streams=None,
                **kwargs):
    """(manifest, bytearray) of a stored version: the canonical safetensors blob, verified."""
    holder = []

    def allocate(manifest):
        holder.append(bytearray(manifest.total_bytes))
        return holder[0]

    manifest, _ = _run(ref, _options(server, token, tls_ca, tls_cert, tls_key, streams, kwargs), allocate)
    return manifest, holder[0]


def _torch():
    import torch
    return torch


def _tensor_views(torch, buf, manifest, device):
    """name -> tensor, each a view of `buf` (ties share their partner's bytes)."""
    out = {}
    # Tied entries last, so their partners exist whatever the manifest order.
    for entry in sorted(manifest.tensors, key=lambda e: bool(e.tied_to)):
        name = _DTYPES.get(entry.dtype)
        if name is None or not hasattr(torch, name):
            raise Error(grpc.StatusCode.UNIMPLEMENTED, f"tensor '{entry.name}': dtype {entry.dtype}")
        dtype = getattr(torch, name)
        shape = list(entry.shape)
        if entry.tied_to and entry.tied_to in out:
            partner = out[entry.tied_to]
            if partner.dtype == dtype and list(partner.shape) == shape:
                out[entry.name] = partner.view(shape)
                continue
        if entry.length > len(buf) or entry.offset > len(buf) - entry.length:
            raise Error(grpc.StatusCode.INTERNAL, f"tensor '{entry.name}' lies outside the blob")
        if entry.length == 0:
            out[entry.name] = torch.empty(shape, dtype=dtype, device=device)
            continue
        raw = buf[entry.offset:entry.offset + entry.length]
        itemsize = torch.empty((), dtype=dtype).element_size()
        if entry.offset % itemsize != 0 or entry.length % itemsize != 0:
            # Misaligned in the blob: this tensor alone is copied.
            raw = raw.clone()
        out[entry.name] = raw.view(dtype).view(shape)
    return out


def fetch_state_dict(ref, server=None, token=None, tls_ca=None, tls_cert=None, tls_key=None, device="cpu",
                     streams=None, **kwargs):
    """A dict name -> torch.Tensor of stored version `ref`, ready for load_state_dict(strict=True).

    ref: MODEL, MODEL@VERSION or MODEL@ALIAS. device: "cpu", "cuda", "cuda:N".
    streams: concurrent range streams (None: from the size and the cores).
    Other keyword arguments are FetchOptions fields (timeout, retries, ...).
    Every tensor is a view of one buffer holding the blob (for CUDA: a pinned
    host buffer, copied to the device in one transfer). Raises weightgate.Error.
    """
    torch = _torch()
    device = torch.device(device)
    holder = []

    def allocate(manifest):
        buf = torch.empty(manifest.total_bytes, dtype=torch.uint8, pin_memory=device.type == "cuda")
        holder.append(buf)
        return buf.numpy()

    manifest, _ = _run(ref, _options(server, token, tls_ca, tls_cert, tls_key, streams, kwargs), allocate)
    buf = holder.pop()
    if device.type != "cpu":
        buf = buf.to(device, non_blocking=True)
    return _tensor_views(torch, buf, manifest, device)


def load_into(model, ref, strict=True, device=None, **kwargs):
    """Fetches `ref` and loads it into `model` (load_state_dict); returns its result.

    device: where the fetched tensors live before loading (default: the
    device of the model's first parameter or buffer, else CPU).
    """
    if device is None:
        first = next(model.parameters(), None)
        if first is None:
            first = next(model.buffers(), None)
        device = first.device if first is not None else "cpu"
    state_dict = fetch_state_dict(ref, device=device, **kwargs)
    return model.load_state_dict(state_dict, strict=strict)
