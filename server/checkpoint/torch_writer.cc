#include "server/checkpoint/torch_writer.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "common/str_util.h"

namespace weightgate::checkpoint {

using common::Cat;
namespace {

constexpr size_t kBufferSize = size_t{1} << 20;
constexpr uint64_t kAlignment = 64;  // torch aligns tensor data to 64 bytes
constexpr uint32_t kLocalHeaderSignature = 0x04034b50;
constexpr uint32_t kCentralHeaderSignature = 0x02014b50;
constexpr uint32_t kEocdSignature = 0x06054b50;
constexpr uint32_t kZip64EocdSignature = 0x06064b50;
constexpr uint32_t kZip64LocatorSignature = 0x07064b50;
constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr uint16_t kPaddingExtraId = 0x4246;  // "FB", as torch writes it
constexpr uint16_t kUtf8Flag = 1 << 11;
constexpr uint32_t kMax32 = 0xFFFFFFFFu;
constexpr uint16_t kMax16 = 0xFFFF;
constexpr size_t kLocalHeaderSize = 30;
// Entry names carry the prefix and must fit the 16-bit name length.
constexpr size_t kMaxPrefixLength = 1024;

void Put16(std::string* out, uint16_t v) {
  out->push_back(static_cast<char>(v & 0xFF));
  out->push_back(static_cast<char>(v >> 8));
}
void Put32(std::string* out, uint32_t v) {
  for (int k = 0; k < 4; ++k) out->push_back(static_cast<char>((v >> (8 * k)) & 0xFF));
}
void Put64(std::string* out, uint64_t v) {
  for (int k = 0; k < 8; ++k) out->push_back(static_cast<char>((v >> (8 * k)) & 0xFF));
}

absl::Status Errno(std::string_view what, const std::string& path) {
  return absl::InternalError(Cat(what, " ", path, ": ", std::strerror(errno)));
}

// Pickle opcodes used below.
void PickleInt(std::string* out, int64_t v) {
  if (v >= 0 && v < 256) {
    out->push_back('K');
    out->push_back(static_cast<char>(v));
  } else if (v >= 0 && v < 65536) {
    out->push_back('M');
    Put16(out, static_cast<uint16_t>(v));
  } else if (v >= INT32_MIN && v <= INT32_MAX) {
    out->push_back('J');
    Put32(out, static_cast<uint32_t>(static_cast<int32_t>(v)));
  } else {
    // LONG1 with the minimal two's-complement bytes.
    std::string bytes;
    uint64_t u = static_cast<uint64_t>(v);
    for (int k = 0; k < 8; ++k) bytes.push_back(static_cast<char>((u >> (8 * k)) & 0xFF));
    while (bytes.size() > 1) {
      unsigned char last = static_cast<unsigned char>(bytes.back());
      unsigned char prev = static_cast<unsigned char>(bytes[bytes.size() - 2]);
      if ((last == 0 && !(prev & 0x80)) || (last == 0xFF && (prev & 0x80))) {
        bytes.pop_back();
      } else {
        break;
      }
    }
    out->push_back(static_cast<char>(0x8a));
    out->push_back(static_cast<char>(bytes.size()));
    out->append(bytes);
  }
}

void PickleString(std::string* out, std::string_view s) {
  out->push_back('X');
  Put32(out, static_cast<uint32_t>(s.size()));
  out->append(s);
}

void PickleGlobal(std::string* out, std::string_view module, std::string_view name) {
  out->push_back('c');
  out->append(module);
  out->push_back('\n');
  out->append(name);
  out->push_back('\n');
}

absl::StatusOr<uint64_t> TensorBytes(const TorchZipEntry& t, int64_t* numel_out) {
  int64_t numel = 1;
  for (int64_t d : t.shape) {
    if (d < 0)
      return absl::InvalidArgumentError(Cat("tensor '", t.name, "' has a negative dimension"));
  }
  bool empty = false;
  for (int64_t d : t.shape) empty = empty || d == 0;
  if (empty) {
    numel = 0;
  } else {
    for (int64_t d : t.shape) {
      if (__builtin_mul_overflow(numel, d, &numel)) {
        return absl::InvalidArgumentError(Cat("tensor '", t.name, "' size overflows"));
      }
    }
  }
  uint64_t nbytes;
  if (__builtin_mul_overflow(static_cast<uint64_t>(numel), ItemSize(t.dtype), &nbytes) ||
      nbytes > static_cast<uint64_t>(INT64_MAX)) {
    return absl::InvalidArgumentError(Cat("tensor '", t.name, "' size overflows"));
  }
  if (numel_out != nullptr) *numel_out = numel;
  return nbytes;
}

}  // namespace

std::string_view TorchStorageClass(DType dtype) {
  switch (dtype) {
    case DType::kF64: return "DoubleStorage";
    case DType::kF32: return "FloatStorage";
    case DType::kF16: return "HalfStorage";
    case DType::kBF16: return "BFloat16Storage";
    case DType::kI64: return "LongStorage";
    case DType::kI32: return "IntStorage";
    case DType::kI16: return "ShortStorage";
    case DType::kI8: return "CharStorage";
    case DType::kU8: return "ByteStorage";
    case DType::kBool: return "BoolStorage";
    case DType::kC64: return "ComplexFloatStorage";
    case DType::kC128: return "ComplexDoubleStorage";
  }
  return "FloatStorage";
}

absl::StatusOr<std::string> StateDictPickle(const std::vector<TorchZipEntry>& tensors) {
  std::string p;
  p.append("\x80\x02", 2);  // PROTO 2
  PickleGlobal(&p, "collections", "OrderedDict");
  p.append(")R");  // OrderedDict()
  if (!tensors.empty()) {
    p.push_back('(');  // MARK for SETITEMS
    for (size_t i = 0; i < tensors.size(); ++i) {
      const TorchZipEntry& t = tensors[i];
      int64_t numel = 0;
      absl::StatusOr<uint64_t> nbytes = TensorBytes(t, &numel);
      if (!nbytes.ok()) return nbytes.status();
      PickleString(&p, t.name);
      PickleGlobal(&p, "torch._utils", "_rebuild_tensor_v2");
      p.push_back('(');
      // Persistent id ('storage', torch.<T>Storage, key, 'cpu', numel).
      p.push_back('(');
      PickleString(&p, "storage");
      PickleGlobal(&p, "torch", TorchStorageClass(t.dtype));
      if (t.tied_to >= 0) {
        if (static_cast<size_t>(t.tied_to) >= i || tensors[t.tied_to].tied_to >= 0 ||
            tensors[t.tied_to].dtype != t.dtype) {
          return absl::InvalidArgumentError("torch writer: bad tie for " + t.name);
        }
        int64_t target_numel = 0;
        if (!TensorBytes(tensors[t.tied_to], &target_numel).ok() || target_numel != numel) {
          return absl::InvalidArgumentError("torch writer: tied tensors differ in size: " + t.name);
        }
      }
      PickleString(&p, std::to_string(t.tied_to >= 0 ? static_cast<size_t>(t.tied_to) : i));
      PickleString(&p, "cpu");
      PickleInt(&p, numel);
      p.push_back('t');
      p.push_back('Q');  // BINPERSID
      PickleInt(&p, 0);  // storage offset
      p.push_back('(');
      for (int64_t d : t.shape) PickleInt(&p, d);
      p.push_back('t');
      // Row-major contiguous strides (torch uses 1 for size-0/1 trailing dims).
      std::vector<int64_t> strides(t.shape.size(), 1);
      for (size_t k = t.shape.size(); k-- > 1;) {
        strides[k - 1] = strides[k] * std::max<int64_t>(t.shape[k], 1);
      }
      p.push_back('(');
      for (int64_t s : strides) PickleInt(&p, s);
      p.push_back('t');
      p.push_back(static_cast<char>(0x89));  // NEWFALSE: requires_grad
      PickleGlobal(&p, "collections", "OrderedDict");
      p.append(")R");  // backward_hooks
      p.push_back('t');
      p.push_back('R');
    }
    p.push_back('u');  // SETITEMS
  }
  p.push_back('.');
  return p;
}

TorchZipWriter::TorchZipWriter(std::string path, int fd, std::vector<TorchZipEntry> tensors,
                               TorchZipWriterOptions options)
    : path_(std::move(path)), fd_(fd), tensors_(std::move(tensors)), options_(std::move(options)) {}

TorchZipWriter::~TorchZipWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!finished_) ::unlink(path_.c_str());
}

