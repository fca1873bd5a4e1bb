// TorchScript: spec extraction and the smoke test. The only file here that
// includes the (slow to compile) TorchScript headers.
#include <ATen/CPUGeneratorImpl.h>
#include <torch/script.h>

#include <set>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/checkpoint/dtype.h"
#include "server/statedict/spec.h"
#include "server/statedict/torch_views.h"

namespace weightgate::statedict {
namespace {

namespace v1 = weightgate::v1;

// Seed of the smoke test's random inputs: fixed so a failure reproduces.
constexpr uint64_t kSmokeSeed = 20240607;

std::optional<checkpoint::DType> FromScalarType(at::ScalarType t) {
  using checkpoint::DType;
  switch (t) {
    case at::kDouble: return DType::kF64;
    case at::kFloat: return DType::kF32;
    case at::kHalf: return DType::kF16;
    case at::kBFloat16: return DType::kBF16;
    case at::kLong: return DType::kI64;
    case at::kInt: return DType::kI32;
    case at::kShort: return DType::kI16;
    case at::kChar: return DType::kI8;
    case at::kByte: return DType::kU8;
    case at::kBool: return DType::kBool;
    case at::kComplexFloat: return DType::kC64;
    case at::kComplexDouble: return DType::kC128;
    default: return std::nullopt;
  }
}

// Parameters, then buffers, of each module, then its children: the order
// nn.Module.state_dict() uses.
void StateDictSlots(const torch::jit::Module& module, const std::string& prefix,
                    std::vector<std::pair<std::string, at::Tensor>>* out) {
  for (const auto& p : module.named_parameters(/*recurse=*/false)) {
    out->emplace_back(prefix + p.name, p.value);
  }
  for (const auto& b : module.named_buffers(/*recurse=*/false)) {
    out->emplace_back(prefix + b.name, b.value);
  }
  for (const auto& child : module.named_children()) {
    StateDictSlots(child.value, prefix + child.name + ".", out);
  }
}

bool AllFinite(const c10::IValue& v, int depth = 0) {
  if (depth > 32) return true;
  if (v.isTensor()) {
    const at::Tensor& t = v.toTensor();
    if (!at::isFloatingType(t.scalar_type()) && !at::isComplexType(t.scalar_type())) return true;
    return at::isfinite(t).all().item<bool>();
  }
  if (v.isTuple()) {
    for (const c10::IValue& e : v.toTupleRef().elements()) {
      if (!AllFinite(e, depth + 1)) return false;
    }
    return true;
  }
  if (v.isList()) {
    for (const c10::IValue& e : v.toListRef()) {
      if (!AllFinite(e, depth + 1)) return false;
    }
    return true;
  }
  if (v.isGenericDict()) {
    for (const auto& e : v.toGenericDict()) {
      if (!AllFinite(e.value(), depth + 1)) return false;
    }
    return true;
  }
  return true;
}

}  // namespace

absl::StatusOr<v1::ModelSpec> SpecFromTorchScript(const std::string& path) {
  try {
    torch::jit::Module module = torch::jit::load(path, c10::Device(c10::kCPU));
    std::vector<std::pair<std::string, at::Tensor>> slots;
    StateDictSlots(module, "", &slots);
    if (slots.empty()) return absl::InvalidArgumentError("TorchScript module has no tensors");
    v1::ModelSpec spec;
    spec.set_source_format("torchscript");
    for (const auto& [name, tensor] : slots) {
      std::optional<checkpoint::DType> dtype = FromScalarType(tensor.scalar_type());
      if (!dtype.has_value()) {
        return absl::InvalidArgumentError(
            absl::StrCat("TorchScript tensor '", name, "' has an unsupported dtype"));
      }
      v1::TensorSpec* t = spec.add_tensors();
      t->set_name(name);
      t->set_dtype(std::string(checkpoint::DTypeName(*dtype)));
      t->mutable_shape()->Assign(tensor.sizes().begin(), tensor.sizes().end());
    }
    return spec;
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a loadable TorchScript archive: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a loadable TorchScript archive: ", e.what()));
  }
}

v1::SmokeTestResult RunSmokeTest(
    const std::string& archive_path, const v1::ModelSpec& spec,
    const std::function<absl::StatusOr<at::Tensor>(const std::string& name)>& weight) {
  v1::SmokeTestResult result;
  result.set_ran(true);
  try {
    torch::NoGradGuard no_grad;
    torch::jit::Module module = torch::jit::load(archive_path, c10::Device(c10::kCPU));
    module.eval();
    std::vector<std::pair<std::string, at::Tensor>> slots;
    StateDictSlots(module, "", &slots);
    std::set<std::string> module_names;
    for (const auto& slot : slots) module_names.insert(slot.first);
    std::vector<std::string> unexpected;
    for (const v1::TensorSpec& t : spec.tensors()) {
      if (!module_names.contains(t.name())) unexpected.push_back(t.name());
    }
    if (!unexpected.empty()) {
      result.set_error(
          absl::StrCat("strict load: module has no ", absl::StrJoin(unexpected, ", ")));
      return result;
    }
    for (auto& [name, slot] : slots) {
      absl::StatusOr<at::Tensor> w = weight(name);
      if (!w.ok()) {
        result.set_error(absl::StrCat("strict load: ", w.status().message()));
        return result;
      }
      if (w->sizes() != slot.sizes()) {
        result.set_error(absl::StrCat("strict load: '", name, "' has shape ", c10::str(w->sizes()),
                                      ", module expects ", c10::str(slot.sizes())));
        return result;
      }
      slot.copy_(*w);
    }
    at::Generator gen = at::detail::createCPUGenerator(kSmokeSeed);
    std::vector<c10::IValue> inputs;
    for (const v1::ExampleInput& in : spec.example_inputs()) {
      std::optional<checkpoint::DType> dtype =
          checkpoint::DTypeFromName(in.dtype().empty() ? "F32" : in.dtype());
      at::ScalarType st = ToScalarType(dtype.value_or(checkpoint::DType::kF32));
      std::vector<int64_t> shape(in.shape().begin(), in.shape().end());
      at::TensorOptions options = at::TensorOptions().dtype(st);
      if (at::isFloatingType(st) || at::isComplexType(st)) {
        inputs.emplace_back(at::randn(shape, gen, options));
      } else if (st == at::kBool) {
        inputs.emplace_back(at::randint(0, 2, shape, gen, options));
      } else {
        inputs.emplace_back(at::randint(0, 8, shape, gen, options));
      }
    }
    c10::IValue out = module.forward(inputs);
    result.set_outputs_finite(AllFinite(out));
    result.set_ok(result.outputs_finite());
    if (!result.outputs_finite()) result.set_error("forward produced NaN or Inf");
  } catch (const c10::Error& e) {
    result.set_error(e.what_without_backtrace());
  } catch (const std::exception& e) {
    result.set_error(e.what());
  }
  return result;
}

}  // namespace weightgate::statedict
