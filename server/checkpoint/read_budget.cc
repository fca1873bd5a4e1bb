#include "server/checkpoint/read_budget.h"

#include <limits>

#include "common/str_util.h"

namespace weightgate::checkpoint {

using common::AbslView;
using common::Cat;
using common::StdView;

uint64_t ReadBudget::LimitFor(uint64_t fixed, uint64_t per_input_byte, uint64_t input_bytes) {
  uint64_t scaled;
  uint64_t total;
  if (__builtin_mul_overflow(per_input_byte, input_bytes, &scaled) ||
      __builtin_add_overflow(fixed, scaled, &total)) {
    return std::numeric_limits<uint64_t>::max();
  }
  return total;
}

absl::Status ReadBudget::Charge(uint64_t bytes, std::string_view what) {
  if (!status_.ok()) return status_;
  if (bytes > limit_ - used_) {
    status_ = ResourceLimitError(
        "", "read_budget",
        Cat(what, " would take the reader past ", limit_,
            " bytes (ReadOptions::budget_fixed_bytes + budget_per_input_byte x input bytes; ",
            used_, " used, ", bytes, " more asked)"));
    return status_;
  }
  used_ += bytes;
  return absl::OkStatus();
}

absl::Status ResourceLimitError(std::string_view where, std::string_view limit,
                                std::string_view detail) {
  return absl::ResourceExhaustedError(AbslView(Cat(where, "resource limit ", limit, ": ", detail)));
}

bool IsResourceLimit(const absl::Status& status) {
  return status.code() == absl::StatusCode::kResourceExhausted;
}

absl::Status WithPrefix(const absl::Status& status, std::string_view prefix) {
  if (status.ok()) return status;
  return absl::Status(status.code(), AbslView(Cat(prefix, StdView(status.message()))));
}

}  // namespace weightgate::checkpoint
