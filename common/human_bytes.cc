#include "common/human_bytes.h"

#include "absl/strings/str_format.h"

namespace weightgate::common {

std::string HumanBytes(double bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrFormat("%.0f %s", bytes, kUnits[u])
                : absl::StrFormat("%.1f %s", bytes, kUnits[u]);
}

}  // namespace weightgate::common
