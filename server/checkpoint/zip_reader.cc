#include "server/checkpoint/zip_reader.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/string_view.h"
#include "common/str_util.h"
#include "server/checkpoint/read_budget.h"

namespace weightgate::checkpoint {
namespace {

using common::Cat;

// Signatures (APPNOTE 4.3), little-endian "PK.." literals.
constexpr uint32_t kLocalHeaderSignature = 0x04034b50;
constexpr uint32_t kCentralHeaderSignature = 0x02014b50;
constexpr uint32_t kEocdSignature = 0x06054b50;
constexpr uint32_t kZip64LocatorSignature = 0x07064b50;
constexpr uint32_t kZip64EocdSignature = 0x06064b50;

// Fixed record sizes, signatures included.
constexpr uint64_t kLocalHeaderSize = 30;
constexpr uint64_t kCentralHeaderSize = 46;
constexpr uint64_t kEocdSize = 22;
constexpr uint64_t kZip64LocatorSize = 20;
constexpr uint64_t kZip64EocdSize = 56;
constexpr uint64_t kMaxCommentLength = 0xffff;

constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr uint16_t kFlagEncrypted = 1 << 0;
constexpr uint16_t kFlagStrongEncryption = 1 << 6;
constexpr uint16_t kMethodStored = 0;
constexpr uint16_t kMethodDeflated = 8;

constexpr uint16_t kMax16 = 0xffff;
constexpr uint32_t kMax32 = 0xffffffff;

// zlib's stream counters are uInt; feed it in bounded slices.
constexpr uint64_t kInflateSlice = uint64_t{1} << 30;
// First scratch allocation when inflating; grown by doubling up to the
// declared size, so a lying header cannot make us zero gigabytes up front.
constexpr uint64_t kInitialScratch = uint64_t{64} << 10;

absl::Status Error(std::string_view reason) {
  std::string message = "zip: ";
  message.append(reason);
  return absl::InvalidArgumentError(message);
}

// Bounded little-endian reads over [p, limit).
class Cursor final {
 public:
  Cursor(const char* p, const char* limit) : p_(p), limit_(limit) {}

  uint64_t remaining() const { return static_cast<uint64_t>(limit_ - p_); }
  const char* position() const { return p_; }

  bool U16(uint16_t* v) { return Fixed(v); }
  bool U32(uint32_t* v) { return Fixed(v); }
  bool U64(uint64_t* v) { return Fixed(v); }
  bool Bytes(uint64_t n, std::string_view* out) {
    if (n > remaining()) return false;
    *out = std::string_view(p_, static_cast<size_t>(n));
    p_ += n;
    return true;
  }
  bool Skip(uint64_t n) {
    if (n > remaining()) return false;
    p_ += n;
    return true;
  }

 private:
  template <typename T>
  bool Fixed(T* v) {
    if (sizeof(T) > remaining()) return false;
    T out = 0;
    for (size_t i = 0; i < sizeof(T); ++i) {
      out |= static_cast<T>(static_cast<unsigned char>(p_[i])) << (8 * i);
    }
    *v = out;
    p_ += sizeof(T);
    return true;
  }

