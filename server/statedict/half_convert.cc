#include "server/statedict/half_convert.h"

#include <immintrin.h>

namespace weightgate::statedict {

bool HasFastHalfConvert() {
  static const bool has = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
  return has;
}

__attribute__((target("avx,f16c"))) void FloatToHalf(const float* in, uint16_t* out, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(in + i);
    __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), h);
  }
  if (i < n) {
    float tail_in[8] = {};
    uint16_t tail_out[8];
    for (size_t k = 0; i + k < n; ++k) tail_in[k] = in[i + k];
    __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(tail_in), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(tail_out), h);
    for (size_t k = 0; i + k < n; ++k) out[i + k] = tail_out[k];
  }
}

}  // namespace weightgate::statedict