absl::StatusOr<std::unique_ptr<TorchZipWriter>> TorchZipWriter::Create(
    const std::string& path, std::vector<TorchZipEntry> tensors,
    const TorchZipWriterOptions& options) {
  if (options.archive_prefix.empty() || options.archive_prefix.size() > kMaxPrefixLength ||
      options.archive_prefix.find('/') != std::string::npos) {
    return absl::InvalidArgumentError("torch writer: bad archive prefix");
  }
  absl::StatusOr<std::string> pickle = StateDictPickle(tensors);
  if (!pickle.ok()) return pickle.status();
  std::vector<uint64_t> sizes;
  uint64_t total = 0;
  for (const TorchZipEntry& t : tensors) {
    absl::StatusOr<uint64_t> n = TensorBytes(t, nullptr);
    if (!n.ok()) return n.status();
    if (t.tied_to >= 0) *n = 0;  // the storage it shares is written once
    if (__builtin_add_overflow(total, *n, &total)) {
      return absl::InvalidArgumentError("torch writer: total size overflows");
    }
    sizes.push_back(*n);
  }
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("cannot create", path);
  std::unique_ptr<TorchZipWriter> w(new TorchZipWriter(path, fd, std::move(tensors), options));
  w->tensor_bytes_ = std::move(sizes);
  w->remaining_total_ = total;
  w->buffer_.reserve(kBufferSize);
  const std::string& prefix = w->options_.archive_prefix;
  if (absl::Status s = w->WholeEntry(prefix + "/data.pkl", *pickle); !s.ok()) return s;
  if (absl::Status s = w->WholeEntry(prefix + "/byteorder", "little"); !s.ok()) return s;
  if (absl::Status s = w->AdvanceToNextTensor(); !s.ok()) return s;
  return w;
}

