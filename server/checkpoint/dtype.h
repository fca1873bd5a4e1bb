// DType is the closed set of element types a checkpoint tensor may have.
// Names follow safetensors ("F32", "BF16", ...), the canonical stored form;
// torch names ("torch.float32", "FloatStorage") map onto the same set.
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_DTYPE_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_DTYPE_H_

#include <cstddef>
#include <optional>
#include <string_view>

namespace weightgate::checkpoint {

enum class DType {
  kF64,
  kF32,
  kF16,
  kBF16,
  kI64,
  kI32,
  kI16,
  kI8,
  kU8,
  kBool,
  kC64,
  kC128,
};

// Bytes per element.
size_t ItemSize(DType dtype);

// Safetensors name: "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8",
// "U8", "BOOL", "C64", "C128".
std::string_view DTypeName(DType dtype);

// Inverse of DTypeName; also accepts lower case. nullopt for unknown names.
std::optional<DType> DTypeFromName(std::string_view name);

// torch storage class name ("FloatStorage", "HalfStorage", "BFloat16Storage",
// ...) to dtype; nullopt for unknown or quantized storages.
std::optional<DType> DTypeFromTorchStorage(std::string_view class_name);

// torch dtype attribute name ("float32", "float", "half", "bfloat16",
// "int64", "long", "bool", "complex64", "cfloat", ...) to dtype.
std::optional<DType> DTypeFromTorchName(std::string_view name);

// "float32", "float16", ... as torch prints them (without "torch.").
std::string_view TorchDTypeName(DType dtype);

}  // namespace weightgate::checkpoint

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_DTYPE_H_