  const char* p_;
  const char* limit_;
};

// A cursor over data[off, data.size()). REQUIRES: off <= data.size().
Cursor At(std::string_view data, uint64_t off) {
  return Cursor(data.data() + off, data.data() + data.size());
}

uint32_t Load32(const char* p) {
  uint32_t v = 0;
  Cursor(p, p + 4).U32(&v);
  return v;
}

// Offset of the end-of-central-directory record: the last signature in the
// trailing 64 KiB whose comment fits in what follows it (`exact`: whose
// comment ends exactly at the end of the data).
absl::StatusOr<uint64_t> FindEocd(std::string_view data, bool exact = false) {
  if (data.size() < kEocdSize) return Error("too short for an end of central directory");
  uint64_t last = data.size() - kEocdSize;
  uint64_t first = last > kMaxCommentLength ? last - kMaxCommentLength : 0;
  for (uint64_t off = last + 1; off-- > first;) {
    if (Load32(data.data() + off) != kEocdSignature) continue;
    uint16_t comment_length =
        static_cast<uint16_t>(static_cast<unsigned char>(data[off + 20]) |
                              (static_cast<unsigned char>(data[off + 21]) << 8));
    uint64_t room = data.size() - off - kEocdSize;
    // Like miniz (torch's zip library), Open tolerates bytes after the comment.
    if (exact ? comment_length == room : comment_length <= room) return off;
  }
  return Error("end of central directory not found");
}

struct Directory {
  uint64_t entries = 0;
  uint64_t offset = 0;
  uint64_t size = 0;
  uint64_t end_limit = 0;  // where the central directory must end
};

absl::StatusOr<Directory> ReadDirectoryLocation(std::string_view data, uint64_t eocd) {
  Cursor c = At(data, eocd + 4);
  uint16_t disk = 0, cd_disk = 0, disk_entries = 0, total_entries = 0;
  uint32_t cd_size = 0, cd_offset = 0;
  if (!c.U16(&disk) || !c.U16(&cd_disk) || !c.U16(&disk_entries) || !c.U16(&total_entries) ||
      !c.U32(&cd_size) || !c.U32(&cd_offset)) {
    return Error("truncated end of central directory");
  }
  Directory dir{total_entries, cd_offset, cd_size, eocd};

  bool has_locator = eocd >= kZip64LocatorSize &&
                     Load32(data.data() + eocd - kZip64LocatorSize) == kZip64LocatorSignature;
  if (!has_locator) {
    if (disk != 0 || cd_disk != 0 || disk_entries != total_entries) {
      return Error("multi-disk archives are not supported");
    }
    return dir;
  }

  uint64_t locator = eocd - kZip64LocatorSize;
  Cursor l = At(data, locator + 4);
  uint32_t record_disk = 0, disks = 0;
  uint64_t record = 0;
  if (!l.U32(&record_disk) || !l.U64(&record) || !l.U32(&disks)) {
    return Error("truncated zip64 locator");
  }
  if (record_disk != 0 || disks > 1) return Error("multi-disk archives are not supported");
  if (record > locator || kZip64EocdSize > locator - record) {
    return Error("zip64 end of central directory out of range");
  }
  Cursor r = At(data, record);
  uint32_t signature = 0, disk32 = 0, cd_disk32 = 0;
  uint64_t record_size = 0, disk_entries64 = 0;
  uint16_t made_by = 0, needed = 0;
  if (!r.U32(&signature) || !r.U64(&record_size) || !r.U16(&made_by) || !r.U16(&needed) ||
      !r.U32(&disk32) || !r.U32(&cd_disk32) || !r.U64(&disk_entries64) || !r.U64(&dir.entries) ||
      !r.U64(&dir.size) || !r.U64(&dir.offset)) {
    return Error("truncated zip64 end of central directory");
  }
  if (signature != kZip64EocdSignature)
    return Error("bad zip64 end of central directory signature");
  // record_size counts the bytes after its own field (APPNOTE 4.3.14.1).
  if (record_size < kZip64EocdSize - 12 || record_size > locator - record - 12) {
    return Error("bad zip64 end of central directory size");
  }
  if (disk32 != 0 || cd_disk32 != 0 || disk_entries64 != dir.entries) {
    return Error("multi-disk archives are not supported");
  }
  dir.end_limit = record;
  return dir;
}

bool IsDriveLetter(std::string_view name) {
  return name.size() >= 2 && name[1] == ':' &&
         ((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= 'A' && name[0] <= 'Z'));
}

absl::Status CheckName(std::string_view name, const ZipLimits& limits) {
  if (name.empty()) return Error("empty entry name");
  if (name.size() > limits.max_name_length) return Error("entry name too long");
  if (name.find('\0') != std::string_view::npos) return Error("entry name contains NUL");
  if (name.front() == '/' || name.front() == '\\' || IsDriveLetter(name)) {
    return Error("absolute entry name");
  }
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find_first_of("/\\", start);
    if (end == std::string_view::npos) end = name.size();
    if (name.substr(start, end - start) == "..") return Error("entry name contains ..");
    start = end + 1;
  }
  return absl::OkStatus();
}

// Applies the zip64 extended information extra field: each 64-bit value is
// present only when its 32-bit field is saturated, in this order.
absl::Status ApplyZip64Extra(std::string_view extra, bool size_saturated, bool compressed_saturated,
                             bool offset_saturated, ZipEntry* entry) {
  Cursor c(extra.data(), extra.data() + extra.size());
  while (c.remaining() >= 4) {
    uint16_t id = 0, length = 0;
    c.U16(&id);
    c.U16(&length);
    std::string_view body;
    if (!c.Bytes(length, &body)) return Error("extra field overruns its header");
    if (id != kZip64ExtraId) continue;
    Cursor z(body.data(), body.data() + body.size());
    if ((size_saturated && !z.U64(&entry->size)) ||
        (compressed_saturated && !z.U64(&entry->compressed_size)) ||
        (offset_saturated && !z.U64(&entry->local_header_offset))) {
      return Error("zip64 extra field too short");
    }
    return absl::OkStatus();
  }
  if (size_saturated || compressed_saturated || offset_saturated) {
    return Error("zip64 extra field missing");
  }
  return absl::OkStatus();
}

struct CentralRecord {
  ZipEntry entry;
  uint16_t flags = 0;
};

absl::StatusOr<CentralRecord> ReadCentralHeader(Cursor* c, const ZipLimits& limits) {
  uint32_t signature = 0, crc = 0, compressed32 = 0, size32 = 0, external = 0, offset32 = 0;
  uint16_t made_by = 0, needed = 0, flags = 0, method = 0, time = 0, date = 0;
  uint16_t name_length = 0, extra_length = 0, comment_length = 0, disk = 0, internal = 0;
  if (!c->U32(&signature) || !c->U16(&made_by) || !c->U16(&needed) || !c->U16(&flags) ||
      !c->U16(&method) || !c->U16(&time) || !c->U16(&date) || !c->U32(&crc) ||
      !c->U32(&compressed32) || !c->U32(&size32) || !c->U16(&name_length) ||
      !c->U16(&extra_length) || !c->U16(&comment_length) || !c->U16(&disk) || !c->U16(&internal) ||
      !c->U32(&external) || !c->U32(&offset32)) {
    return Error("truncated central directory");
  }
  if (signature != kCentralHeaderSignature) return Error("bad central directory signature");
  if (name_length > limits.max_name_length) return Error("entry name too long");
  std::string_view name, extra;
  if (!c->Bytes(name_length, &name) || !c->Bytes(extra_length, &extra) ||
      !c->Skip(comment_length)) {
    return Error("truncated central directory");
  }
  CentralRecord record;
  record.flags = flags;
  ZipEntry& entry = record.entry;
  entry.name = std::string(name);
  entry.method = method;
  entry.crc32 = crc;
  entry.compressed_size = compressed32;
  entry.size = size32;
  entry.local_header_offset = offset32;
  if (absl::Status s = ApplyZip64Extra(extra, size32 == kMax32, compressed32 == kMax32,
                                       offset32 == kMax32, &entry);
      !s.ok()) {
    return s;
  }
  if (disk != 0 && disk != kMax16) return Error("multi-disk archives are not supported");
  if (flags & (kFlagEncrypted | kFlagStrongEncryption)) return Error("encrypted entry");
  if (method != kMethodStored && method != kMethodDeflated) {
    return Error("unsupported compression method " + std::to_string(method));
  }
  if (absl::Status s = CheckName(entry.name, limits); !s.ok()) return s;
  return record;
}

// Checks the local header at entry->local_header_offset against the central
// record and sets entry->data_offset. The local name and extra lengths may
// differ from the central ones (torch pads stored data to 64 bytes there).
absl::Status ReadLocalHeader(std::string_view data, uint64_t cd_offset, ZipEntry* entry) {
  uint64_t lho = entry->local_header_offset;
  if (lho > cd_offset || kLocalHeaderSize > cd_offset - lho) {
    return Error("local header out of range");
  }
  Cursor c = At(data, lho);
  uint32_t signature = 0, crc = 0, compressed = 0, size = 0;
  uint16_t needed = 0, flags = 0, method = 0, time = 0, date = 0, name_length = 0, extra_length = 0;
  if (!c.U32(&signature) || !c.U16(&needed) || !c.U16(&flags) || !c.U16(&method) || !c.U16(&time) ||
      !c.U16(&date) || !c.U32(&crc) || !c.U32(&compressed) || !c.U32(&size) ||
      !c.U16(&name_length) || !c.U16(&extra_length)) {
    return Error("truncated local header");
  }
  if (signature != kLocalHeaderSignature) return Error("bad local header signature");
  if (flags & (kFlagEncrypted | kFlagStrongEncryption)) return Error("encrypted entry");
  if (method != entry->method) return Error("local and central compression methods differ");
  uint64_t header_room = cd_offset - lho - kLocalHeaderSize;
  uint64_t variable = uint64_t{name_length} + extra_length;
  if (variable > header_room) return Error("local header runs past the entries");
  std::string_view local_name(data.data() + lho + kLocalHeaderSize, name_length);
  if (local_name != entry->name) return Error("local and central names differ");
  entry->data_offset = lho + kLocalHeaderSize + variable;
  if (entry->compressed_size > header_room - variable) {
    return Error("entry data runs past the entries");
  }
  return absl::OkStatus();
}

// Compares without overflow: size > compressed * ratio + slack.
bool ExceedsRatio(uint64_t size, uint64_t compressed, uint32_t ratio) {
  return static_cast<unsigned __int128>(compressed) * ratio + kZipRatioSlackBytes < size;
}

absl::Status RatioError(const ZipEntry& entry, uint32_t ratio) {
  return ResourceLimitError(
      "zip: ", "max_compression_ratio",
      Cat("compression ratio exceeds limit: '", entry.name.substr(0, 128), "' inflates ",
          entry.compressed_size, " bytes to ", entry.size, " (cap ", ratio, ":1)"));
}

absl::Status TotalError(uint64_t cap) {
  return ResourceLimitError(
      "zip: ", "inflated_bytes",
      Cat("inflated size exceeds limit: deflated entries would take more than ", cap,
          " bytes (ReadOptions::inflated_fixed_bytes + inflated_per_archive_byte x archive "
          "bytes, at most max_inflated_bytes)"));
}

}  // namespace

