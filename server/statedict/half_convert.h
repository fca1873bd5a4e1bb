// Bulk float32 -> float16 conversion for the commonest normalisation (an fp32
// checkpoint for an fp16 model). libtorch 1.13 converts to Half one element
// at a time in software; with the CPU's F16C instructions the conversion runs
// at memory speed. Rounding is IEEE round-to-nearest-even, as torch's, so
// every finite value converts to the same bits torch.Tensor.half() gives.
#ifndef WEIGHTGATE_SERVER_STATEDICT_HALF_CONVERT_H_
#define WEIGHTGATE_SERVER_STATEDICT_HALF_CONVERT_H_

#include <cstddef>
#include <cstdint>

namespace weightgate::statedict {

// True when this CPU has F16C (and AVX); without it callers use libtorch.
bool HasFastHalfConvert();

// Converts n floats at `in` into n halfs (IEEE binary16 bits) at `out`.
// REQUIRES: HasFastHalfConvert(). `in` and `out` need no alignment.
void FloatToHalf(const float* in, uint16_t* out, size_t n);

}  // namespace weightgate::statedict

#endif  // WEIGHTGATE_SERVER_STATEDICT_HALF_CONVERT_H_
