// libFuzzer target: ZipReader::Open on arbitrary bytes, then Read and
// VerifyCrc32 of every entry, checking that returned ranges stay inside the
// input and inflated sizes match the declarations.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "server/checkpoint/zip_reader.h"
#include "tests/fuzz/fuzz_check.h"

using weightgate::checkpoint::ZipEntry;
using weightgate::checkpoint::ZipLimits;
using weightgate::checkpoint::ZipReader;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  weightgate::checkpoint::LooksLikeZip(bytes);
  ZipLimits limits;
  limits.max_total_inflated = uint64_t{256} << 20;  // stay under libFuzzer's RSS limit
  absl::StatusOr<ZipReader> reader = ZipReader::Open(bytes, limits);
  if (!reader.ok()) {
    WG_FUZZ_CHECK_REJECTION(reader.status());
    return 0;
  }
  std::string scratch;
  for (const ZipEntry& e : reader->entries()) {
    WG_FUZZ_CHECK(reader->Find(e.name) == &e);
    WG_FUZZ_CHECK(e.data_offset <= size && e.compressed_size <= size - e.data_offset);
    WG_FUZZ_CHECK(e.local_header_offset < e.data_offset);
    absl::StatusOr<std::string_view> body = reader->Read(e, &scratch);
    if (!body.ok()) {
      WG_FUZZ_CHECK_REJECTION(body.status());
      continue;
    }
    WG_FUZZ_CHECK(body->size() == e.size);
    if (e.method == 0) {
      WG_FUZZ_CHECK(body->data() == bytes.data() + e.data_offset);
      absl::Status crc = reader->VerifyCrc32(e);
      if (!crc.ok()) WG_FUZZ_CHECK_REJECTION(crc);
    }
  }
  return 0;
}
