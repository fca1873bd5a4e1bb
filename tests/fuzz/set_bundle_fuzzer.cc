// libFuzzer target: SetBundleUnpacker, which the server runs itself (not in a
// validation worker) on the bytes of a set upload as they arrive. The input's
// first byte picks how the rest is cut into pieces, so field boundaries land
// everywhere. A bundle may be refused, but only with InvalidArgument (never
// an I/O error from a name the filesystem rejects); what it writes never
// exceeds what arrived; everything it writes stays below its directory as
// plain files; and the directory is gone once the unpacker is.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "server/checkpoint/set_bundle.h"
#include "tests/fuzz/fuzz_check.h"

namespace wc = weightgate::checkpoint;
namespace fs = std::filesystem;

namespace {

const std::string& Scratch() {
  static const std::string dir = [] {
    char tmpl[] = "/tmp/wg-set-fuzz.XXXXXX";
    const char* made = ::mkdtemp(tmpl);
    if (made == nullptr) std::abort();
    return std::string(made);
  }();
  return dir;
}

// Sum of the sizes of the regular files below `dir`; aborts on anything else
// (a link, a device) or on a path that leaves it.
uint64_t FilesBelow(const std::string& dir) {
  uint64_t total = 0;
  const std::string prefix = dir + "/";
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    WG_FUZZ_CHECK(entry.path().string().compare(0, prefix.size(), prefix) == 0);
    WG_FUZZ_CHECK(!entry.is_symlink());
    WG_FUZZ_CHECK(entry.is_directory() || entry.is_regular_file());
    if (entry.is_regular_file()) total += entry.file_size();
  }
  return total;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static uint64_t counter = 0;
  const std::string dir = Scratch() + "/" + std::to_string(counter++);
  wc::SetBundleLimits limits;
  limits.max_files = 64;
  limits.max_total_bytes = uint64_t{1} << 20;
  limits.max_path_bytes = 300;
  limits.max_depth = 4;
  const size_t piece = 1 + data[0] % 37;
  std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  {
    absl::StatusOr<std::unique_ptr<wc::SetBundleUnpacker>> unpacker =
        wc::SetBundleUnpacker::Create(dir, limits);
    WG_FUZZ_CHECK(unpacker.ok());
    absl::Status status;
    size_t fed = 0;
    for (size_t k = 0; status.ok() && fed < bytes.size(); ++k) {
      // Pieces of 1..piece bytes, varying, so every field is split somewhere.
      size_t n = std::min(bytes.size() - fed, 1 + (k * 7 + fed) % piece);
      status = (*unpacker)->Append(bytes.substr(fed, n));
      fed += n;
      WG_FUZZ_CHECK((*unpacker)->bytes_unpacked() <= (*unpacker)->bytes_in());
      WG_FUZZ_CHECK((*unpacker)->bytes_in() <= fed);
    }
    if (status.ok()) status = (*unpacker)->Finish();
    if (!status.ok()) {
      WG_FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument);
      // Poisoned: the same error from then on.
      WG_FUZZ_CHECK((*unpacker)->Finish().code() == status.code());
    }
    WG_FUZZ_CHECK(FilesBelow(dir) == (*unpacker)->bytes_unpacked());
    WG_FUZZ_CHECK((*unpacker)->bytes_unpacked() <= limits.max_total_bytes);
  }
  struct stat st;
  WG_FUZZ_CHECK(::lstat(dir.c_str(), &st) != 0);
  return 0;
}
