// Length-prefixed protobuf frames over a stream socket: a 4-byte
// little-endian length, then the serialized message. The reader checks the
// announced length against a cap before allocating, so a confused or
// hostile peer cannot make the other side allocate more than the cap.
#ifndef WEIGHTGATE_SERVER_WORKER_FRAME_H_
#define WEIGHTGATE_SERVER_WORKER_FRAME_H_

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "google/protobuf/message_lite.h"

namespace weightgate::worker {

// Largest frame either side accepts (a report naming ~10^5 keys fits).
inline constexpr size_t kMaxFrameBytes = size_t{64} << 20;

// Writes one frame; blocks until all bytes are written. Never raises SIGPIPE.
// UNAVAILABLE when the peer is gone.
absl::Status WriteFrame(int fd, const google::protobuf::MessageLite& message);

// Reads one frame into `message`; blocks. UNAVAILABLE at end of stream
// (peer gone), DATA_LOSS for a frame over kMaxFrameBytes or that does not
// parse.
absl::Status ReadFrame(int fd, google::protobuf::MessageLite* message);

// Incremental reader for a caller that polls `fd`: Feed() reads what is
// available without blocking. Done() once a whole frame is in.
class FrameReader final {
 public:
  // OK while the frame is incomplete or done; UNAVAILABLE at end of stream,
  // DATA_LOSS for an oversized frame.
  absl::Status Feed(int fd);
  bool Done() const { return have_header_ && body_.size() == want_; }
  // REQUIRES: Done().
  absl::Status Parse(google::protobuf::MessageLite* message) const;

 private:
  unsigned char header_[4] = {0, 0, 0, 0};
  size_t header_got_ = 0;
  bool have_header_ = false;
  size_t want_ = 0;
  std::string body_;
};

}  // namespace weightgate::worker

#endif  // WEIGHTGATE_SERVER_WORKER_FRAME_H_
