// Pulls the policy flags (client/common/policy_flags.h) out of a command's
// arguments, leaving the rest for the command's own parser.
#ifndef WEIGHTGATE_CLIENT_CLI_POLICY_ARGS_H_
#define WEIGHTGATE_CLIENT_CLI_POLICY_ARGS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/common/policy_flags.h"
#include "client/common/report_format.h"
#include "weightgate/v1/types.pb.h"

namespace weightgate::cli {

using weightgate::client::FormatReport;
using weightgate::client::PolicyFlagsHelp;

// Applies and removes every policy flag in `args` (up to a "--"). `any_set`
// (may be null) tells whether there was one.
absl::Status ParsePolicyArgs(std::vector<std::string>& args,
                             weightgate::v1::NormalizationPolicy* policy, bool* any_set);

}  // namespace weightgate::cli

#endif  // WEIGHTGATE_CLIENT_CLI_POLICY_ARGS_H_
