// Policy flags: the command-line spelling of a weightgate.v1.NormalizationPolicy,
// shared by `weightgate register|validate|upload|normalize` and
// `weightgate-normalize`, so the same flag means the same thing everywhere.
// The flags, their values and their help are one table (policy_flags.cc);
// `weightgate register --help` prints it.
//
// Flags apply in command-line order; --policy FILE.json merges a whole policy
// (later flags modify it), --rename and --optional are repeatable.
#ifndef WEIGHTGATE_CLIENT_COMMON_POLICY_FLAGS_H_
#define WEIGHTGATE_CLIENT_COMMON_POLICY_FLAGS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/common/flag_table.h"
#include "weightgate/v1/types.pb.h"

namespace weightgate::client {

// The policy flags, as a group a CommandSpec may accept.
const FlagGroup& PolicyFlags();

// Applies the policy flags among `parsed` to *policy, in command-line order.
// `any_set` (may be null) tells whether there was one. InvalidArgument for a
// bad value (an unreadable --policy file, a --rename without '=', ...).
absl::Status ApplyPolicyFlags(const ParsedArgs& parsed, weightgate::v1::NormalizationPolicy* policy,
                              bool* any_set);

// The policy that `args`, policy flags and nothing else, spell.
absl::StatusOr<weightgate::v1::NormalizationPolicy> PolicyFromFlags(
    const std::vector<std::string>& args);

// Reads a NormalizationPolicy from proto JSON text.
absl::StatusOr<weightgate::v1::NormalizationPolicy> PolicyFromJson(const std::string& json);

// The group's --help paragraph ("policy flags:\n  --policy FILE.json ...").
std::string PolicyFlagsHelp();

}  // namespace weightgate::client

#endif  // WEIGHTGATE_CLIENT_COMMON_POLICY_FLAGS_H_
