#include "common/model_ref.h"

#include <charconv>

#include "absl/strings/str_cat.h"

namespace weightgate::common {

absl::Status ValidateModelId(const std::string& model_id) {
  auto valid_char = [](char c, bool first) {
    if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) return true;
    return !first && (c == '.' || c == '_' || c == '-');
  };
  bool ok = !model_id.empty() && model_id.size() <= 128;
  for (size_t i = 0; ok && i < model_id.size(); ++i) ok = valid_char(model_id[i], i == 0);
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("invalid model id '", model_id.substr(0, 140),
                                                 "': must match [a-z0-9][a-z0-9._-]{0,127}"));
}

absl::StatusOr<ParsedRef> ParseRef(const std::string& ref) {
  ParsedRef parsed;
  size_t at = ref.find('@');
  parsed.model_id = ref.substr(0, at);
  if (absl::Status s = ValidateModelId(parsed.model_id); !s.ok()) return s;
  if (at == std::string::npos) {
    parsed.alias = "latest";
    return parsed;
  }
  std::string tail = ref.substr(at + 1);
  if (tail.empty())
    return absl::InvalidArgumentError(
        absl::StrCat("invalid reference '", ref, "': empty after '@'"));
  int64_t version = 0;
  auto [end, ec] = std::from_chars(tail.data(), tail.data() + tail.size(), version);
  if (ec == std::errc() && end == tail.data() + tail.size()) {
    if (version <= 0)
      return absl::InvalidArgumentError(absl::StrCat("invalid version in '", ref, "'"));
    parsed.version = version;
    return parsed;
  }
  if (absl::Status s = ValidateModelId(tail); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("invalid alias in reference '", ref, "'"));
  }
  parsed.alias = tail;
  return parsed;
}

}  // namespace weightgate::common
