#include "server/checkpoint/pickle_literals.h"

#include <vector>

#include "absl/strings/ascii.h"
#include "common/str_util.h"

namespace weightgate::checkpoint::pickle_internal {

using common::AbslView;
using common::Cat;
using common::StdView;

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool Utf8ToLatin1(std::string_view s, std::string* out) {
  out->clear();
  out->reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      out->push_back(static_cast<char>(c));
      ++i;
    } else if ((c & 0xE0) == 0xC0 && i + 1 < s.size()) {
      uint32_t cp = ((c & 0x1F) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3F);
      if (cp > 0xFF) return false;
      out->push_back(static_cast<char>(cp));
      i += 2;
    } else {
      return false;
    }
  }
  return true;
}

std::string DecimalToTwosComplement(std::string_view digits, bool negative) {
  std::vector<uint32_t> limbs;  // little-endian base 2^32 magnitude
  for (char ch : digits) {
    uint64_t carry = static_cast<uint64_t>(ch - '0');
    for (uint32_t& limb : limbs) {
      uint64_t v = uint64_t{limb} * 10 + carry;
      limb = static_cast<uint32_t>(v);
      carry = v >> 32;
    }
    if (carry != 0) limbs.push_back(static_cast<uint32_t>(carry));
  }
  std::string bytes;
  for (uint32_t limb : limbs) {
    for (int k = 0; k < 4; ++k) bytes.push_back(static_cast<char>((limb >> (8 * k)) & 0xFF));
  }
  while (!bytes.empty() && bytes.back() == 0) bytes.pop_back();
  if (negative && !bytes.empty()) {
    // Two's complement: invert and add one.
    bool carry = true;
    for (char& b : bytes) {
      unsigned v = static_cast<unsigned char>(~static_cast<unsigned char>(b));
      if (carry) {
        v += 1;
        carry = v > 0xFF;
      }
      b = static_cast<char>(v & 0xFF);
    }
    if (!(static_cast<unsigned char>(bytes.back()) & 0x80))
      bytes.push_back(static_cast<char>(0xFF));
    // Minimal form: drop 0xFF bytes whose removal keeps the sign.
    while (bytes.size() > 1 && static_cast<unsigned char>(bytes.back()) == 0xFF &&
           (static_cast<unsigned char>(bytes[bytes.size() - 2]) & 0x80)) {
      bytes.pop_back();
    }
  } else if (!bytes.empty() && (static_cast<unsigned char>(bytes.back()) & 0x80)) {
    bytes.push_back('\0');
  }
  return bytes;
}

bool TwosComplementToInt64(std::string_view bytes, int64_t* out) {
  if (bytes.empty()) {
    *out = 0;
    return true;
  }
  if (bytes.size() > 8) return false;
  uint64_t v = 0;
  for (size_t k = 0; k < bytes.size(); ++k) {
    v |= uint64_t{static_cast<unsigned char>(bytes[k])} << (8 * k);
  }
  if (bytes.size() < 8 && (static_cast<unsigned char>(bytes.back()) & 0x80)) {
    v |= ~uint64_t{0} << (8 * bytes.size());
  }
  *out = static_cast<int64_t>(v);
  return true;
}

std::string_view TrimTwosComplement(std::string_view bytes) {
  while (bytes.size() > 1) {
    unsigned char last = static_cast<unsigned char>(bytes.back());
    unsigned char prev = static_cast<unsigned char>(bytes[bytes.size() - 2]);
    if ((last == 0x00 && !(prev & 0x80)) || (last == 0xFF && (prev & 0x80))) {
      bytes.remove_suffix(1);
    } else {
      break;
    }
  }
  if (bytes.size() == 1 && bytes[0] == 0) bytes.remove_suffix(1);
  return bytes;
}

