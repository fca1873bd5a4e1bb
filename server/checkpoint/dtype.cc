#include "server/checkpoint/dtype.h"

#include <array>
#include <cctype>
#include <string>

namespace weightgate::checkpoint {
namespace {

struct DTypeInfo {
  DType dtype;
  size_t item_size;
  std::string_view name;
  std::string_view torch_name;
  std::string_view storage_class;
};

constexpr std::array<DTypeInfo, 12> kDTypes = {{
    {DType::kF64, 8, "F64", "float64", "DoubleStorage"},
    {DType::kF32, 4, "F32", "float32", "FloatStorage"},
    {DType::kF16, 2, "F16", "float16", "HalfStorage"},
    {DType::kBF16, 2, "BF16", "bfloat16", "BFloat16Storage"},
    {DType::kI64, 8, "I64", "int64", "LongStorage"},
    {DType::kI32, 4, "I32", "int32", "IntStorage"},
    {DType::kI16, 2, "I16", "int16", "ShortStorage"},
    {DType::kI8, 1, "I8", "int8", "CharStorage"},
    {DType::kU8, 1, "U8", "uint8", "ByteStorage"},
    {DType::kBool, 1, "BOOL", "bool", "BoolStorage"},
    {DType::kC64, 8, "C64", "complex64", "ComplexFloatStorage"},
    {DType::kC128, 16, "C128", "complex128", "ComplexDoubleStorage"},
}};

const DTypeInfo& Info(DType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return info;
  }
  return kDTypes[1];  // unreachable: the enum is closed
}

}  // namespace

size_t ItemSize(DType dtype) { return Info(dtype).item_size; }

std::string_view DTypeName(DType dtype) { return Info(dtype).name; }

std::string_view TorchDTypeName(DType dtype) { return Info(dtype).torch_name; }

std::optional<DType> DTypeFromName(std::string_view name) {
  std::string upper(name);
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (const DTypeInfo& info : kDTypes) {
    if (info.name == upper) return info.dtype;
  }
  return std::nullopt;
}

std::optional<DType> DTypeFromTorchStorage(std::string_view class_name) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.storage_class == class_name) return info.dtype;
  }
  return std::nullopt;
}

std::optional<DType> DTypeFromTorchName(std::string_view name) {
  if (name.substr(0, 6) == "torch.") name.remove_prefix(6);
  struct Alias {
    std::string_view name;
    DType dtype;
  };
  static constexpr Alias kAliases[] = {
      {"double", DType::kF64}, {"float", DType::kF32},    {"half", DType::kF16},
      {"long", DType::kI64},   {"int", DType::kI32},      {"short", DType::kI16},
      {"cfloat", DType::kC64}, {"cdouble", DType::kC128},
  };
  for (const DTypeInfo& info : kDTypes) {
    if (info.torch_name == name) return info.dtype;
  }
  for (const Alias& alias : kAliases) {
    if (alias.name == name) return alias.dtype;
  }
  return std::nullopt;
}

}  // namespace weightgate::checkpoint
