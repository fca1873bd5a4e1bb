// Streaming a local file to a client-streaming RPC (RegisterModel,
// ValidateCheckpoint, UploadCheckpoint): the header message, then the bytes
// in 1 MiB chunks, with a progress line on stderr when it is a terminal.
#ifndef WEIGHTGATE_CLIENT_CLI_SEND_FILE_H_
#define WEIGHTGATE_CLIENT_CLI_SEND_FILE_H_

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/human_bytes.h"
#include "grpcpp/grpcpp.h"
#include "server/checkpoint/checkpoint_set.h"
#include "server/checkpoint/set_bundle.h"

namespace weightgate::cli {

inline constexpr size_t kSendChunkBytes = 1 << 20;

// Bytes SendFile will send for `path`: a checkpoint set (directory or index
// file) travels as one set bundle (set_bundle.h). -1 when unreadable.
inline int64_t UploadSize(const std::string& path) {
  if (checkpoint::IsCheckpointSetPath(path)) {
    absl::StatusOr<uint64_t> bundle = checkpoint::SetBundleSize(path);
    return bundle.ok() ? static_cast<int64_t>(*bundle) : -1;
  }
  return common::RegularFileSize(path);
}

// Writes `header`, then the file at `path`, then WritesDone. A write the
// server refuses ends the loop quietly: the caller's Finish() says why.
template <typename Request, typename Header>
absl::Status SendFile(grpc::ClientWriter<Request>* writer, const Header& header,
                      const std::string& path) {
  using common::HumanBytes;
  Request first;
  *first.mutable_header() = header;
  if (!writer->Write(first)) return absl::UnavailableError("server closed the stream");
  if (checkpoint::IsCheckpointSetPath(path)) {
    // A directory or index file: every file of the set in one bundle.
    Request piece;
    absl::Status streamed =
        checkpoint::StreamSetBundle(path, kSendChunkBytes, [&](std::string_view bytes) {
          piece.set_chunk(bytes.data(), bytes.size());
          return writer->Write(piece);
        });
    writer->WritesDone();
    return streamed;
  }
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  bool tty = ::isatty(2);
  uint64_t total = static_cast<uint64_t>(std::max<int64_t>(header.total_bytes(), 1));
  uint64_t sent = 0;
  auto start = std::chrono::steady_clock::now();
  auto last = start;
  Request chunk;
  absl::Status status = absl::OkStatus();
  for (;;) {
    // Read straight into the message: no copy between buffer and request.
    std::string* buffer = chunk.mutable_chunk();
    buffer->resize(kSendChunkBytes);
    ssize_t n = ::read(fd, buffer->data(), buffer->size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      status = absl::InternalError(absl::StrCat("read ", path));
      break;
    }
    if (n == 0) break;
    buffer->resize(static_cast<size_t>(n));
    if (!writer->Write(chunk)) break;  // the server ended the call; Finish() says why
    sent += static_cast<uint64_t>(n);
    auto now = std::chrono::steady_clock::now();
    if (tty && now - last > std::chrono::milliseconds(200)) {
      double secs = std::chrono::duration<double>(now - start).count();
      std::fprintf(stderr, "\r  uploading %5.1f%%  %s / %s  %s/s   ", 100.0 * sent / total,
                   HumanBytes(sent).c_str(), HumanBytes(total).c_str(),
                   HumanBytes(sent / std::max(secs, 1e-3)).c_str());
      last = now;
    }
  }
  ::close(fd);
  if (tty && sent > 0) std::fprintf(stderr, "\r  uploaded %s%30s\n", HumanBytes(sent).c_str(), "");
  writer->WritesDone();
  return status;
}

}  // namespace weightgate::cli

#endif  // WEIGHTGATE_CLIENT_CLI_SEND_FILE_H_
