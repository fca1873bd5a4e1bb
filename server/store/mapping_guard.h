// MappingGuard makes reads of a memory-mapped blob survivable when the file
// underneath goes away: truncated, or unlinked by another replica's garbage
// collection on NFS, where touching the mapping raises SIGBUS. A process-wide
// SIGBUS handler maps a zero page over the faulting page of a guarded range
// and marks the guard damaged; a reader checks damaged() after reading and
// ends its stream with an error instead of the process dying. A SIGBUS
// outside every guarded range keeps its default action.
//
// This class is thread-safe; the handler is async-signal-safe (fixed slots
// of atomics, mmap).
#ifndef WEIGHTGATE_SERVER_STORE_MAPPING_GUARD_H_
#define WEIGHTGATE_SERVER_STORE_MAPPING_GUARD_H_

#include <cstddef>
#include <memory>

namespace weightgate::store {

class MappingGuard final {
 public:
  // Guards [base, base + size) until the guard is destroyed, which must
  // happen before the range is unmapped. When every slot is taken the range
  // is not guarded (guarded() is false).
  static std::unique_ptr<MappingGuard> Register(const void* base, size_t size);
  ~MappingGuard();
  MappingGuard(const MappingGuard&) = delete;
  MappingGuard& operator=(const MappingGuard&) = delete;

  bool guarded() const { return slot_ >= 0; }
  // True once a read of the range faulted (the bytes read there are zeros).
  bool damaged() const;

 private:
  explicit MappingGuard(int slot) : slot_(slot) {}
  const int slot_;
};

}  // namespace weightgate::store

#endif  // WEIGHTGATE_SERVER_STORE_MAPPING_GUARD_H_