bool LooksLikeZip(std::string_view data) {
  if (data.size() >= 4 && Load32(data.data()) == kLocalHeaderSignature) return true;
  // Other formats' payloads may contain the signature anywhere; only an
  // exactly fitting record at the end counts.
  return FindEocd(data, /*exact=*/true).ok();
}

ZipReader::ZipReader(std::string_view data, const ZipLimits& limits)
    : data_(data),
      limits_(limits),
      total_inflated_cap_(
          std::min(limits.max_total_inflated,
                   ReadBudget::LimitFor(limits.inflated_fixed_bytes,
                                        limits.inflated_per_archive_byte, data.size()))) {}

absl::StatusOr<ZipReader> ZipReader::Open(std::string_view data, const ZipLimits& limits) {
  absl::StatusOr<uint64_t> eocd = FindEocd(data);
  if (!eocd.ok()) return eocd.status();
  absl::StatusOr<Directory> dir = ReadDirectoryLocation(data, *eocd);
  if (!dir.ok()) return dir.status();

  if (dir->entries > limits.max_entries) return Error("too many entries");
  if (dir->offset > dir->end_limit || dir->size > dir->end_limit - dir->offset) {
    return Error("central directory out of range");
  }
  if (dir->entries > dir->size / kCentralHeaderSize) return Error("truncated central directory");

  ZipReader reader(data, limits);
  reader.entries_.reserve(static_cast<size_t>(dir->entries));
  reader.by_name_.reserve(static_cast<size_t>(dir->entries));
  Cursor c = At(data, dir->offset);
  Cursor cd(c.position(), c.position() + dir->size);
  uint64_t total_inflated = 0;
  for (uint64_t i = 0; i < dir->entries; ++i) {
    absl::StatusOr<CentralRecord> record = ReadCentralHeader(&cd, limits);
    if (!record.ok()) return record.status();
    ZipEntry& entry = record->entry;
    if (entry.method == kMethodStored && entry.size != entry.compressed_size) {
      return Error("stored entry sizes differ");
    }
    if (entry.method == kMethodDeflated) {
      if (ExceedsRatio(entry.size, entry.compressed_size, limits.max_compression_ratio)) {
        return RatioError(entry, limits.max_compression_ratio);
      }
      if (entry.size > reader.total_inflated_cap_ - total_inflated) {
        return TotalError(reader.total_inflated_cap_);
      }
      total_inflated += entry.size;
    }
    if (absl::Status s = ReadLocalHeader(data, dir->offset, &entry); !s.ok()) return s;
    if (!reader.by_name_.emplace(entry.name, reader.entries_.size()).second) {
      return Error("duplicate entry name");
    }
    reader.entries_.push_back(std::move(entry));
  }

  // Each entry owns [local header, end of data); no two may share a byte.
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  spans.reserve(reader.entries_.size());
  for (const ZipEntry& e : reader.entries_) {
    spans.emplace_back(e.local_header_offset, e.data_offset + e.compressed_size);
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i) {
    if (spans[i].first < spans[i - 1].second) return Error("overlapping entries");
  }
  return reader;
}

