// Policy flags: the command-line spelling of a weightgate.v1.NormalizationPolicy,
// shared by `weightgate register|validate|upload` and `weightgate-normalize`
// so the same flag means the same thing everywhere.
//
//   --policy FILE.json          NormalizationPolicy as proto JSON (a base the
//                               other flags then modify, in command-line order)
//   --container auto|PATH       where the state_dict is ("auto" = search)
//   --prefixes auto|none        strip/add wrapper prefixes, or keep keys as they are
//   --rename REGEX=REPLACEMENT  repeatable, applied in order (ECMAScript, $1..$9)
//   --legacy_gamma_beta         also rename gamma/beta -> weight/bias
//   --positional_remap          map leftover tensors by position when shapes agree
//   --dtype cast|keep|reject
//   --optional GLOB             repeatable; spec keys that may be missing (the
//                               globs given replace the default)
//   --no_optional               no key may be missing (overrides the default
//                               *.num_batches_tracked)
//   --unexpected drop|reject
//   --non_finite reject|allow
//
// Values may also be attached with '=' (--dtype=keep). Errors are one line,
// meant to be printed after the program name.
#ifndef WEIGHTGATE_CLIENT_COMMON_POLICY_FLAGS_H_
#define WEIGHTGATE_CLIENT_COMMON_POLICY_FLAGS_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "weightgate/v1/types.pb.h"

namespace weightgate::client {

// If args[i] is a policy flag, applies it to *policy, advances i past its
// value (so i points at the last consumed argument), sets *any_set and
// returns true. Returns false, leaving everything untouched, for any other
// argument. InvalidArgument for a policy flag with a missing or bad value.
absl::StatusOr<bool> ConsumePolicyFlag(const std::vector<std::string>& args, size_t& i,
                                       weightgate::v1::NormalizationPolicy* policy, bool* any_set);

// Reads a NormalizationPolicy from proto JSON text.
absl::StatusOr<weightgate::v1::NormalizationPolicy> PolicyFromJson(const std::string& json);

// One paragraph listing the flags above, for --help texts.
const char* PolicyFlagsHelp();

}  // namespace weightgate::client

#endif  // WEIGHTGATE_CLIENT_COMMON_POLICY_FLAGS_H_
