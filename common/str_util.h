// String helpers shared by every module. Debian's abseil is built with its own
// absl::string_view (not std::string_view), so absl::StrCat does not accept
// std::string_view; Cat does, and AbslView bridges the two view types.
#ifndef WEIGHTGATE_COMMON_STR_UTIL_H_
#define WEIGHTGATE_COMMON_STR_UTIL_H_

#include <string>
#include <string_view>
#include <type_traits>

#include "absl/strings/string_view.h"

namespace weightgate::common {

inline absl::string_view AbslView(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}
inline std::string_view StdView(absl::string_view s) {
  return std::string_view(s.data(), s.size());
}

namespace str_util_internal {

template <typename T>
void AppendOne(std::string* out, const T& v) {
  if constexpr (std::is_same_v<T, bool>) {
    out->append(v ? "true" : "false");
  } else if constexpr (std::is_same_v<T, char>) {
    out->push_back(v);
  } else if constexpr (std::is_integral_v<T> || std::is_enum_v<T>) {
    out->append(std::to_string(v));
  } else if constexpr (std::is_floating_point_v<T>) {
    out->append(std::to_string(v));
  } else if constexpr (std::is_same_v<T, absl::string_view>) {
    out->append(v.data(), v.size());
  } else {
    out->append(std::string_view(v));
  }
}

}  // namespace str_util_internal

// Concatenates strings, views, C strings, chars and numbers.
template <typename... Args>
std::string Cat(const Args&... args) {
  std::string out;
  (str_util_internal::AppendOne(&out, args), ...);
  return out;
}

}  // namespace weightgate::common

#endif  // WEIGHTGATE_COMMON_STR_UTIL_H_
