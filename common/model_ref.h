// Model IDs and references, as every side spells them: the server resolves
// them, the CLI checks them before it dials. Pure functions, no I/O.
//
//   model id   [a-z0-9][a-z0-9._-]{0,127}          (aliases follow the same rule)
//   reference  MODEL | MODEL@VERSION | MODEL@ALIAS  (bare MODEL means MODEL@latest)
#ifndef WEIGHTGATE_COMMON_MODEL_REF_H_
#define WEIGHTGATE_COMMON_MODEL_REF_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace weightgate::common {

// InvalidArgument unless `model_id` matches [a-z0-9][a-z0-9._-]{0,127}.
absl::Status ValidateModelId(const std::string& model_id);

// A split reference. alias is "latest" for a bare MODEL; version is set (and
// alias empty) when the part after '@' is a number.
struct ParsedRef {
  std::string model_id;
  std::string alias;
  int64_t version = 0;
};

// Splits "MODEL", "MODEL@VERSION", "MODEL@ALIAS". InvalidArgument for a bad
// id or alias, an empty tail, or a version <= 0.
absl::StatusOr<ParsedRef> ParseRef(const std::string& ref);

}  // namespace weightgate::common

#endif  // WEIGHTGATE_COMMON_MODEL_REF_H_
