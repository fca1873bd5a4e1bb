#include "server/checkpoint/json.h"

#include <algorithm>
#include <charconv>
#include <system_error>

#include "absl/status/status.h"

namespace weightgate::checkpoint {
namespace {

constexpr uint32_t kMaxCodePoint = 0x10ffff;

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Length of the valid UTF-8 sequence starting at p[0] (a byte >= 0x80) among
// `avail` bytes, or 0 when it is not one.
size_t Utf8SequenceLength(const unsigned char* p, size_t avail) {
  unsigned char c = p[0];
  size_t n;
  uint32_t cp;
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
    cp = c & 0x1f;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    cp = c & 0x0f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;  // continuation byte, overlong lead (0xc0, 0xc1) or > U+10FFFF lead
  }
  if (n > avail) return 0;
  for (size_t i = 1; i < n; ++i) {
    if ((p[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (p[i] & 0x3f);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000)) return 0;  // overlong
  if (cp >= 0xd800 && cp <= 0xdfff) return 0;                        // surrogate
  if (cp > kMaxCodePoint) return 0;
  return n;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xc0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xe0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else {
    out->push_back(static_cast<char>(0xf0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  }
}

class Parser final {
 public:
  Parser(std::string_view text, const JsonLimits& limits) : text_(text), limits_(limits) {}

  absl::Status Parse(JsonValue* out) {
    if (text_.size() > limits_.max_bytes) return Error("document too large");
    SkipSpace();
    if (absl::Status s = ParseValue(out, 0); !s.ok()) return s;
    SkipSpace();
    if (pos_ != text_.size()) return Error("trailing characters");
    return absl::OkStatus();
  }

 private:
  absl::Status Error(std::string_view reason) const {
    std::string message = "json: ";
    message.append(reason);
    message += " at offset ";
    message += std::to_string(pos_);
    return absl::InvalidArgumentError(message);
  }

  bool AtEnd() const { return pos_ >= text_.size(); }
  char Peek() const { return text_[pos_]; }
  void SkipSpace() {
    while (!AtEnd() && IsSpace(Peek())) ++pos_;
  }

  bool Consume(std::string_view literal) {
    if (text_.size() - pos_ < literal.size() || text_.substr(pos_, literal.size()) != literal) {
      return false;
    }
    pos_ += literal.size();
    return true;
  }

  absl::Status CountValue() {
    if (++values_ > limits_.max_values) return Error("too many values");
    return absl::OkStatus();
  }

  absl::Status ParseValue(JsonValue* out, uint32_t depth) {
    if (absl::Status s = CountValue(); !s.ok()) return s;
    if (AtEnd()) return Error("unexpected end of input");
    switch (Peek()) {
      case '{': return ParseObject(out, depth);
      case '[': return ParseArray(out, depth);
      case '"': out->kind = JsonValue::Kind::kString; return ParseString(&out->text);
      case 't':
        if (!Consume("true")) return Error("invalid literal");
        out->kind = JsonValue::Kind::kBool;
        out->boolean = true;
        return absl::OkStatus();
      case 'f':
        if (!Consume("false")) return Error("invalid literal");
        out->kind = JsonValue::Kind::kBool;
        out->boolean = false;
        return absl::OkStatus();
      case 'n':
        if (!Consume("null")) return Error("invalid literal");
        out->kind = JsonValue::Kind::kNull;
        return absl::OkStatus();
      default:
        if (Peek() == '-' || IsDigit(Peek())) return ParseNumber(out);
        return Error("unexpected character");
    }
  }

  absl::Status ParseObject(JsonValue* out, uint32_t depth) {
    if (depth >= limits_.max_depth) return Error("nesting too deep");
    out->kind = JsonValue::Kind::kObject;
    ++pos_;  // '{'
    SkipSpace();
    if (!AtEnd() && Peek() == '}') {
      ++pos_;
      return absl::OkStatus();
    }
    while (true) {
      SkipSpace();
      if (AtEnd() || Peek() != '"') return Error("expected object key");
      std::string key;
      if (absl::Status s = ParseString(&key); !s.ok()) return s;
      SkipSpace();
      if (AtEnd() || Peek() != ':') return Error("expected ':'");
      ++pos_;
      SkipSpace();
      out->members.push_back(JsonMember{std::move(key), JsonValue()});
      if (absl::Status s = ParseValue(&out->members.back().value, depth + 1); !s.ok()) return s;
      SkipSpace();
      if (AtEnd()) return Error("unterminated object");
      if (Peek() == ',') {
        ++pos_;
        continue;
      }
      if (Peek() != '}') return Error("expected ',' or '}'");
      ++pos_;
      break;
    }
    if (out->members.size() > 1) {
      std::vector<std::string_view> keys;
      keys.reserve(out->members.size());
      for (const auto& m : out->members) keys.push_back(m.key);
      std::sort(keys.begin(), keys.end());
      if (std::adjacent_find(keys.begin(), keys.end()) != keys.end()) {
        return Error("duplicate object key");
      }
    }
    return absl::OkStatus();
  }

  absl::Status ParseArray(JsonValue* out, uint32_t depth) {
    if (depth >= limits_.max_depth) return Error("nesting too deep");
    out->kind = JsonValue::Kind::kArray;
    ++pos_;  // '['
    SkipSpace();
    if (!AtEnd() && Peek() == ']') {
      ++pos_;
      return absl::OkStatus();
    }
    while (true) {
      SkipSpace();
      out->items.emplace_back();
      if (absl::Status s = ParseValue(&out->items.back(), depth + 1); !s.ok()) return s;
      SkipSpace();
      if (AtEnd()) return Error("unterminated array");
      if (Peek() == ',') {
        ++pos_;
        continue;
      }
      if (Peek() != ']') return Error("expected ',' or ']'");
      ++pos_;
      return absl::OkStatus();
    }
  }

  absl::StatusOr<uint32_t> ParseHex4() {
    if (text_.size() - pos_ < 4) return Error("truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      int h = HexValue(text_[pos_ + i]);
      if (h < 0) return Error("bad \\u escape");
      v = (v << 4) | static_cast<uint32_t>(h);
    }
    pos_ += 4;
    return v;
  }

  absl::Status ParseString(std::string* out) {
    ++pos_;  // '"'
    while (true) {
      if (AtEnd()) return Error("unterminated string");
      unsigned char c = static_cast<unsigned char>(Peek());
      if (c == '"') {
        ++pos_;
        return absl::OkStatus();
      }
      if (c < 0x20) return Error("control character in string");
      if (c >= 0x80) {
        size_t n = Utf8SequenceLength(reinterpret_cast<const unsigned char*>(text_.data() + pos_),
                                      text_.size() - pos_);
        if (n == 0) return Error("invalid UTF-8");
        out->append(text_.data() + pos_, n);
        pos_ += n;
        continue;
      }
      if (c != '\\') {
        out->push_back(static_cast<char>(c));
        ++pos_;
        continue;
      }
      ++pos_;
      if (AtEnd()) return Error("unterminated string");
      char e = Peek();
      ++pos_;
      switch (e) {
        case '"': out->push_back('"'); break;
        case '\\': out->push_back('\\'); break;
        case '/': out->push_back('/'); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'u': {
          absl::StatusOr<uint32_t> cp = ParseHex4();
          if (!cp.ok()) return cp.status();
          if (*cp >= 0xdc00 && *cp <= 0xdfff) return Error("lone surrogate escape");
          if (*cp >= 0xd800 && *cp <= 0xdbff) {
            if (!Consume("\\u")) return Error("lone surrogate escape");
            absl::StatusOr<uint32_t> low = ParseHex4();
            if (!low.ok()) return low.status();
            if (*low < 0xdc00 || *low > 0xdfff) return Error("lone surrogate escape");
            *cp = 0x10000 + ((*cp - 0xd800) << 10) + (*low - 0xdc00);
          }
          AppendUtf8(*cp, out);
          break;
        }
        default: return Error("bad escape");
      }
    }
  }

  absl::Status ParseNumber(JsonValue* out) {
    size_t start = pos_;
    if (Peek() == '-') ++pos_;
    if (AtEnd() || !IsDigit(Peek())) return Error("bad number");
    if (Peek() == '0') {
      ++pos_;
      if (!AtEnd() && IsDigit(Peek())) return Error("leading zero");
    } else {
      while (!AtEnd() && IsDigit(Peek())) ++pos_;
    }
    if (!AtEnd() && Peek() == '.') {
      ++pos_;
      if (AtEnd() || !IsDigit(Peek())) return Error("bad fraction");
      while (!AtEnd() && IsDigit(Peek())) ++pos_;
    }
    if (!AtEnd() && (Peek() == 'e' || Peek() == 'E')) {
      ++pos_;
      if (!AtEnd() && (Peek() == '+' || Peek() == '-')) ++pos_;
      if (AtEnd() || !IsDigit(Peek())) return Error("bad exponent");
      while (!AtEnd() && IsDigit(Peek())) ++pos_;
    }
    out->kind = JsonValue::Kind::kNumber;
    out->text = std::string(text_.substr(start, pos_ - start));
    return absl::OkStatus();
  }

  std::string_view text_;
  const JsonLimits& limits_;
  size_t pos_ = 0;
  uint64_t values_ = 0;
};

bool IsIntegerLiteral(std::string_view s) {
  return !s.empty() && s.find_first_of(".eE") == std::string_view::npos;
}

}  // namespace

const JsonValue* JsonValue::Find(std::string_view key) const {
  for (const auto& m : members) {
    if (m.key == key) return &m.value;
  }
  return nullptr;
}

std::optional<int64_t> JsonValue::AsInt64() const {
  if (kind != Kind::kNumber || !IsIntegerLiteral(text)) return std::nullopt;
  int64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return v;
}

std::optional<uint64_t> JsonValue::AsUint64() const {
  if (kind != Kind::kNumber || !IsIntegerLiteral(text) || text[0] == '-') return std::nullopt;
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return v;
}

std::optional<double> JsonValue::AsDouble() const {
  if (kind != Kind::kNumber) return std::nullopt;
  double v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return v;
}

absl::StatusOr<JsonValue> ParseJson(std::string_view text, const JsonLimits& limits) {
  JsonValue value;
  Parser parser(text, limits);
  if (absl::Status s = parser.Parse(&value); !s.ok()) return s;
  return value;
}

bool IsValidUtf8(std::string_view bytes) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t i = 0;
  while (i < bytes.size()) {
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    size_t n = Utf8SequenceLength(p + i, bytes.size() - i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string JsonQuote(std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('"');
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out.push_back(kHex[c >> 4]);
          out.push_back(kHex[c & 0xf]);
        } else {
          out.push_back(ch);
        }
    }
  }
  out.push_back('"');
  return out;
}

}  // namespace weightgate::checkpoint
