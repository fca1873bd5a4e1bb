#include "client/cli/policy_args.h"

namespace weightgate::cli {

absl::Status ParsePolicyArgs(std::vector<std::string>& args,
                             weightgate::v1::NormalizationPolicy* policy, bool* any_set) {
  bool any = false;
  std::vector<std::string> rest;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--") {
      rest.insert(rest.end(), args.begin() + static_cast<long>(i), args.end());
      break;
    }
    size_t start = i;
    absl::StatusOr<bool> consumed = weightgate::client::ConsumePolicyFlag(args, i, policy, &any);
    if (!consumed.ok()) return consumed.status();
    if (!*consumed) {
      i = start;
      rest.push_back(args[i]);
    }
  }
  args = std::move(rest);
  if (any_set != nullptr) *any_set = any;
  return absl::OkStatus();
}

}  // namespace weightgate::cli
