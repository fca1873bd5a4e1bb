"""weightgate: fetch validated PyTorch weights from a weightgate server.

    import weightgate
    sd = weightgate.fetch_state_dict("resnet50@prod", server="weights:50051")
    model.load_state_dict(sd, strict=True)
    # or in one step:
    weightgate.load_into(model, "resnet50@prod")

The blob's bytes land once, in one preallocated buffer (pinned when the target
is CUDA); every tensor is a view of it, and tensors the uploaded checkpoint had
tied share one storage. Large models are fetched as several concurrent byte
range streams. Every chunk is CRC32C-checked as it arrives and the whole blob
sha256-checked at the end; a stream cut by UNAVAILABLE resumes where it
stopped. Every failure is a `weightgate.Error` carrying the gRPC status code.

The gRPC stubs live in `weightgate.v1` (generated from the project's protos
when the package is built). torch is imported on first use only.
"""

from weightgate._errors import Error
from weightgate._fetch import FetchOptions, default_streams, fetch_bytes, fetch_state_dict, load_into

__all__ = ["Error", "FetchOptions", "default_streams", "fetch_bytes", "fetch_state_dict", "load_into"]
__version__ = "0.1.0"