const ZipEntry* ZipReader::Find(std::string_view name) const {
  auto it = by_name_.find(absl::string_view(name.data(), name.size()));
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

absl::StatusOr<std::string_view> ZipReader::Read(const ZipEntry& entry,
                                                 std::string* scratch) const {
  if (entry.data_offset > data_.size() ||
      entry.compressed_size > data_.size() - entry.data_offset) {
    return Error("entry data out of range");
  }
  std::string_view in = data_.substr(static_cast<size_t>(entry.data_offset),
                                     static_cast<size_t>(entry.compressed_size));
  if (entry.method == kMethodStored) {
    if (entry.size != entry.compressed_size) return Error("stored entry sizes differ");
    return in;
  }
  if (entry.method != kMethodDeflated) return Error("unsupported compression method");
  if (ExceedsRatio(entry.size, entry.compressed_size, limits_.max_compression_ratio)) {
    return RatioError(entry, limits_.max_compression_ratio);
  }
  if (entry.size > total_inflated_cap_) return TotalError(total_inflated_cap_);

  if (entry.size >= std::numeric_limits<size_t>::max() / 2)
    return Error("inflated size exceeds limit");
  if (entry.size == 0 && entry.compressed_size == 0) {
    // Some writers store an empty deflated entry with no stream at all.
    if (entry.crc32 != 0) return Error("crc mismatch");
    scratch->clear();
    return std::string_view();
  }

  // One spare byte past the declared size tells an overlong stream apart
  // from one that fits exactly.
  const uint64_t capacity = entry.size + 1;
  z_stream z;
  std::memset(&z, 0, sizeof(z));
  if (inflateInit2(&z, -MAX_WBITS) != Z_OK) return Error("inflateInit failed");
  scratch->clear();
  scratch->resize(static_cast<size_t>(std::min(capacity, kInitialScratch)));
  uint64_t in_used = 0;
  uint64_t out_used = 0;
  int rc = Z_OK;
  while (true) {
    if (out_used == scratch->size()) {
      if (out_used == capacity) break;
      uint64_t grown = std::min(capacity, std::max(out_used * 2, kInitialScratch));
      scratch->resize(static_cast<size_t>(grown));
    }
    uint64_t in_slice = std::min<uint64_t>(in.size() - in_used, kInflateSlice);
    uint64_t out_slice = std::min<uint64_t>(scratch->size() - out_used, kInflateSlice);
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data() + in_used));
    z.avail_in = static_cast<uInt>(in_slice);
    z.next_out = reinterpret_cast<Bytef*>(scratch->data() + out_used);
    z.avail_out = static_cast<uInt>(out_slice);
    rc = inflate(&z, Z_NO_FLUSH);
    in_used += in_slice - z.avail_in;
    out_used += out_slice - z.avail_out;
    // Z_BUF_ERROR: no progress possible, i.e. the input ran out.
    if (rc != Z_OK) break;
  }
  inflateEnd(&z);
  if (out_used > entry.size) return Error("inflated size exceeds declared size");
  if (rc == Z_DATA_ERROR || rc == Z_NEED_DICT) return Error("corrupt deflate stream");
  if (rc == Z_MEM_ERROR) return Error("out of memory inflating");
  if (rc != Z_STREAM_END) return Error("truncated deflate stream");
  if (out_used != entry.size) return Error("inflated size differs from declared size");
  scratch->resize(static_cast<size_t>(out_used));
  uint64_t crc = crc32(0L, Z_NULL, 0);
  for (uint64_t done = 0; done < out_used;) {
    uInt n = static_cast<uInt>(std::min(out_used - done, kInflateSlice));
    crc = crc32(crc, reinterpret_cast<const Bytef*>(scratch->data() + done), n);
    done += n;
  }
  if (crc != entry.crc32) return Error("crc mismatch");
  return std::string_view(*scratch);
}

absl::Status ZipReader::VerifyCrc32(const ZipEntry& entry) const {
  std::string scratch;
  absl::StatusOr<std::string_view> bytes = Read(entry, &scratch);
  if (!bytes.ok()) return bytes.status();
  if (entry.method != kMethodStored) return absl::OkStatus();
  uint64_t crc = crc32(0L, Z_NULL, 0);
  for (uint64_t done = 0; done < bytes->size();) {
    uInt n = static_cast<uInt>(std::min<uint64_t>(bytes->size() - done, kInflateSlice));
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes->data() + done), n);
    done += n;
  }
  if (crc != entry.crc32) return Error("crc mismatch");
  return absl::OkStatus();
}

}  // namespace weightgate::checkpoint
