#include "server/registry/canonical.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <vector>

#include "absl/container/flat_hash_map.h"
#include "server/checkpoint/dtype.h"
#include "server/checkpoint/safetensors.h"

namespace weightgate::registry {

bool IsCanonicalSafetensors(const weightgate::v1::ModelSpec& spec, const std::string& path) {
  // Ties: the first member of a spec tie group (in spec order) holds the
  // bytes; each later one is a tie record naming it, in spec order, after
  // the metadata statedict::Normalize gives every output it writes. Were the
  // two to differ, no upload would match: the normal path runs, nothing breaks.
  absl::flat_hash_map<std::string, size_t> group_of;
  for (int g = 0; g < spec.ties_size(); ++g) {
    for (const std::string& name : spec.ties(g).names()) group_of.emplace(name, g);
  }
  absl::flat_hash_map<size_t, std::string> first_of_group;
  std::vector<std::pair<std::string, std::string>> metadata = {{"format", "pt"},
                                                               {"producer", "weightgate"}};
  std::vector<checkpoint::SafetensorsEntry> entries;
  for (const auto& t : spec.tensors()) {
    std::optional<checkpoint::DType> dtype = checkpoint::DTypeFromName(t.dtype());
    if (!dtype) return false;
    if (auto g = group_of.find(t.name()); g != group_of.end()) {
      auto [first, inserted] = first_of_group.emplace(g->second, t.name());
      if (!inserted) {
        metadata.emplace_back(checkpoint::SafetensorsTieKey(t.name()), first->second);
        continue;
      }
    }
    entries.push_back({t.name(), *dtype, {t.shape().begin(), t.shape().end()}});
  }
  if (!checkpoint::ValidateSafetensorsLayout(entries, metadata).ok()) return false;
  const std::string header = checkpoint::SafetensorsHeader(entries, metadata);
  const uint64_t data = checkpoint::SafetensorsDataSize(entries);

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st;
  bool same = ::fstat(fd, &st) == 0 && static_cast<uint64_t>(st.st_size) >= header.size() &&
              static_cast<uint64_t>(st.st_size) - header.size() == data;
  if (same) {
    std::string head(header.size(), '\0');
    size_t got = 0;
    while (got < head.size()) {
      ssize_t n = ::pread(fd, head.data() + got, head.size() - got, static_cast<off_t>(got));
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    same = got == head.size() && head == header;
  }
  ::close(fd);
  return same;
}

}  // namespace weightgate::registry
