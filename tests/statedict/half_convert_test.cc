// FloatToHalf against libtorch's own float -> Half conversion: the same bits
// for every non-NaN input (rounding ties, subnormals, overflow to Inf), NaN
// stays NaN.
#include "server/statedict/half_convert.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace weightgate::statedict {
namespace {

std::vector<float> Inputs() {
  std::vector<float> v = {0.0f,
                          -0.0f,
                          1.0f,
                          -1.0f,
                          65504.0f,
                          65519.99f,
                          65520.0f,
                          -65520.0f,
                          1e6f,
                          -1e30f,
                          6.1e-5f,
                          5.96e-8f,
                          2.98e-8f,
                          2.99e-8f,
                          1e-10f,
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::denorm_min()};
  // Exact ties between two halfs: 1 + k/2048 for odd k rounds to even.
  for (int k = 1; k < 64; k += 2) v.push_back(1.0f + k / 2048.0f);
  std::mt19937 gen(7);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 100000; ++i) {
    uint32_t b = bits(gen);
    float f;
    std::memcpy(&f, &b, sizeof f);
    v.push_back(f);
  }
  std::normal_distribution<float> normal(0.0f, 0.05f);
  for (int i = 0; i < 100003; ++i) v.push_back(normal(gen));  // odd length: tail path
  return v;
}

TEST(HalfConvertTest, MatchesLibtorchBitForBit) {
  if (!HasFastHalfConvert()) GTEST_SKIP() << "no F16C on this CPU";
  std::vector<float> in = Inputs();
  std::vector<uint16_t> out(in.size());
  FloatToHalf(in.data(), out.data(), in.size());
  at::Tensor ref =
      at::from_blob(in.data(), {static_cast<int64_t>(in.size())}, at::kFloat).to(at::kHalf);
  const uint16_t* ref_bits = static_cast<const uint16_t*>(ref.data_ptr());
  size_t mismatches = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    if (std::isnan(in[i])) {
      EXPECT_EQ(out[i] & 0x7c00, 0x7c00) << i;  // exponent all ones
      EXPECT_NE(out[i] & 0x03ff, 0) << i;       // NaN, not Inf
      continue;
    }
    if (out[i] != ref_bits[i] && ++mismatches < 10) {
      ADD_FAILURE() << "input " << in[i] << ": " << std::hex << out[i] << " vs torch "
                    << ref_bits[i];
    }
  }
  EXPECT_EQ(mismatches, 0u);
}

TEST(HalfConvertTest, ShortInputs) {
  if (!HasFastHalfConvert()) GTEST_SKIP() << "no F16C on this CPU";
  for (size_t n = 0; n < 20; ++n) {
    std::vector<float> in(n);
    for (size_t i = 0; i < n; ++i) in[i] = 0.5f * static_cast<float>(i);
    std::vector<uint16_t> out(n + 1, 0xabcd);
    FloatToHalf(in.data(), out.data(), n);
    for (size_t i = 0; i < n; ++i) {
      at::Tensor h = at::scalar_tensor(in[i], at::kFloat).to(at::kHalf);
      EXPECT_EQ(out[i], *static_cast<const uint16_t*>(h.data_ptr())) << n << " " << i;
    }
    EXPECT_EQ(out[n], 0xabcd) << "wrote past the end for n=" << n;
  }
}

}  // namespace
}  // namespace weightgate::statedict
