#include "client/common/policy_flags.h"

#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "google/protobuf/util/json_util.h"

namespace weightgate::client {
namespace {

namespace v1 = weightgate::v1;

// Guards against reading something huge by mistake (--policy /dev/zero).
constexpr size_t kMaxPolicyFileBytes = 1 << 20;

absl::StatusOr<std::string> ReadSmallFile(const std::string& path) {
  absl::StatusOr<std::string> data = common::ReadFile(path, kMaxPolicyFileBytes);
  if (absl::IsOutOfRange(data.status())) {
    return absl::InvalidArgumentError(absl::StrCat("--policy: ", path, " is larger than 1 MiB"));
  }
  if (!data.ok()) return absl::NotFoundError(absl::StrCat("--policy: cannot open ", path));
  return data;
}

}  // namespace

absl::StatusOr<v1::NormalizationPolicy> PolicyFromJson(const std::string& json) {
  v1::NormalizationPolicy policy;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  auto status = google::protobuf::util::JsonStringToMessage(json, &policy, options);
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("policy JSON: ", std::string(status.message())));
  }
  return policy;
}

absl::StatusOr<bool> ConsumePolicyFlag(const std::vector<std::string>& args, size_t& i,
                                       v1::NormalizationPolicy* policy, bool* any_set) {
  if (i >= args.size()) return false;
  absl::string_view arg = args[i];
  if (arg.size() < 3 || arg.substr(0, 2) != "--") return false;
  absl::string_view name = arg;
  std::string attached;
  bool has_attached = false;
  if (size_t eq = arg.find('='); eq != absl::string_view::npos) {
    name = arg.substr(0, eq);
    attached = std::string(arg.substr(eq + 1));
    has_attached = true;
  }
  static constexpr absl::string_view kWithValue[] = {
      "--policy",   "--container",  "--prefixes",   "--rename",       "--dtype",
      "--optional", "--unexpected", "--non_finite", "--zero_weights", "--tp_merge_dim"};
  static constexpr absl::string_view kSwitches[] = {"--legacy_gamma_beta", "--positional_remap",
                                                    "--no_optional"};
  bool takes_value = false;
  bool known = false;
  for (absl::string_view f : kWithValue) {
    if (name == f) known = takes_value = true;
  }
  for (absl::string_view f : kSwitches) {
    if (name == f) known = true;
  }
  if (!known) return false;

  std::string value;
  size_t next = i;
  if (takes_value) {
    if (has_attached) {
      value = attached;
    } else {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat(name, " needs a value"));
      }
      next = i + 1;
      value = args[next];
    }
  } else if (has_attached) {
    return absl::InvalidArgumentError(absl::StrCat(name, " takes no value"));
  }
  auto bad = [&](absl::string_view expected) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": '", value, "' is not one of ", expected));
  };

  if (name == "--policy") {
    absl::StatusOr<std::string> json = ReadSmallFile(value);
    if (!json.ok()) return json.status();
    absl::StatusOr<v1::NormalizationPolicy> from_file = PolicyFromJson(*json);
    if (!from_file.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--policy ", value, ": ", from_file.status().message()));
    }
    // Merged, so flags given before --policy keep what the file leaves at
    // its defaults; rename rules are appended.
    policy->MergeFrom(*from_file);
  } else if (name == "--container") {
    if (value.empty()) return absl::InvalidArgumentError("--container needs a value");
    policy->set_container(value == "auto" ? "" : value);
  } else if (name == "--prefixes") {
    if (value == "auto") {
      policy->set_prefixes(v1::NormalizationPolicy::PREFIX_AUTO);
    } else if (value == "none") {
      policy->set_prefixes(v1::NormalizationPolicy::PREFIX_NONE);
    } else {
      return bad("auto, none");
    }
  } else if (name == "--rename") {
    // REGEX=REPLACEMENT, split at the last '=' since lookaheads may hold one.
    size_t eq = value.rfind('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--rename: '", value, "' is not REGEX=REPLACEMENT"));
    }
    v1::RenameRule* rule = policy->add_rename_rules();
    rule->set_pattern(value.substr(0, eq));
    rule->set_replacement(value.substr(eq + 1));
  } else if (name == "--legacy_gamma_beta") {
    policy->set_legacy_gamma_beta(true);
  } else if (name == "--positional_remap") {
    policy->set_positional_remap(true);
  } else if (name == "--dtype") {
    if (value == "cast") {
      policy->set_dtype(v1::NormalizationPolicy::DTYPE_CAST);
    } else if (value == "keep") {
      policy->set_dtype(v1::NormalizationPolicy::DTYPE_KEEP);
    } else if (value == "reject") {
      policy->set_dtype(v1::NormalizationPolicy::DTYPE_REJECT);
    } else {
      return bad("cast, keep, reject");
    }
  } else if (name == "--optional") {
    if (value.empty()) return absl::InvalidArgumentError("--optional needs a glob");
    policy->mutable_optional_keys()->add_values(value);
  } else if (name == "--no_optional") {
    policy->mutable_optional_keys()->clear_values();
  } else if (name == "--unexpected") {
    if (value == "drop") {
      policy->set_unexpected(v1::NormalizationPolicy::UNEXPECTED_DROP);
    } else if (value == "reject") {
      policy->set_unexpected(v1::NormalizationPolicy::UNEXPECTED_REJECT);
    } else {
      return bad("drop, reject");
    }
  } else if (name == "--non_finite") {
    if (value == "reject") {
      policy->set_non_finite(v1::NormalizationPolicy::NONFINITE_REJECT);
    } else if (value == "allow") {
      policy->set_non_finite(v1::NormalizationPolicy::NONFINITE_ALLOW);
    } else {
      return bad("reject, allow");
    }
  } else if (name == "--zero_weights") {
    if (value != "fp32" && value != "module") return bad("fp32, module");
    policy->set_zero_weights(value);
  } else if (name == "--tp_merge_dim") {
    int dim = 0;
    size_t eq = value.rfind('=');
    if (eq == std::string::npos || eq == 0 || !absl::SimpleAtoi(value.substr(eq + 1), &dim) ||
        dim < -1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tp_merge_dim: '", value, "' is not NAME=DIM"));
    }
    policy->add_tp_merge_dims(std::string(value));
  }
  i = next;
  if (any_set != nullptr) *any_set = true;
  return true;
}

