#include "server/store/mapping_guard.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <mutex>

namespace weightgate::store {
namespace {

constexpr int kSlots = 4096;

struct Slot {
  std::atomic<uintptr_t> base{0};  // 0 = free
  std::atomic<size_t> size{0};
  std::atomic<bool> damaged{false};
};

Slot slots[kSlots];
struct sigaction previous_action;

void OnSigbus(int sig, siginfo_t* info, void* context) {
  uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
  for (Slot& slot : slots) {
    uintptr_t base = slot.base.load(std::memory_order_acquire);
    if (base == 0 || addr < base || addr - base >= slot.size.load(std::memory_order_acquire)) {
      continue;
    }
    uintptr_t page_size = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
    void* page = reinterpret_cast<void*>(addr & ~(page_size - 1));
    if (::mmap(page, page_size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) !=
        MAP_FAILED) {
      slot.damaged.store(true, std::memory_order_release);
      return;  // the faulting read retries and sees zeros
    }
    break;
  }
  // Not ours (or no way to recover): the default action, as if unhandled.
  if (previous_action.sa_flags & SA_SIGINFO && previous_action.sa_sigaction != nullptr) {
    previous_action.sa_sigaction(sig, info, context);
    return;
  }
  ::signal(SIGBUS, SIG_DFL);
  ::raise(SIGBUS);
}

void InstallOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction action = {};
    action.sa_sigaction = OnSigbus;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    ::sigaction(SIGBUS, &action, &previous_action);
  });
}

}  // namespace

std::unique_ptr<MappingGuard> MappingGuard::Register(const void* base, size_t size) {
  InstallOnce();
  uintptr_t start = reinterpret_cast<uintptr_t>(base);
  if (start == 0 || size == 0) return std::unique_ptr<MappingGuard>(new MappingGuard(-1));
  for (int i = 0; i < kSlots; ++i) {
    uintptr_t expected = 0;
    // Claim with a sentinel so the handler never sees a half-written slot.
    if (slots[i].base.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) {
      slots[i].size.store(0, std::memory_order_release);
      slots[i].damaged.store(false, std::memory_order_release);
      slots[i].size.store(size, std::memory_order_release);
      slots[i].base.store(start, std::memory_order_release);
      return std::unique_ptr<MappingGuard>(new MappingGuard(i));
    }
  }
  return std::unique_ptr<MappingGuard>(new MappingGuard(-1));
}

MappingGuard::~MappingGuard() {
  if (slot_ < 0) return;
  slots[slot_].base.store(1, std::memory_order_release);  // claimed, matches nothing
  slots[slot_].size.store(0, std::memory_order_release);
  slots[slot_].base.store(0, std::memory_order_release);
}

bool MappingGuard::damaged() const {
  return slot_ >= 0 && slots[slot_].damaged.load(std::memory_order_acquire);
}

}  // namespace weightgate::store
