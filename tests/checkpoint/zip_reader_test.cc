// ZipReader against real archives (torch.save, torch.jit.save, Python's
// zipfile incl. zip64, a sparse 4.5 GiB archive) compared entry by entry with
// Python's own listing, and against hand-made hostile archives.
#include "server/checkpoint/zip_reader.h"

#include <string>
#include <vector>

#include "common/mapped_file.h"
#include "gtest/gtest.h"
#include "tests/checkpoint/zip_fixtures.h"

namespace weightgate::checkpoint {
namespace {

using common::MappedFile;

using ::weightgate::checkpoint::testing::DeflatedEntry;
using ::weightgate::checkpoint::testing::FakeEntry;
using ::weightgate::checkpoint::testing::FixtureDir;
using ::weightgate::checkpoint::testing::ListedEntry;
using ::weightgate::checkpoint::testing::MakeZip;
using ::weightgate::checkpoint::testing::Patch16;
using ::weightgate::checkpoint::testing::Patch32;
using ::weightgate::checkpoint::testing::Put16;
using ::weightgate::checkpoint::testing::Put32;
using ::weightgate::checkpoint::testing::Put64;
using ::weightgate::checkpoint::testing::ReadListing;
using ::weightgate::checkpoint::testing::ReadWholeFile;
using ::weightgate::checkpoint::testing::Stored;

FakeEntry WithFlags(FakeEntry e, uint16_t flags) {
  e.flags = flags;
  return e;
}

// A damaged archive (InvalidArgument) or one over a resource limit
// (ResourceExhausted); never anything else.
bool IsRejection(const absl::Status& s) {
  return s.code() == absl::StatusCode::kInvalidArgument ||
         s.code() == absl::StatusCode::kResourceExhausted;
}

// Expects `zip` to be rejected with a "zip: " error containing `reason`:
// ResourceExhausted for the size limits, InvalidArgument for the rest.
void ExpectRejected(const std::string& zip, const std::string& reason,
                    const ZipLimits& limits = {}) {
  absl::StatusOr<ZipReader> reader = ZipReader::Open(zip, limits);
  ASSERT_FALSE(reader.ok()) << "accepted; expected: " << reason;
  const bool limit = reason.find("exceeds limit") != std::string::npos ||
                     reason == "max_compression_ratio" || reason == "inflated_bytes";
  EXPECT_EQ(reader.status().code(),
            limit ? absl::StatusCode::kResourceExhausted : absl::StatusCode::kInvalidArgument)
      << reader.status();
  std::string message(reader.status().message());
  EXPECT_EQ(message.rfind("zip: ", 0), 0u) << message;
  EXPECT_NE(message.find(reason), std::string::npos) << message;
}

// Opens fixture NAME.<ext> and checks every entry against NAME.listing.
void ExpectMatchesPython(const std::string& file, const std::string& listing) {
  ASSERT_FALSE(FixtureDir().empty()) << "fixture generator failed";
  absl::StatusOr<std::shared_ptr<const MappedFile>> mapped =
      MappedFile::Open(FixtureDir() + "/" + file);
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  std::vector<ListedEntry> expected = ReadListing(FixtureDir() + "/" + listing);
  ASSERT_FALSE(expected.empty());

  absl::StatusOr<ZipReader> reader = ZipReader::Open((*mapped)->data());
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_EQ(reader->entries().size(), expected.size());
  std::string scratch;
  for (size_t i = 0; i < expected.size(); ++i) {
    const ZipEntry& got = reader->entries()[i];
    const ListedEntry& want = expected[i];
    SCOPED_TRACE(want.name);
    EXPECT_EQ(got.name, want.name);
    EXPECT_EQ(got.local_header_offset, want.header_offset);
    EXPECT_EQ(got.data_offset, want.data_offset);
    EXPECT_EQ(got.compressed_size, want.compress_size);
    EXPECT_EQ(got.size, want.file_size);
    EXPECT_EQ(got.method, want.compress_type);
    EXPECT_EQ(got.crc32, want.crc);
    EXPECT_EQ(reader->Find(want.name), &got);
    if (!want.has_content) continue;
    absl::StatusOr<std::string_view> bytes = reader->Read(got, &scratch);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    EXPECT_EQ(*bytes, want.content);
    EXPECT_TRUE(reader->VerifyCrc32(got).ok());
    if (got.method == 0) {
      // Stored entries are views into the archive, not copies.
      EXPECT_EQ(bytes->data(), (*mapped)->data().data() + got.data_offset);
    }
  }
  EXPECT_EQ(reader->Find("no such entry"), nullptr);
}

TEST(ZipReaderTest, TorchSaveArchiveMatchesPythonZipfile) {
  ExpectMatchesPython("torch_state.pt", "torch_state.listing");
}

TEST(ZipReaderTest, TorchSaveStoredDataIs64ByteAligned) {
  ASSERT_FALSE(FixtureDir().empty());
  std::string bytes = ReadWholeFile(FixtureDir() + "/torch_state.pt");
  absl::StatusOr<ZipReader> reader = ZipReader::Open(bytes);
  ASSERT_TRUE(reader.ok()) << reader.status();
  int storages = 0;
  for (const ZipEntry& e : reader->entries()) {
    EXPECT_EQ(e.method, 0) << e.name;
    EXPECT_EQ(e.data_offset % 64, 0u) << e.name;
    if (e.name.find("/data/") != std::string::npos) ++storages;
  }
  EXPECT_EQ(storages, 6);
}

TEST(ZipReaderTest, TorchScriptArchiveMatchesPythonZipfile) {
  ExpectMatchesPython("torchscript.pt", "torchscript.listing");
}

TEST(ZipReaderTest, DeflatedEntriesMatchPythonZipfile) {
  ExpectMatchesPython("deflated.zip", "deflated.listing");
}

TEST(ZipReaderTest, Zip64LocalExtraFieldsMatchPythonZipfile) {
  ExpectMatchesPython("zip64_forced.zip", "zip64_forced.listing");
}

TEST(ZipReaderTest, Zip64CentralRecordsMatchPythonZipfile) {
  ExpectMatchesPython("zip64_small_limit.zip", "zip64_small_limit.listing");
}

TEST(ZipReaderTest, Zip64LargerThan4GiB) {
  ExpectMatchesPython("sparse_zip64.zip", "sparse_zip64.listing");
  absl::StatusOr<std::shared_ptr<const MappedFile>> mapped =
      MappedFile::Open(FixtureDir() + "/sparse_zip64.zip");
  ASSERT_TRUE(mapped.ok());
  ASSERT_GT((*mapped)->size(), uint64_t{4} << 30);
  absl::StatusOr<ZipReader> reader = ZipReader::Open((*mapped)->data());
  ASSERT_TRUE(reader.ok()) << reader.status();
  const ZipEntry* big = reader->Find("big.bin");
  const ZipEntry* tail = reader->Find("tail.txt");
  ASSERT_NE(big, nullptr);
  ASSERT_NE(tail, nullptr);
  EXPECT_EQ(big->size, (uint64_t{4} << 30) + (uint64_t{512} << 20));
  EXPECT_GT(tail->local_header_offset, uint64_t{0xffffffff});
  std::string scratch;
  absl::StatusOr<std::string_view> big_bytes = reader->Read(*big, &scratch);
  ASSERT_TRUE(big_bytes.ok());
  EXPECT_EQ(big_bytes->size(), big->size);  // a view: nothing was read or copied
}

TEST(ZipReaderTest, TruncatedCentralDirectory) {
  std::string zip = MakeZip({Stored("a", "aaaa"), Stored("b", "bb")});
  // Claim a central directory one byte longer than there is room for.
  size_t eocd = zip.size() - 22;
  uint32_t cd_size = static_cast<uint32_t>(zip[eocd + 12] & 0xff) |
                     static_cast<uint32_t>(zip[eocd + 13] & 0xff) << 8;
  Patch32(&zip, eocd + 12, cd_size + 1);
  ExpectRejected(zip, "central directory out of range");
  // Fewer bytes than the declared entries need.
  std::string short_cd = MakeZip({Stored("a", "aaaa")});
  Patch16(&short_cd, short_cd.size() - 22 + 8, 2);
  Patch16(&short_cd, short_cd.size() - 22 + 10, 2);
  ExpectRejected(short_cd, "truncated central directory");
}

TEST(ZipReaderTest, EveryPrefixOfATorchArchiveIsRejectedCleanly) {
  ASSERT_FALSE(FixtureDir().empty());
  std::string bytes = ReadWholeFile(FixtureDir() + "/torch_state.pt");
  ASSERT_TRUE(ZipReader::Open(bytes).ok());
  for (size_t n = 0; n < bytes.size(); ++n) {
    // A copy of exactly n bytes so a read past the end is a sanitizer error.
    std::string prefix = bytes.substr(0, n);
    absl::StatusOr<ZipReader> reader = ZipReader::Open(prefix);
    ASSERT_FALSE(reader.ok()) << n;
    EXPECT_EQ(reader.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(ZipReaderTest, FlippedBytesNeverCrash) {
  ASSERT_FALSE(FixtureDir().empty());
  std::string bytes = ReadWholeFile(FixtureDir() + "/deflated.zip");
  std::string scratch;
  int accepted = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string mutated = bytes;
    mutated[i] = static_cast<char>(mutated[i] ^ 0xff);
    absl::StatusOr<ZipReader> reader = ZipReader::Open(mutated);
    if (!reader.ok()) {
      EXPECT_TRUE(IsRejection(reader.status())) << reader.status();
      continue;
    }
    ++accepted;
    for (const ZipEntry& e : reader->entries()) {
      absl::StatusOr<std::string_view> data = reader->Read(e, &scratch);
      if (data.ok()) {
        EXPECT_EQ(data->size(), e.size);
      } else {
        EXPECT_TRUE(IsRejection(data.status())) << data.status();
      }
    }
  }
  EXPECT_GT(accepted, 0);  // flips in timestamps and data are not structural
}

TEST(ZipReaderTest, EncryptedEntryRejected) {
  ExpectRejected(MakeZip({WithFlags(Stored("secret", "xxxx"), 1)}), "encrypted");
}

TEST(ZipReaderTest, StrongEncryptionRejected) {
  ExpectRejected(MakeZip({WithFlags(Stored("secret", "xxxx"), 1 << 6)}), "encrypted");
}

TEST(ZipReaderTest, UnknownMethodRejected) {
  FakeEntry bzip2 = Stored("bz", "BZh9");
  bzip2.method = 12;
  ExpectRejected(MakeZip({bzip2}), "unsupported compression method 12");
}

TEST(ZipReaderTest, DotDotNameRejected) {
  for (std::string name : {"../evil", "a/../../b", "a/..", "..", "a\\..\\b"}) {
    SCOPED_TRACE(name);
    ExpectRejected(MakeZip({Stored(name, "x")}), "..");
  }
  // Dots that are not a whole component are fine.
  EXPECT_TRUE(ZipReader::Open(MakeZip({Stored("a/..b/c..", "x")})).ok());
}

TEST(ZipReaderTest, AbsoluteNameRejected) {
  for (std::string name : {"/etc/passwd", "\\windows", "C:/x", "c:x"}) {
    SCOPED_TRACE(name);
    ExpectRejected(MakeZip({Stored(name, "x")}), "absolute entry name");
  }
}

TEST(ZipReaderTest, EmptyAndNulNamesRejected) {
  ExpectRejected(MakeZip({Stored("", "x")}), "empty entry name");
  ExpectRejected(MakeZip({Stored(std::string("a\0b", 3), "x")}), "NUL");
}

TEST(ZipReaderTest, NameTooLongRejected) {
  ZipLimits limits;
  limits.max_name_length = 8;
  ExpectRejected(MakeZip({Stored("123456789", "x")}), "entry name too long", limits);
  EXPECT_TRUE(ZipReader::Open(MakeZip({Stored("12345678", "x")}), limits).ok());
}

TEST(ZipReaderTest, DuplicateNameRejected) {
  ExpectRejected(MakeZip({Stored("a", "1"), Stored("a", "2")}), "duplicate entry name");
}

TEST(ZipReaderTest, LocalNameMismatchRejected) {
  FakeEntry e = Stored("model/data.pkl", "x");
  e.local_name = "model/evil.pk";
  ExpectRejected(MakeZip({e}), "local and central names differ");
}

TEST(ZipReaderTest, LocalExtraFieldShiftsDataOffset) {
  // torch.save pads with an extra field in the local header only.
  std::string padding = "FB";
  padding += std::string("\x0b\x00", 2);
  padding += std::string(11, 'Z');
  FakeEntry e = Stored("a/data/0", "tensor");
  e.local_extra = padding;
  std::string zip = MakeZip({e});
  absl::StatusOr<ZipReader> reader = ZipReader::Open(zip);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(reader->entries()[0].data_offset, 30u + 8 + padding.size());
  std::string scratch;
  EXPECT_EQ(*reader->Read(reader->entries()[0], &scratch), "tensor");
}

TEST(ZipReaderTest, OverlappingEntriesRejected) {
  // Entry a claims 40 bytes: its data runs into b's local header.
  FakeEntry a = Stored("a", "aaaa");
  a.compressed_override = 40;
  ExpectRejected(MakeZip({a, Stored("b", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")}),
                 "overlapping entries");
  // Two central records naming one local header.
  std::string zip = MakeZip({Stored("a", "1"), Stored("a2", "2")});
  size_t cd = zip.size() - 22 - (46 + 1) - (46 + 2);
  Patch32(&zip, cd + 46 + 1 + 42, 0);  // second record's local header offset -> 0
  ExpectRejected(zip, "local and central names differ");
}

TEST(ZipReaderTest, EntryRunningPastTheEndRejected) {
  FakeEntry a = Stored("a", "aaaa");
  a.compressed_override = 1 << 20;
  ExpectRejected(MakeZip({a}), "entry data runs past the entries");
  FakeEntry huge = Stored("a", "aaaa");
  huge.compressed_override = 0xfffffffe;
  ExpectRejected(MakeZip({huge}), "entry data runs past the entries");
}

TEST(ZipReaderTest, LocalHeaderOutOfRangeRejected) {
  std::string zip = MakeZip({Stored("a", "1")});
  Patch32(&zip, zip.size() - 22 - (46 + 1) + 42, 0xfffffff0);
  ExpectRejected(zip, "local header out of range");
}

TEST(ZipReaderTest, StoredSizeMismatchRejected) {
  FakeEntry e = Stored("a", "1234");
  e.size = 9;
  ExpectRejected(MakeZip({e}), "stored entry sizes differ");
}

TEST(ZipReaderTest, TooManyEntriesRejected) {
  std::vector<FakeEntry> entries;
  for (const char* name : {"e0", "e1", "e2", "e3", "e4"}) entries.push_back(Stored(name, "x"));
  ZipLimits limits;
  limits.max_entries = 4;
  ExpectRejected(MakeZip(entries), "too many entries", limits);
  limits.max_entries = 5;
  EXPECT_TRUE(ZipReader::Open(MakeZip(entries), limits).ok());
}

TEST(ZipReaderTest, ZipBomb) {
  // 64 MiB of zeros deflate to ~64 KiB: a ratio over 1000.
  std::string zeros(64 << 20, '\0');
  std::string zip = MakeZip({DeflatedEntry("bomb", zeros)});
  ExpectRejected(zip, "compression ratio exceeds limit");
  ZipLimits lenient;
  lenient.max_compression_ratio = 2000;
  lenient.inflated_per_archive_byte = 2000;
  absl::StatusOr<ZipReader> reader = ZipReader::Open(zip, lenient);
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::string scratch;
  absl::StatusOr<std::string_view> bytes = reader->Read(reader->entries()[0], &scratch);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(*bytes, zeros);
}

TEST(ZipReaderTest, RatioCheckedAtEverySize) {
  // 512 KiB of zeros (~500:1): far under the old 1 MiB threshold, which
  // skipped the check, and over a 100:1 cap.
  std::string zip = MakeZip({DeflatedEntry("small_bomb", std::string(512 << 10, '\0'))});
  ZipLimits limits;
  limits.max_compression_ratio = 100;
  ExpectRejected(zip, "compression ratio exceeds limit", limits);
  ExpectRejected(zip, "max_compression_ratio", limits);
  // Tiny entries compress well and stay within the slack.
  EXPECT_TRUE(ZipReader::Open(MakeZip({DeflatedEntry("tiny", std::string(3000, '\0'))})).ok());
}

TEST(ZipReaderTest, TotalInflatedFollowsTheArchiveSize) {
  // Entries that each keep to a 100:1 ratio but together inflate far more
  // than 64 x the archive plus 1 MiB.
  std::vector<FakeEntry> entries;
  std::string content;
  for (int k = 0; content.size() < (600 << 10); ++k) content += std::to_string(k % 97);
  for (int k = 0; k < 8; ++k) entries.push_back(DeflatedEntry("e" + std::to_string(k), content));
  ZipLimits limits;
  limits.max_compression_ratio = 100000;
  std::string zip = MakeZip(entries);
  ASSERT_GT(uint64_t{8} * content.size(), (uint64_t{1} << 20) + 64 * zip.size());
  ExpectRejected(zip, "inflated size exceeds limit", limits);
  ExpectRejected(zip, "inflated_bytes", limits);
  limits.inflated_per_archive_byte = 100000;
  EXPECT_TRUE(ZipReader::Open(zip, limits).ok());
}

TEST(ZipReaderTest, UnderstatedSizeStopsInflating) {
  // The header says 1000 bytes; the stream would inflate to 64 MiB.
  FakeEntry lie = DeflatedEntry("lie", std::string(64 << 20, '\0'));
  lie.size = 1000;
  std::string zip = MakeZip({lie});
  absl::StatusOr<ZipReader> reader = ZipReader::Open(zip);
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::string scratch;
  absl::StatusOr<std::string_view> bytes = reader->Read(reader->entries()[0], &scratch);
  ASSERT_FALSE(bytes.ok());
  EXPECT_NE(bytes.status().message().find("exceeds declared size"), std::string::npos)
      << bytes.status();
  EXPECT_LE(scratch.capacity(), size_t{1} << 20);
}

TEST(ZipReaderTest, OverstatedSizeRejected) {
  FakeEntry lie = DeflatedEntry("lie", "short content");
  lie.size = 100;
  std::string zip = MakeZip({lie});
  absl::StatusOr<ZipReader> reader = ZipReader::Open(zip);
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::string scratch;
  absl::StatusOr<std::string_view> bytes = reader->Read(reader->entries()[0], &scratch);
  ASSERT_FALSE(bytes.ok());
  EXPECT_NE(bytes.status().message().find("differs from declared size"), std::string::npos)
      << bytes.status();
}

TEST(ZipReaderTest, TotalInflatedCap) {
  std::string content(3000, 'q');
  ZipLimits limits;
  limits.max_total_inflated = 5000;
  ExpectRejected(MakeZip({DeflatedEntry("a", content), DeflatedEntry("b", content)}),
                 "inflated size exceeds limit", limits);
  EXPECT_TRUE(ZipReader::Open(MakeZip({DeflatedEntry("a", content)}), limits).ok());
}

TEST(ZipReaderTest, CrcMismatch) {
  FakeEntry e = DeflatedEntry("a", "some content");
  e.crc ^= 1;
  FakeEntry s = Stored("s", "stored");
  s.crc = 1234;
  std::string zip = MakeZip({e, s});
  absl::StatusOr<ZipReader> reader = ZipReader::Open(zip);
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::string scratch;
  absl::StatusOr<std::string_view> bytes = reader->Read(reader->entries()[0], &scratch);
  ASSERT_FALSE(bytes.ok());
  EXPECT_NE(bytes.status().message().find("crc mismatch"), std::string::npos);
  // Stored entries are returned unchecked; VerifyCrc32 checks on request.
  EXPECT_TRUE(reader->Read(reader->entries()[1], &scratch).ok());
  EXPECT_FALSE(reader->VerifyCrc32(reader->entries()[1]).ok());
}

TEST(ZipReaderTest, EmptyDeflatedEntryWithoutStream) {
  FakeEntry e = Stored("empty", "");
  e.method = 8;
  absl::StatusOr<ZipReader> reader = ZipReader::Open(MakeZip({e}));
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::string scratch = "old";
  absl::StatusOr<std::string_view> bytes = reader->Read(reader->entries()[0], &scratch);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_TRUE(bytes->empty());
}

TEST(ZipReaderTest, CorruptDeflateStream) {
  FakeEntry e = DeflatedEntry("a", std::string(5000, 'z'));
  e.payload[0] = static_cast<char>(0xff);  // reserved block type 3
  absl::StatusOr<ZipReader> reader = ZipReader::Open(MakeZip({e}));
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::string scratch;
  absl::StatusOr<std::string_view> bytes = reader->Read(reader->entries()[0], &scratch);
  ASSERT_FALSE(bytes.ok());
  EXPECT_EQ(bytes.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ZipReaderTest, TruncatedDeflateStream) {
  FakeEntry e = DeflatedEntry("a", std::string(5000, 'z') + std::string(5000, 'y'));
  e.payload.resize(e.payload.size() / 2);
  absl::StatusOr<ZipReader> reader = ZipReader::Open(MakeZip({e}));
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::string scratch;
  absl::StatusOr<std::string_view> bytes = reader->Read(reader->entries()[0], &scratch);
  ASSERT_FALSE(bytes.ok());
  EXPECT_NE(bytes.status().message().find("truncated deflate stream"), std::string::npos)
      << bytes.status();
}

TEST(ZipReaderTest, ForgedEntryOutOfRangeRejectedByRead) {
  std::string zip = MakeZip({Stored("a", "1")});
  absl::StatusOr<ZipReader> reader = ZipReader::Open(zip);
  ASSERT_TRUE(reader.ok());
  ZipEntry forged = reader->entries()[0];
  forged.compressed_size = forged.size = ~uint64_t{0} - 3;
  std::string scratch;
  EXPECT_FALSE(reader->Read(forged, &scratch).ok());
}

TEST(ZipReaderTest, MultiDiskRejected) {
  std::string zip = MakeZip({Stored("a", "1")});
  Patch16(&zip, zip.size() - 22 + 4, 1);
  ExpectRejected(zip, "multi-disk");
}

TEST(ZipReaderTest, MissingEndOfCentralDirectory) {
  ExpectRejected("", "too short");
  ExpectRejected(std::string(100, 'x'), "end of central directory not found");
  std::string zip = MakeZip({Stored("a", "1")});
  zip[zip.size() - 22] = 'Q';
  ExpectRejected(zip, "end of central directory not found");
}

TEST(ZipReaderTest, CommentAndTrailingBytesTolerated) {
  std::string zip = MakeZip({Stored("a", "payload")});
  Patch16(&zip, zip.size() - 2, 5);
  zip += "hello";
  EXPECT_TRUE(ZipReader::Open(zip).ok());
  zip += "trailing";
  EXPECT_TRUE(ZipReader::Open(zip).ok());
}

// Appends a zip64 end of central directory record and locator for a
// central directory of `entries` records at [cd_offset, cd_offset+cd_size).
std::string Zip64Tail(uint64_t record_offset, uint64_t entries, uint64_t cd_size,
                      uint64_t cd_offset, uint64_t record_size = 44) {
  std::string s;
  Put32(&s, 0x06064b50);
  Put64(&s, record_size);
  Put16(&s, 45);
  Put16(&s, 45);
  Put32(&s, 0);
  Put32(&s, 0);
  Put64(&s, entries);
  Put64(&s, entries);
  Put64(&s, cd_size);
  Put64(&s, cd_offset);
  Put32(&s, 0x07064b50);
  Put32(&s, 0);
  Put64(&s, record_offset);
  Put32(&s, 1);
  return s;
}

// Rewrites a plain archive's end records as zip64 ones.
std::string ToZip64(const std::string& zip, uint64_t entries, uint64_t record_size = 44,
                    int64_t locator_target = -1) {
  size_t eocd = zip.size() - 22;
  uint32_t cd_size = 0, cd_offset = 0;
  for (int i = 0; i < 4; ++i) {
    cd_size |= static_cast<uint32_t>(static_cast<unsigned char>(zip[eocd + 12 + i])) << (8 * i);
    cd_offset |= static_cast<uint32_t>(static_cast<unsigned char>(zip[eocd + 16 + i])) << (8 * i);
  }
  std::string out = zip.substr(0, eocd);
  uint64_t record = out.size();
  out += Zip64Tail(locator_target >= 0 ? static_cast<uint64_t>(locator_target) : record, entries,
                   cd_size, cd_offset, record_size);
  Put32(&out, 0x06054b50);
  Put16(&out, 0);
  Put16(&out, 0);
  Put16(&out, 0xffff);
  Put16(&out, 0xffff);
  Put32(&out, 0xffffffff);
  Put32(&out, 0xffffffff);
  Put16(&out, 0);
  return out;
}

TEST(ZipReaderTest, Zip64EndRecordsRead) {
  std::string zip = ToZip64(MakeZip({Stored("a", "1"), Stored("b", "2")}), 2);
  absl::StatusOr<ZipReader> reader = ZipReader::Open(zip);
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_EQ(reader->entries().size(), 2u);
  EXPECT_EQ(reader->entries()[1].name, "b");
}

TEST(ZipReaderTest, Zip64EntryCountLies) {
  std::string base = MakeZip({Stored("a", "1")});
  ExpectRejected(ToZip64(base, uint64_t{1} << 40), "too many entries");
  ExpectRejected(ToZip64(base, 1000), "truncated central directory");
}

TEST(ZipReaderTest, Zip64RecordOutOfRange) {
  std::string base = MakeZip({Stored("a", "1")});
  ExpectRejected(ToZip64(base, 1, 44, int64_t{1} << 62),
                 "zip64 end of central directory out of range");
  ExpectRejected(ToZip64(base, 1, ~uint64_t{0}), "bad zip64 end of central directory size");
  ExpectRejected(ToZip64(base, 1, 44, 0), "bad zip64 end of central directory signature");
}

TEST(ZipReaderTest, Zip64ExtraFieldMissing) {
  std::string zip = MakeZip({Stored("a", "1")});
  size_t cd = zip.size() - 22 - (46 + 1);
  Patch32(&zip, cd + 20, 0xffffffff);  // compressed size saturated, no zip64 extra
  ExpectRejected(zip, "zip64 extra field missing");
}

TEST(ZipReaderTest, LooksLikeZip) {
  EXPECT_TRUE(LooksLikeZip(MakeZip({Stored("a", "1")})));
  EXPECT_TRUE(LooksLikeZip(MakeZip({})));  // empty archive: EOCD only
  EXPECT_FALSE(LooksLikeZip(""));
  EXPECT_FALSE(LooksLikeZip("PK"));
  EXPECT_FALSE(LooksLikeZip(std::string("\x80\x02}q\x00.", 6)));
  EXPECT_TRUE(ZipReader::Open(MakeZip({})).ok());
  // Safetensors data that happens to hold an end-of-central-directory
  // signature, not at the very end, is not a zip.
  std::string tensor_bytes = "tensor bytes ";
  tensor_bytes += MakeZip({});
  tensor_bytes += "more tensor bytes";
  EXPECT_FALSE(LooksLikeZip(tensor_bytes));
}

}  // namespace
}  // namespace weightgate::checkpoint
