#include "server/worker/frame.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace weightgate::worker {
namespace {

absl::Status WriteAll(int fd, const char* data, size_t n) {
  while (n > 0) {
    ssize_t put = ::send(fd, data, n, MSG_NOSIGNAL);
    if (put < 0 && errno == EINTR) continue;
    if (put < 0) {
      return absl::UnavailableError(absl::StrCat("worker socket: ", std::strerror(errno)));
    }
    data += put;
    n -= static_cast<size_t>(put);
  }
  return absl::OkStatus();
}

// Reads exactly n bytes; UNAVAILABLE on end of stream.
absl::Status ReadAll(int fd, char* data, size_t n) {
  while (n > 0) {
    ssize_t got = ::read(fd, data, n);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      return absl::UnavailableError(absl::StrCat("worker socket: ", std::strerror(errno)));
    }
    if (got == 0) return absl::UnavailableError("worker socket closed");
    data += got;
    n -= static_cast<size_t>(got);
  }
  return absl::OkStatus();
}

size_t DecodeLength(const unsigned char* p) {
  return size_t{p[0]} | size_t{p[1]} << 8 | size_t{p[2]} << 16 | size_t{p[3]} << 24;
}

absl::Status TooLarge(size_t n) {
  return absl::DataLossError(
      absl::StrCat("worker frame of ", n, " bytes exceeds the cap of ", kMaxFrameBytes));
}

}  // namespace

absl::Status WriteFrame(int fd, const google::protobuf::MessageLite& message) {
  size_t n = message.ByteSizeLong();
  if (n > kMaxFrameBytes) return TooLarge(n);
  std::string buf(4, '\0');
  buf[0] = static_cast<char>(n & 0xff);
  buf[1] = static_cast<char>((n >> 8) & 0xff);
  buf[2] = static_cast<char>((n >> 16) & 0xff);
  buf[3] = static_cast<char>((n >> 24) & 0xff);
  if (!message.AppendToString(&buf)) return absl::InternalError("cannot serialize worker frame");
  return WriteAll(fd, buf.data(), buf.size());
}

absl::Status ReadFrame(int fd, google::protobuf::MessageLite* message) {
  unsigned char header[4];
  if (absl::Status s = ReadAll(fd, reinterpret_cast<char*>(header), 4); !s.ok()) return s;
  size_t n = DecodeLength(header);
  if (n > kMaxFrameBytes) return TooLarge(n);
  std::string body(n, '\0');
  if (absl::Status s = ReadAll(fd, body.data(), n); !s.ok()) return s;
  if (!message->ParseFromString(body)) return absl::DataLossError("worker frame does not parse");
  return absl::OkStatus();
}

absl::Status FrameReader::Feed(int fd) {
  for (;;) {
    if (Done()) return absl::OkStatus();
    ssize_t got;
    if (!have_header_) {
      got = ::recv(fd, header_ + header_got_, 4 - header_got_, MSG_DONTWAIT);
    } else {
      size_t old = body_.size();
      size_t step = std::min<size_t>(want_ - old, size_t{1} << 20);
      body_.resize(old + step);
      got = ::recv(fd, body_.data() + old, step, MSG_DONTWAIT);
      body_.resize(old + (got > 0 ? static_cast<size_t>(got) : 0));
    }
    if (got < 0 && errno == EINTR) continue;
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return absl::OkStatus();
    if (got < 0) {
      return absl::UnavailableError(absl::StrCat("worker socket: ", std::strerror(errno)));
    }
    if (got == 0) return absl::UnavailableError("worker socket closed");
    if (!have_header_) {
      header_got_ += static_cast<size_t>(got);
      if (header_got_ == 4) {
        want_ = DecodeLength(header_);
        if (want_ > kMaxFrameBytes) return TooLarge(want_);
        have_header_ = true;
      }
    }
  }
}

absl::Status FrameReader::Parse(google::protobuf::MessageLite* message) const {
  if (!message->ParseFromString(body_)) return absl::DataLossError("worker frame does not parse");
  return absl::OkStatus();
}

}  // namespace weightgate::worker
