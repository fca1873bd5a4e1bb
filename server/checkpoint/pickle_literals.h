// Decoding of Python literals as pickle writes them: integers in decimal
// text and two's-complement bytes, protocol-0 unicode (raw-unicode-escape)
// and Python 2 str reprs, UTF-8 <-> latin-1. Pure functions over bounded
// input; errors are short reasons the machine prefixes with its offset.
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_PICKLE_LITERALS_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_PICKLE_LITERALS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace weightgate::checkpoint::pickle_internal {

// Python refuses to convert integers longer than this many decimal digits
// (sys.int_info.default_max_str_digits); the quadratic conversion must not
// run on more either.
inline constexpr size_t kMaxDecimalDigits = 4300;

// Appends a UTF-8 encoding of `cp` (surrogates pass through, as Python's
// "surrogatepass" does).
void AppendUtf8(uint32_t cp, std::string* out);

// Decodes UTF-8 code points of `s` into latin-1 bytes; false when a code
// point does not fit a byte or the text is malformed.
bool Utf8ToLatin1(std::string_view s, std::string* out);

// Decimal text -> minimal two's-complement little-endian bytes (pickle's
// encode_long). `digits` holds only [0-9]+.
std::string DecimalToTwosComplement(std::string_view digits, bool negative);

// Two's-complement little-endian -> int64 when it fits.
bool TwosComplementToInt64(std::string_view bytes, int64_t* out);

// Minimal two's-complement form (what CPython's LONG1 writes).
std::string_view TrimTwosComplement(std::string_view bytes);

// The INT / LONG line (optional sign, digits, "L" suffix when `long_suffix`)
// as two's-complement bytes; false when it is not an integer literal or has
// more than kMaxDecimalDigits digits.
bool DecimalLiteral(std::string_view text, bool long_suffix, std::string* twos);

// Protocol 0 UNICODE text (raw-unicode-escape) -> UTF-8.
absl::Status DecodeRawUnicodeEscape(std::string_view text, std::string* out);

// A Python 2 str literal as repr() writes it: '...' or "..." with escapes.
absl::Status DecodePy2String(std::string_view text, std::string* out);

}  // namespace weightgate::checkpoint::pickle_internal

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_PICKLE_LITERALS_H_