const char* PolicyFlagsHelp() {
  return "policy flags:\n"
         "  --policy FILE.json          NormalizationPolicy as proto JSON (merged)\n"
         "  --container auto|PATH       where the state_dict is (default auto)\n"
         "  --prefixes auto|none        strip/add wrapper prefixes (default auto)\n"
         "  --rename REGEX=REPLACEMENT  rename keys; repeatable, in order; ECMAScript regex, "
         "$1..$9\n"
         "  --legacy_gamma_beta         rename gamma/beta to weight/bias\n"
         "  --positional_remap          map leftover tensors by position when shapes agree\n"
         "  --dtype cast|keep|reject    dtype differences (default cast)\n"
         "  --optional GLOB             spec keys that may be missing (filled with zeros);\n"
         "                              repeatable, replaces the default *.num_batches_tracked\n"
         "  --no_optional               every spec key is required\n"
         "  --unexpected drop|reject    extra keys (default drop)\n"
         "  --non_finite reject|allow   NaN/Inf values (default reject)\n"
         "  --zero_weights fp32|module  DeepSpeed ZeRO sets: fp32 master weights (default) or\n"
         "                              the module weights\n"
         "  --tp_merge_dim NAME=DIM     tensor-parallel sets: merge NAME along DIM (-1 =\n"
         "                              replicated); repeatable\n";
}

}  // namespace weightgate::client