absl::Status TorchZipWriter::Flush() {
  size_t done = 0;
  while (done < buffer_.size()) {
    ssize_t n = ::write(fd_, buffer_.data() + done, buffer_.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("write", path_);
    }
    done += static_cast<size_t>(n);
  }
  buffer_.clear();
  return absl::OkStatus();
}

absl::Status TorchZipWriter::Write(std::string_view bytes) {
  offset_ += bytes.size();
  if (buffer_.size() + bytes.size() <= kBufferSize) {
    buffer_.append(bytes);
    return absl::OkStatus();
  }
  if (absl::Status s = Flush(); !s.ok()) return s;
  if (bytes.size() < kBufferSize) {
    buffer_.append(bytes);
    return absl::OkStatus();
  }
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd_, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("write", path_);
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status TorchZipWriter::BeginEntry(const std::string& name, uint64_t size) {
  Written w;
  w.name = name;
  w.header_offset = offset_;
  w.size = size;
  w.zip64 = options_.force_zip64 || size >= kMax32 || offset_ >= kMax32;
  const bool local64 = options_.force_zip64 || size >= kMax32;
  std::string extra;
  if (local64) {
    Put16(&extra, kZip64ExtraId);
    Put16(&extra, 16);
    Put64(&extra, size);
    Put64(&extra, size);
  }
  uint64_t data_start = offset_ + kLocalHeaderSize + name.size() + extra.size() + 4;
  uint64_t pad = (kAlignment - data_start % kAlignment) % kAlignment;
  Put16(&extra, kPaddingExtraId);
  Put16(&extra, static_cast<uint16_t>(pad));
  extra.append(static_cast<size_t>(pad), 'Z');

  std::string h;
  Put32(&h, kLocalHeaderSignature);
  Put16(&h, local64 ? 45 : 20);  // version needed
  Put16(&h, kUtf8Flag);
  Put16(&h, 0);  // stored
  Put16(&h, 0);  // time
  Put16(&h, 0);  // date
  Put32(&h, 0);  // crc, patched by EndEntry
  Put32(&h, local64 ? kMax32 : static_cast<uint32_t>(size));
  Put32(&h, local64 ? kMax32 : static_cast<uint32_t>(size));
  Put16(&h, static_cast<uint16_t>(name.size()));
  Put16(&h, static_cast<uint16_t>(extra.size()));
  h.append(name);
  h.append(extra);
  if (absl::Status s = Write(h); !s.ok()) return s;
  written_.push_back(std::move(w));
  crc_ = static_cast<uint32_t>(crc32(0L, Z_NULL, 0));
  remaining_entry_ = size;
  entry_open_ = true;
  return absl::OkStatus();
}

absl::Status TorchZipWriter::EndEntry() {
  Written& w = written_.back();
  w.crc = crc_;
  entry_open_ = false;
  if (absl::Status s = Flush(); !s.ok()) return s;
  std::string crc;
  Put32(&crc, crc_);
  off_t at = static_cast<off_t>(w.header_offset + 14);
  if (::pwrite(fd_, crc.data(), crc.size(), at) != static_cast<ssize_t>(crc.size())) {
    return Errno("pwrite", path_);
  }
  return absl::OkStatus();
}

absl::Status TorchZipWriter::WholeEntry(const std::string& name, std::string_view bytes) {
  if (absl::Status s = BeginEntry(name, bytes.size()); !s.ok()) return s;
  crc_ = static_cast<uint32_t>(
      crc32(crc_, reinterpret_cast<const Bytef*>(bytes.data()), static_cast<uInt>(bytes.size())));
  if (absl::Status s = Write(bytes); !s.ok()) return s;
  remaining_entry_ = 0;
  return EndEntry();
}

absl::Status TorchZipWriter::AdvanceToNextTensor() {
  while (current_ < tensors_.size()) {
    if (tensors_[current_].tied_to >= 0) {  // no storage entry of its own
      ++current_;
      continue;
    }
    std::string name = Cat(options_.archive_prefix, "/data/", current_);
    if (absl::Status s = BeginEntry(name, tensor_bytes_[current_]); !s.ok()) return s;
    if (tensor_bytes_[current_] > 0) return absl::OkStatus();
    if (absl::Status s = EndEntry(); !s.ok()) return s;
    ++current_;
  }
  return absl::OkStatus();
}

absl::Status TorchZipWriter::Append(std::string_view bytes) {
  if (fd_ < 0 || finished_) return absl::FailedPreconditionError("torch writer: closed");
  while (!bytes.empty()) {
    if (!entry_open_ || remaining_entry_ == 0) {
      return absl::InvalidArgumentError("torch writer: more bytes than the tensors hold");
    }
    size_t n = static_cast<size_t>(std::min<uint64_t>(remaining_entry_, bytes.size()));
    // zlib's crc32 takes uInt lengths.
    for (size_t done = 0; done < n;) {
      size_t step = std::min<size_t>(n - done, size_t{1} << 30);
      crc_ = static_cast<uint32_t>(crc32(crc_, reinterpret_cast<const Bytef*>(bytes.data() + done),
                                         static_cast<uInt>(step)));
      done += step;
    }
    if (absl::Status s = Write(bytes.substr(0, n)); !s.ok()) return s;
    bytes.remove_prefix(n);
    remaining_entry_ -= n;
    remaining_total_ -= n;
    if (remaining_entry_ == 0) {
      if (absl::Status s = EndEntry(); !s.ok()) return s;
      ++current_;
      if (absl::Status s = AdvanceToNextTensor(); !s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

absl::Status TorchZipWriter::WriteCentralDirectory() {
  const uint64_t cd_offset = offset_;
  for (const Written& w : written_) {
    const bool big_size = options_.force_zip64 || w.size >= kMax32;
    const bool big_offset = options_.force_zip64 || w.header_offset >= kMax32;
    std::string extra;
    if (big_size || big_offset) {
      std::string body;
      if (big_size) {
        Put64(&body, w.size);
        Put64(&body, w.size);
      }
      if (big_offset) Put64(&body, w.header_offset);
      Put16(&extra, kZip64ExtraId);
      Put16(&extra, static_cast<uint16_t>(body.size()));
      extra.append(body);
    }
    std::string h;
    Put32(&h, kCentralHeaderSignature);
    Put16(&h, 45);  // version made by
    Put16(&h, (big_size || big_offset) ? 45 : 20);
    Put16(&h, kUtf8Flag);
    Put16(&h, 0);
    Put16(&h, 0);
    Put16(&h, 0);
    Put32(&h, w.crc);
    Put32(&h, big_size ? kMax32 : static_cast<uint32_t>(w.size));
    Put32(&h, big_size ? kMax32 : static_cast<uint32_t>(w.size));
    Put16(&h, static_cast<uint16_t>(w.name.size()));
    Put16(&h, static_cast<uint16_t>(extra.size()));
    Put16(&h, 0);  // comment
    Put16(&h, 0);  // disk
    Put16(&h, 0);  // internal attributes
    Put32(&h, 0);  // external attributes
    Put32(&h, big_offset ? kMax32 : static_cast<uint32_t>(w.header_offset));
    h.append(w.name);
    h.append(extra);
    if (absl::Status s = Write(h); !s.ok()) return s;
  }
  const uint64_t cd_size = offset_ - cd_offset;
  const uint64_t count = written_.size();
  const bool zip64 =
      options_.force_zip64 || count >= kMax16 || cd_offset >= kMax32 || cd_size >= kMax32;
  std::string tail;
  if (zip64) {
    const uint64_t eocd64 = offset_;
    Put32(&tail, kZip64EocdSignature);
    Put64(&tail, 44);  // size of the rest of this record
    Put16(&tail, 45);
    Put16(&tail, 45);
    Put32(&tail, 0);
    Put32(&tail, 0);
    Put64(&tail, count);
    Put64(&tail, count);
    Put64(&tail, cd_size);
    Put64(&tail, cd_offset);
    Put32(&tail, kZip64LocatorSignature);
    Put32(&tail, 0);
    Put64(&tail, eocd64);
    Put32(&tail, 1);
  }
  Put32(&tail, kEocdSignature);
  Put16(&tail, 0);
  Put16(&tail, 0);
  Put16(&tail, zip64 ? kMax16 : static_cast<uint16_t>(count));
  Put16(&tail, zip64 ? kMax16 : static_cast<uint16_t>(count));
  Put32(&tail, zip64 ? kMax32 : static_cast<uint32_t>(cd_size));
  Put32(&tail, zip64 ? kMax32 : static_cast<uint32_t>(cd_offset));
  Put16(&tail, 0);  // comment
  return Write(tail);
}

absl::Status TorchZipWriter::Finish() {
  if (fd_ < 0 || finished_) return absl::FailedPreconditionError("torch writer: closed");
  if (remaining_total_ != 0) {
    return absl::FailedPreconditionError(
        Cat("torch writer: ", remaining_total_, " tensor bytes still missing"));
  }
  if (absl::Status s = WholeEntry(options_.archive_prefix + "/version", "3\n"); !s.ok()) return s;
  if (absl::Status s = WriteCentralDirectory(); !s.ok()) return s;
  if (absl::Status s = Flush(); !s.ok()) return s;
  if (::fsync(fd_) != 0) return Errno("fsync", path_);
  if (::close(fd_) != 0) {
    fd_ = -1;
    return Errno("close", path_);
  }
  fd_ = -1;
  finished_ = true;
  return absl::OkStatus();
}

}  // namespace weightgate::checkpoint
