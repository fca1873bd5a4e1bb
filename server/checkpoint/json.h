// A small, strict JSON (RFC 8259) parser for untrusted headers: the
// safetensors header and JSON model specs. It accepts exactly the grammar
// (no comments, no trailing commas, no NaN, no leading zeros), requires valid
// UTF-8, rejects duplicate object keys and lone surrogate escapes, and bounds
// input size, nesting depth and value count before any of them can grow.
// Objects keep their members in document order.
//
// Errors are InvalidArgumentError("json: <reason> at offset N").
//
// Also the matching writer-side helpers: string quoting and UTF-8 checks.
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_JSON_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_JSON_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace weightgate::checkpoint {

struct JsonMember;

struct JsonValue {
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };

  Kind kind = Kind::kNull;
  bool boolean = false;
  std::string text;                 // kString: decoded UTF-8; kNumber: the literal as written
  std::vector<JsonValue> items;     // kArray
  std::vector<JsonMember> members;  // kObject, document order

  bool is_object() const { return kind == Kind::kObject; }
  bool is_array() const { return kind == Kind::kArray; }
  bool is_string() const { return kind == Kind::kString; }
  bool is_number() const { return kind == Kind::kNumber; }

  // kObject: the member named `key`, or nullptr.
  const JsonValue* Find(std::string_view key) const;

  // kNumber written as an integer (no fraction or exponent) that fits;
  // nullopt otherwise.
  std::optional<int64_t> AsInt64() const;
  std::optional<uint64_t> AsUint64() const;
  // Any kNumber; nullopt when out of double's range.
  std::optional<double> AsDouble() const;
};

struct JsonMember {
  std::string key;
  JsonValue value;
};

struct JsonLimits {
  uint64_t max_bytes = uint64_t{100} << 20;  // whole document
  uint32_t max_depth = 64;                   // nested arrays/objects
  uint64_t max_values = uint64_t{1} << 22;   // every value (~100 bytes of memory each)
};

absl::StatusOr<JsonValue> ParseJson(std::string_view text, const JsonLimits& limits = {});

// Strictly valid UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF.
bool IsValidUtf8(std::string_view bytes);

// `s` as a JSON string literal, quotes included. REQUIRES: IsValidUtf8(s).
std::string JsonQuote(std::string_view s);

}  // namespace weightgate::checkpoint

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_JSON_H_