bool DecimalLiteral(std::string_view text, bool long_suffix, std::string* twos) {
  if (long_suffix && !text.empty() && (text.back() == 'L' || text.back() == 'l')) {
    text.remove_suffix(1);
  }
  text = StdView(absl::StripAsciiWhitespace(AbslView(text)));
  bool negative = false;
  if (!text.empty() && (text[0] == '-' || text[0] == '+')) {
    negative = text[0] == '-';
    text.remove_prefix(1);
  }
  if (text.empty() || text.size() > kMaxDecimalDigits) return false;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
  }
  *twos = DecimalToTwosComplement(text, negative);
  return true;
}

absl::Status DecodeRawUnicodeEscape(std::string_view text, std::string* out) {
  out->clear();
  out->reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '\\' && i + 1 < text.size() && (text[i + 1] == 'u' || text[i + 1] == 'U')) {
      size_t n = text[i + 1] == 'u' ? 4 : 8;
      if (n > text.size() - (i + 2)) return absl::InvalidArgumentError("bad \\u escape");
      uint32_t cp = 0;
      for (size_t k = 0; k < n; ++k) {
        char h = text[i + 2 + k];
        int d = (h >= '0' && h <= '9')   ? h - '0'
                : (h >= 'a' && h <= 'f') ? h - 'a' + 10
                : (h >= 'A' && h <= 'F') ? h - 'A' + 10
                                         : -1;
        if (d < 0) return absl::InvalidArgumentError("bad \\u escape");
        cp = (cp << 4) | static_cast<uint32_t>(d);
      }
      if (cp > 0x10FFFF) return absl::InvalidArgumentError("bad \\U escape");
      AppendUtf8(cp, out);
      i += 2 + n;
    } else {
      AppendUtf8(c, out);
      ++i;
    }
  }
  return absl::OkStatus();
}

absl::Status DecodePy2String(std::string_view text, std::string* out) {
  if (text.size() < 2 || (text[0] != '\'' && text[0] != '"') || text.back() != text[0]) {
    return absl::InvalidArgumentError("STRING not quoted");
  }
  text = text.substr(1, text.size() - 2);
  out->clear();
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c != '\\') {
      out->push_back(c);
      continue;
    }
    if (++i >= text.size()) return absl::InvalidArgumentError("bad STRING escape");
    char e = text[i];
    switch (e) {
      case 'n': out->push_back('\n'); break;
      case 't': out->push_back('\t'); break;
      case 'r': out->push_back('\r'); break;
      case 'a': out->push_back('\a'); break;
      case 'b': out->push_back('\b'); break;
      case 'f': out->push_back('\f'); break;
      case 'v': out->push_back('\v'); break;
      case '\\': out->push_back('\\'); break;
      case '\'': out->push_back('\''); break;
      case '"': out->push_back('"'); break;
      case 'x': {
        if (2 > text.size() - (i + 1)) return absl::InvalidArgumentError("bad STRING escape");
        int v = 0;
        for (int k = 1; k <= 2; ++k) {
          char h = text[i + k];
          int d = (h >= '0' && h <= '9')   ? h - '0'
                  : (h >= 'a' && h <= 'f') ? h - 'a' + 10
                  : (h >= 'A' && h <= 'F') ? h - 'A' + 10
                                           : -1;
          if (d < 0) return absl::InvalidArgumentError("bad STRING escape");
          v = v * 16 + d;
        }
        out->push_back(static_cast<char>(v));
        i += 2;
        break;
      }
      default:
        if (e >= '0' && e <= '7') {
          int v = 0;
          int k = 0;
          while (k < 3 && i < text.size() && text[i] >= '0' && text[i] <= '7') {
            v = v * 8 + (text[i] - '0');
            ++i;
            ++k;
          }
          --i;
          out->push_back(static_cast<char>(v & 0xFF));
        } else {
          out->push_back('\\');
          out->push_back(e);
        }
    }
  }
  return absl::OkStatus();
}

}  // namespace weightgate::checkpoint::pickle_internal
