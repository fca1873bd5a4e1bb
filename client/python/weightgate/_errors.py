"""The one exception type of the package."""
import grpc


class Error(Exception):
    """A failed weightgate call.

    `code` is a `grpc.StatusCode`: the server's status for RPC failures, and
    for failures found on this side DATA_LOSS (checksum or sha256 mismatch),
    INVALID_ARGUMENT (bad arguments, unreadable TLS files) or INTERNAL
    (a malformed response).
    """

    def __init__(self, code, message):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_rpc(cls, what, error):
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        return cls(code, f"{what}: {details}")
