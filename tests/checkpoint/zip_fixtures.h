// Test helpers shared by the zip and safetensors tests: the fixture
// directory written by tests/fixtures/make_zip_fixtures.py (Debian's
// /usr/bin/python3 with torch), its listings, and a tiny zip writer for
// hand-made hostile archives.
#ifndef WEIGHTGATE_TESTS_CHECKPOINT_ZIP_FIXTURES_H_
#define WEIGHTGATE_TESTS_CHECKPOINT_ZIP_FIXTURES_H_

#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/fixtures/fixture_dir.h"

namespace weightgate::checkpoint::testing {

using ::weightgate::testing::ReadWholeFile;

// Written by tests/fixtures/make_zip_fixtures.py; see
// tests/fixtures/fixture_dir.h. Empty string on failure.
inline const std::string& FixtureDir() {
  static const std::string dir =
      ::weightgate::testing::GenerateFixtures("zip", {"make_zip_fixtures.py"});
  return dir;
}

inline std::string HexDecode(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

inline std::vector<std::string> SplitTabs(const std::string& line) {
  std::vector<std::string> fields;
  size_t start = 0;
  while (true) {
    size_t tab = line.find('\t', start);
    fields.push_back(
        line.substr(start, tab == std::string::npos ? std::string::npos : tab - start));
    if (tab == std::string::npos) break;
    start = tab + 1;
  }
  return fields;
}

// One line of a NAME.listing: an entry as Python's zipfile sees it.
struct ListedEntry {
  std::string name;
  uint64_t header_offset = 0;
  uint64_t data_offset = 0;
  uint64_t compress_size = 0;
  uint64_t file_size = 0;
  uint16_t compress_type = 0;
  uint32_t crc = 0;
  bool has_content = false;
  std::string content;
};

inline std::vector<ListedEntry> ReadListing(const std::string& path) {
  std::vector<ListedEntry> entries;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    std::vector<std::string> f = SplitTabs(line);
    if (f.size() != 8) {
      ADD_FAILURE() << "bad listing line in " << path << ": " << line;
      continue;
    }
    ListedEntry e;
    e.name = f[0];
    e.header_offset = std::stoull(f[1]);
    e.data_offset = std::stoull(f[2]);
    e.compress_size = std::stoull(f[3]);
    e.file_size = std::stoull(f[4]);
    e.compress_type = static_cast<uint16_t>(std::stoul(f[5]));
    e.crc = static_cast<uint32_t>(std::stoul(f[6]));
    e.has_content = f[7] != "-";
    if (e.has_content) e.content = HexDecode(f[7]);
    entries.push_back(std::move(e));
  }
  return entries;
}

inline uint32_t Crc32(std::string_view bytes) {
  return static_cast<uint32_t>(
      crc32(0L, reinterpret_cast<const Bytef*>(bytes.data()), static_cast<uInt>(bytes.size())));
}

// Raw deflate (no zlib header), as zip method 8 stores it.
inline std::string Deflate(std::string_view bytes) {
  z_stream z{};
  deflateInit2(&z, 9, Z_DEFLATED, -MAX_WBITS, 9, Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&z, bytes.size()), '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
  z.avail_in = static_cast<uInt>(bytes.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  deflate(&z, Z_FINISH);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

// Little-endian appenders.
inline void Put16(std::string* s, uint16_t v) {
  for (int i = 0; i < 2; ++i) s->push_back(static_cast<char>(v >> (8 * i)));
}
inline void Put32(std::string* s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s->push_back(static_cast<char>(v >> (8 * i)));
}
inline void Put64(std::string* s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s->push_back(static_cast<char>(v >> (8 * i)));
}
inline void Patch16(std::string* s, size_t off, uint16_t v) {
  (*s)[off] = static_cast<char>(v);
  (*s)[off + 1] = static_cast<char>(v >> 8);
}
inline void Patch32(std::string* s, size_t off, uint32_t v) {
  for (int i = 0; i < 4; ++i) (*s)[off + i] = static_cast<char>(v >> (8 * i));
}

// One entry of a hand-made archive. Defaults give a valid stored entry.
struct FakeEntry {
  std::string name;
  std::string payload;  // bytes as stored (already deflated for method 8)
  uint16_t method = 0;
  uint64_t size = 0;  // uncompressed; 0 = payload.size()
  uint32_t crc = 0;   // 0 = CRC of payload (right for stored entries)
  uint16_t flags = 0;
  std::string local_name;            // empty = name
  std::string local_extra;           // e.g. torch's "FB" padding
  int64_t compressed_override = -1;  // central compressed/uncompressed size lie
};

inline FakeEntry Stored(std::string name, std::string payload) {
  FakeEntry e;
  e.name = std::move(name);
  e.payload = std::move(payload);
  return e;
}

inline FakeEntry DeflatedEntry(std::string name, std::string_view content) {
  FakeEntry e;
  e.name = std::move(name);
  e.payload = Deflate(content);
  e.method = 8;
  e.size = content.size();
  e.crc = Crc32(content);
  return e;
}

// A plain (non-zip64) archive with the given entries, in order.
inline std::string MakeZip(const std::vector<FakeEntry>& entries) {
  std::string zip, cd;
  for (const FakeEntry& e : entries) {
    uint32_t offset = static_cast<uint32_t>(zip.size());
    uint32_t crc = e.crc != 0 ? e.crc : Crc32(e.payload);
    uint64_t csize = e.compressed_override >= 0 ? static_cast<uint64_t>(e.compressed_override)
                                                : e.payload.size();
    uint64_t size = e.size != 0 ? e.size : (e.method == 0 ? csize : e.payload.size());
    const std::string& local_name = e.local_name.empty() ? e.name : e.local_name;
    Put32(&zip, 0x04034b50);
    Put16(&zip, 20);
    Put16(&zip, e.flags);
    Put16(&zip, e.method);
    Put16(&zip, 0);
    Put16(&zip, 0x21);
    Put32(&zip, crc);
    Put32(&zip, static_cast<uint32_t>(csize));
    Put32(&zip, static_cast<uint32_t>(size));
    Put16(&zip, static_cast<uint16_t>(local_name.size()));
    Put16(&zip, static_cast<uint16_t>(e.local_extra.size()));
    zip += local_name;
    zip += e.local_extra;
    zip += e.payload;

    Put32(&cd, 0x02014b50);
    Put16(&cd, 20);
    Put16(&cd, 20);
    Put16(&cd, e.flags);
    Put16(&cd, e.method);
    Put16(&cd, 0);
    Put16(&cd, 0x21);
    Put32(&cd, crc);
    Put32(&cd, static_cast<uint32_t>(csize));
    Put32(&cd, static_cast<uint32_t>(size));
    Put16(&cd, static_cast<uint16_t>(e.name.size()));
    Put16(&cd, 0);
    Put16(&cd, 0);
    Put16(&cd, 0);
    Put16(&cd, 0);
    Put32(&cd, 0);
    Put32(&cd, offset);
    cd += e.name;
  }
  uint32_t cd_offset = static_cast<uint32_t>(zip.size());
  zip += cd;
  Put32(&zip, 0x06054b50);
  Put16(&zip, 0);
  Put16(&zip, 0);
  Put16(&zip, static_cast<uint16_t>(entries.size()));
  Put16(&zip, static_cast<uint16_t>(entries.size()));
  Put32(&zip, static_cast<uint32_t>(cd.size()));
  Put32(&zip, cd_offset);
  Put16(&zip, 0);
  return zip;
}

}  // namespace weightgate::checkpoint::testing

#endif  // WEIGHTGATE_TESTS_CHECKPOINT_ZIP_FIXTURES_H_
