// A per-request policy override may only make a model's stored policy
// stricter, unless the caller is an admin: a writer must not be able to
// store an all-zeros checkpoint under "prod" by declaring every key optional.
#ifndef WEIGHTGATE_SERVER_SERVICE_POLICY_CHECK_H_
#define WEIGHTGATE_SERVER_SERVICE_POLICY_CHECK_H_

#include "absl/status/status.h"
#include "weightgate/v1/types.pb.h"

namespace weightgate::service {

// OK when `override_policy` accepts nothing that `model_policy` rejects:
// no extra optional keys, renames, prefix stripping, gamma/beta renaming or
// positional remapping; dtype, unexpected-key and non-finite handling at
// least as strict; the container unchanged unless the model's is automatic.
// Otherwise PERMISSION_DENIED naming the first loosened field.
absl::Status CheckOverrideOnlyTightens(const weightgate::v1::NormalizationPolicy& model_policy,
                                       const weightgate::v1::NormalizationPolicy& override_policy);

}  // namespace weightgate::service

#endif  // WEIGHTGATE_SERVER_SERVICE_POLICY_CHECK_H_
