#include "server/statedict/ties.h"

#include <map>
#include <tuple>

namespace weightgate::statedict {

std::vector<weightgate::v1::TieGroup> TiesFromTensors(
    const std::vector<checkpoint::NamedTensor>& tensors) {
  using Key = std::tuple<int, int64_t, std::vector<int64_t>, std::vector<int64_t>, int>;
  std::map<Key, size_t> group_of;
  std::vector<std::vector<std::string>> groups;
  for (const checkpoint::NamedTensor& nt : tensors) {
    const checkpoint::TensorRecord& t = *nt.tensor;
    if (t.storage_index < 0 || t.numel() == 0) continue;
    Key key{t.storage_index, t.storage_offset, t.shape, t.strides, static_cast<int>(t.dtype)};
    auto [it, inserted] = group_of.emplace(key, groups.size());
    if (inserted) groups.emplace_back();
    groups[it->second].push_back(nt.name);
  }
  std::vector<weightgate::v1::TieGroup> out;
  for (std::vector<std::string>& g : groups) {
    if (g.size() < 2) continue;
    weightgate::v1::TieGroup& tie = out.emplace_back();
    for (std::string& n : g) tie.add_names(std::move(n));
  }
  return out;
}

absl::flat_hash_map<std::string, std::vector<std::string>> TiePartners(
    const weightgate::v1::ModelSpec& spec) {
  absl::flat_hash_map<std::string, std::vector<std::string>> out;
  for (const weightgate::v1::TieGroup& g : spec.ties()) {
    for (const std::string& a : g.names()) {
      for (const std::string& b : g.names()) {
        if (a != b) out[a].push_back(b);
      }
    }
  }
  return out;
}

}  // namespace weightgate::statedict
