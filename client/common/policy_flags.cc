#include "client/common/policy_flags.h"

#include <string_view>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "google/protobuf/util/json_util.h"

namespace weightgate::client {
namespace {

namespace v1 = weightgate::v1;
using Policy = v1::NormalizationPolicy;

// Guards against reading something huge by mistake (--policy /dev/zero).
constexpr size_t kMaxPolicyFileBytes = 1 << 20;

absl::Status ApplyPolicyFile(const std::string& path, Policy* policy) {
  absl::StatusOr<std::string> json = common::ReadFile(path, kMaxPolicyFileBytes);
  if (absl::IsOutOfRange(json.status())) {
    return absl::InvalidArgumentError(absl::StrCat("--policy: ", path, " is larger than 1 MiB"));
  }
  if (!json.ok()) return absl::NotFoundError(absl::StrCat("--policy: cannot open ", path));
  absl::StatusOr<Policy> from_file = PolicyFromJson(*json);
  if (!from_file.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--policy ", path, ": ", from_file.status().message()));
  }
  // Merged, so flags given before --policy keep what the file leaves at its
  // defaults; rename rules are appended.
  policy->MergeFrom(*from_file);
  return absl::OkStatus();
}

absl::Status ApplyRename(const std::string& value, Policy* policy) {
  // REGEX=REPLACEMENT, split at the last '=' since lookaheads may hold one.
  size_t eq = value.rfind('=');
  if (eq == std::string::npos || eq == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--rename: '", value, "' is not REGEX=REPLACEMENT"));
  }
  v1::RenameRule* rule = policy->add_rename_rules();
  rule->set_pattern(value.substr(0, eq));
  rule->set_replacement(value.substr(eq + 1));
  return absl::OkStatus();
}

// A flag and what it does to the policy. Values are checked against
// flag.choices before `apply` runs.
struct PolicyFlag {
  Flag flag;
  absl::Status (*apply)(const std::string& value, Policy* policy);
};

// clang-format off
const PolicyFlag kPolicyFlags[] = {
    {{.name = "--policy", .value_name = "FILE.json",
      .help = "NormalizationPolicy as proto JSON (merged)"},
     ApplyPolicyFile},
    {{.name = "--container", .value_name = "auto|.|PATH",
      .help = "where the state_dict is: a dotted path, . for the top level (default auto)"},
     [](const std::string& v, Policy* p) {
       if (v.empty()) return absl::InvalidArgumentError("--container needs a value");
       p->set_container(v == "auto" ? "" : v);
       return absl::OkStatus();
     }},
    {{.name = "--prefixes", .value_name = "auto|none|any",
      .help = "strip/add known wrapper and training prefixes; none: keys as they are; any: "
              "also swap an arbitrary root (default auto)",
      .choices = "auto|none|any"},
     [](const std::string& v, Policy* p) {
       p->set_prefixes(v == "auto"   ? Policy::PREFIX_AUTO
                       : v == "none" ? Policy::PREFIX_NONE
                                     : Policy::PREFIX_ANY);
       return absl::OkStatus();
     }},
    {{.name = "--weights", .value_name = "auto|raw|ema",
      .help = "raw or EMA weights when a checkpoint holds both (default auto: both with "
              "different values is ambiguous_match)",
      .choices = "auto|raw|ema"},
     [](const std::string& v, Policy* p) {
       p->set_weights(v == "auto"  ? Policy::WEIGHTS_AUTO
                      : v == "raw" ? Policy::WEIGHTS_RAW
                                   : Policy::WEIGHTS_EMA);
       return absl::OkStatus();
     }},
    {{.name = "--key_prefix", .value_name = "PREFIX",
      .help = "the state_dict is the keys under PREFIX (e.g. student.), stripped"},
     [](const std::string& v, Policy* p) {
       if (v.empty() || v == ".") return absl::InvalidArgumentError("--key_prefix needs a prefix");
       p->set_key_prefix(v);
       return absl::OkStatus();
     }},
    {{.name = "--rename", .value_name = "REGEX=REPLACEMENT",
      .help = "rename keys; repeatable, in order; RE2 regex, $1..$9", .repeatable = true},
     ApplyRename},
    {{.name = "--legacy_gamma_beta", .value_name = "",
      .help = "rename gamma/beta to weight/bias"},
     [](const std::string&, Policy* p) {
       p->set_legacy_gamma_beta(true);
       return absl::OkStatus();
     }},
    {{.name = "--positional_remap", .value_name = "",
      .help = "map leftover tensors by position when shapes agree"},
     [](const std::string&, Policy* p) {
       p->set_positional_remap(true);
       return absl::OkStatus();
     }},
    {{.name = "--dtype", .value_name = "cast|keep|reject",
      .help = "dtype differences (default cast)", .choices = "cast|keep|reject"},
     [](const std::string& v, Policy* p) {
       p->set_dtype(v == "cast"   ? Policy::DTYPE_CAST
                    : v == "keep" ? Policy::DTYPE_KEEP
                                  : Policy::DTYPE_REJECT);
       return absl::OkStatus();
     }},
    {{.name = "--optional", .value_name = "GLOB",
      .help = "spec keys that may be missing (filled with zeros); repeatable, replaces the "
              "default *.num_batches_tracked",
      .repeatable = true},
     [](const std::string& v, Policy* p) {
       if (v.empty()) return absl::InvalidArgumentError("--optional needs a glob");
       p->mutable_optional_keys()->add_values(v);
       return absl::OkStatus();
     }},
    {{.name = "--no_optional", .value_name = "", .help = "every spec key is required"},
     [](const std::string&, Policy* p) {
       p->mutable_optional_keys()->clear_values();
       return absl::OkStatus();
     }},
    {{.name = "--unexpected", .value_name = "drop|reject",
      .help = "extra keys (default drop)", .choices = "drop|reject"},
     [](const std::string& v, Policy* p) {
       p->set_unexpected(v == "drop" ? Policy::UNEXPECTED_DROP : Policy::UNEXPECTED_REJECT);
       return absl::OkStatus();
     }},
    {{.name = "--non_finite", .value_name = "reject|allow",
      .help = "NaN/Inf values (default reject)", .choices = "reject|allow"},
     [](const std::string& v, Policy* p) {
       p->set_non_finite(v == "reject" ? Policy::NONFINITE_REJECT : Policy::NONFINITE_ALLOW);
       return absl::OkStatus();
     }},
    {{.name = "--unknown_calls", .value_name = "allow|reject",
      .help = "globals the pickle calls outside the allow-list, never executed (default allow: "
              "reported)", .choices = "allow|reject"},
     [](const std::string& v, Policy* p) {
       p->set_unknown_calls(v == "allow" ? Policy::UNKNOWN_CALLS_ALLOW
                                         : Policy::UNKNOWN_CALLS_REJECT);
       return absl::OkStatus();
     }},
    {{.name = "--zero_weights", .value_name = "fp32|module",
      .help = "DeepSpeed ZeRO sets: fp32 master weights (default) or the module weights",
      .choices = "fp32|module"},
     [](const std::string& v, Policy* p) {
       p->set_zero_weights(v);
       return absl::OkStatus();
     }},
    {{.name = "--tp_merge_dim", .value_name = "NAME=DIM",
      .help = "tensor-parallel sets: merge NAME along DIM (-1 = replicated); repeatable",
      .repeatable = true},
     [](const std::string& v, Policy* p) {
       size_t eq = v.rfind('=');
       int dim = 0;
       if (eq == std::string::npos || eq == 0 || !absl::SimpleAtoi(v.substr(eq + 1), &dim) ||
           dim < -1) {
         return absl::InvalidArgumentError(absl::StrCat("--tp_merge_dim: '", v, "' is not NAME=DIM"));
       }
       p->add_tp_merge_dims(v);
       return absl::OkStatus();
     }},
};
// clang-format on

}  // namespace

const FlagGroup& PolicyFlags() {
  static const FlagGroup* group = [] {
    auto* g = new FlagGroup{"policy flags", {}};
    for (const PolicyFlag& f : kPolicyFlags) g->flags.push_back(f.flag);
    return g;
  }();
  return *group;
}

absl::Status ApplyPolicyFlags(const ParsedArgs& parsed, Policy* policy, bool* any_set) {
  bool any = false;
  for (const auto& [name, value] : parsed.in_order) {
    for (const PolicyFlag& f : kPolicyFlags) {
      if (f.flag.name != name) continue;
      if (absl::Status s = f.apply(value, policy); !s.ok()) return s;
      any = true;
    }
  }
  if (any_set != nullptr) *any_set = any;
  return absl::OkStatus();
}

absl::StatusOr<Policy> PolicyFromFlags(const std::vector<std::string>& args) {
  static const CommandSpec* spec = new CommandSpec{.program = "policy", .groups = {&PolicyFlags()}};
  absl::StatusOr<ParsedArgs> parsed = ParseArgs(*spec, args);
  if (!parsed.ok()) return parsed.status();
  Policy policy;
  if (absl::Status s = ApplyPolicyFlags(*parsed, &policy, nullptr); !s.ok()) return s;
  return policy;
}

absl::StatusOr<Policy> PolicyFromJson(const std::string& json) {
  Policy policy;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  auto status = google::protobuf::util::JsonStringToMessage(json, &policy, options);
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("policy JSON: ", std::string(status.message())));
  }
  return policy;
}

std::string PolicyFlagsHelp() { return GroupHelp(PolicyFlags()); }

}  // namespace weightgate::client
