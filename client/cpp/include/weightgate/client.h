// weightgate::Client fetches stored model versions from a weightgate server
// (the WeightStream service) for C++ inference servers: to a file, to memory,
// or as at::Tensor views of one buffer.
//
// A fetch reads the manifest with one short call (pinning an alias to the
// version it names at that moment), then splits the blob into N byte ranges
// fetched concurrently, each on its own connection, straight into the
// destination: no per-chunk message copy. Every chunk is CRC32C-checked as it
// arrives and the whole blob sha256-checked (the hash follows the received
// prefix, so it is nearly done when the last chunk lands). A stream cut with
// UNAVAILABLE resumes at the byte where it stopped.
//
//   weightgate::ClientOptions options;
//   options.server = "weights:50051";
//   options.tls_ca = "/etc/weightgate/ca.pem";
//   auto client = weightgate::Client::Create(options);
//   if (!client.ok()) ...;
//   absl::StatusOr<weightgate::TensorMap> tensors = (*client)->FetchTensors("resnet50@prod");
//
// Errors are absl::Status with the gRPC status code's canonical counterpart
// (NOT_FOUND, UNAVAILABLE, ...); a checksum failure is DATA_LOSS.
//
// This class is thread-safe: concurrent fetches may share one Client.
#ifndef WEIGHTGATE_CLIENT_H_
#define WEIGHTGATE_CLIENT_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace at {
class Tensor;
}  // namespace at

namespace weightgate {

struct ClientOptions {
  // host:port. Default: $WEIGHTGATE_SERVER, else 127.0.0.1:50051.
  std::string server;
  // Bearer token sent with every call. Default: $WEIGHTGATE_TOKEN, else none.
  std::string token;
  // PEM file of the roots that sign the server certificate. Setting it (or
  // tls_cert) turns TLS on. Default: plaintext.
  std::string tls_ca;
  // PEM client certificate and key for mutual TLS. Default: none.
  std::string tls_cert;
  std::string tls_key;
  // Deadline of each call; 0 means none. Default 0.
  std::chrono::milliseconds deadline{0};
  // How many times in a row one range stream cut by UNAVAILABLE is resumed
  // (with backoff) before the fetch fails. Default 5.
  int retries = 5;
  // Concurrent range streams; 0 picks DefaultStreams(size). Default 0.
  int streams = 0;
  // Preferred chunk size (the server clamps it); 0 = the server's default.
  uint32_t chunk_bytes = 0;
  // CRC32C-check every chunk. The sha256 check always runs. Default true.
  bool verify_chunks = true;
  // FetchToFile: fsync the file before renaming it into place. Default
  // false: the file is renamed only after its sha256 matched, and a fetched
  // model is a cache a worker can fetch again (like curl -o).
  bool sync_files = false;
  // FetchToFile: an existing PATH.part is taken as the blob's first bytes
  // (re-hashed, then only the rest is fetched), and a failed fetch leaves
  // PATH.part holding the bytes received contiguously from the start, so
  // the next call resumes; the sha256 check catches a PATH.part of another
  // blob. Default false: PATH.part is started afresh and removed on failure.
  bool resume_files = false;
};

// One tensor of a fetched blob (the safetensors layout the server stores).
struct TensorInfo {
  std::string name;
  std::string dtype;  // safetensors spelling: F32, BF16, I64, ...
  std::vector<int64_t> shape;
  uint64_t offset = 0;  // byte range in the blob
  uint64_t length = 0;
  std::string tied_to;  // shares storage with this earlier tensor when set
};

// What a fetch got.
struct FetchInfo {
  std::string model_id;
  int64_t version = 0;
  std::string sha256;  // of the whole blob, verified
  uint64_t total_bytes = 0;
  std::vector<TensorInfo> tensors;
  int streams = 0;            // range streams used
  int resumes = 0;            // streams resumed after UNAVAILABLE
  uint64_t resumed_from = 0;  // bytes already in PATH.part (FetchToFile, resume_files)
};

// The default stream count for a blob of `total_bytes`: one per 64 MiB, at
// most one per two cores (each stream's thread receives and writes; the
// hashing thread follows them), at least 1 and at most 8.
int DefaultStreams(uint64_t total_bytes);

// name -> tensor (see Client::FetchTensors).
using TensorMap = std::map<std::string, at::Tensor>;

class Client final {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Create(const ClientOptions& options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Fetches `ref` (MODEL, MODEL@VERSION, MODEL@ALIAS) into `path`: written to
  // `path`.part, verified, then renamed. On failure `path` is untouched.
  absl::StatusOr<FetchInfo> FetchToFile(const std::string& ref, const std::string& path);

  // Fetches `ref` into memory: `allocate(info)` (info has the manifest
  // fields; streams/resumes not yet) returns at least info.total_bytes
  // writable bytes that stay valid until the fetch returns.
  using Allocator = std::function<absl::StatusOr<char*>(const FetchInfo& info)>;
  absl::StatusOr<FetchInfo> FetchToBuffer(const std::string& ref, const Allocator& allocate);

  // Fetches `ref` as tensors: every one a view of one CPU uint8 buffer that
  // holds the blob (kept alive by the views); tied tensors share storage.
  // Defined in the weightgate::client_torch library (links libtorch).
  absl::StatusOr<TensorMap> FetchTensors(const std::string& ref, FetchInfo* info = nullptr);

  struct Impl;  // the implementation (client.cc)

 private:
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace weightgate

#endif  // WEIGHTGATE_CLIENT_H_
