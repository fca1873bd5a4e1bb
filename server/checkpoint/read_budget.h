// ReadBudget counts the bytes a reader allocates for one untrusted input
// against a limit derived from that input's size, so that no file makes the
// reader hold more than a small multiple of itself plus a fixed allowance
// ("no amplification", not only "no crash"). Readers Charge() what they are
// about to allocate or copy; the first charge that does not fit fails with a
// ResourceExhausted status naming the limit, and the budget stays exhausted:
// every later Charge() fails with the same status.
//
// ResourceLimitError is the one way the reader reports any resource limit
// (read budget, inflated bytes, compression ratio, tensor names, key
// length): code ResourceExhausted, message "[<where>: ]resource limit
// <limit name>: <detail>". Validation turns it into INVALID reason
// `resource_limit`; every other reading error stays InvalidArgument.
//
// Not thread-safe: one reader, one budget.
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_READ_BUDGET_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_READ_BUDGET_H_

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"

namespace weightgate::checkpoint {

class ReadBudget final {
 public:
  // fixed + per_input_byte * input_bytes, saturating at UINT64_MAX.
  static uint64_t LimitFor(uint64_t fixed, uint64_t per_input_byte, uint64_t input_bytes);

  explicit ReadBudget(uint64_t limit, uint64_t used = 0) : limit_(limit), used_(used) {}

  // Counts `bytes` about to be allocated for `what` ("values", "items copied
  // by builtins.set", ...). Fails once the total would pass the limit.
  absl::Status Charge(uint64_t bytes, std::string_view what);

  // Raises the limit to `limit` when that is higher (a reader whose input
  // size is only known as it reads, e.g. the pickles of a legacy file).
  void RaiseTo(uint64_t limit) {
    if (limit > limit_) limit_ = limit;
  }

  // OK, or the failure of the first charge that did not fit.
  const absl::Status& status() const { return status_; }
  bool exhausted() const { return !status_.ok(); }

  uint64_t used() const { return used_; }
  uint64_t limit() const { return limit_; }

 private:
  uint64_t limit_;
  uint64_t used_;
  absl::Status status_;
};

// ResourceExhausted "<where>resource limit <limit>: <detail>"; `where` is
// empty or ends in ": ".
absl::Status ResourceLimitError(std::string_view where, std::string_view limit,
                                std::string_view detail);

// True for errors made by ResourceLimitError (or any ResourceExhausted).
bool IsResourceLimit(const absl::Status& status);

// `status` with `prefix` put before its message, same code.
absl::Status WithPrefix(const absl::Status& status, std::string_view prefix);

}  // namespace weightgate::checkpoint

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_READ_BUDGET_H_
