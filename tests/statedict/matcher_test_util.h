// Hand-built checkpoint trees and a small conv/bn/fc spec for the matcher
// tests (matcher_test.cc, match_choice_test.cc). No files, no torch.
#ifndef WEIGHTGATE_TESTS_STATEDICT_MATCHER_TEST_UTIL_H_
#define WEIGHTGATE_TESTS_STATEDICT_MATCHER_TEST_UTIL_H_

#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "server/checkpoint/value.h"
#include "server/statedict/matcher.h"

namespace weightgate::statedict::matcher_testing {

using checkpoint::DType;
using checkpoint::Value;
namespace v1 = weightgate::v1;

class Tree {
 public:
  // A contiguous tensor with its own storage (or `storage` when given).
  const Value* T(std::vector<int64_t> shape, DType dtype = DType::kF32, int storage = -1,
                 int64_t offset = 0) {
    Value* v = arena_.New(Value::Kind::kTensor);
    v->tensor.dtype = dtype;
    v->tensor.shape = shape;
    v->tensor.strides.assign(shape.size(), 1);
    for (int d = static_cast<int>(shape.size()) - 2; d >= 0; --d) {
      v->tensor.strides[d] = v->tensor.strides[d + 1] * shape[d + 1];
    }
    v->tensor.storage_offset = offset;
    v->tensor.storage_index = storage >= 0 ? storage : next_storage_++;
    return v;
  }
  const Value* Int(int64_t i) {
    Value* v = arena_.New(Value::Kind::kInt);
    v->i = i;
    return v;
  }
  const Value* Dict(std::vector<std::pair<std::string, const Value*>> items) {
    Value* v = arena_.New(Value::Kind::kDict);
    for (auto& [k, val] : items) {
      Value* key = arena_.New(Value::Kind::kString);
      key->str = k;
      v->items.push_back(key);
      v->items.push_back(val);
    }
    return v;
  }

 private:
  checkpoint::ValueArena arena_;
  int next_storage_ = 1000;
};

// conv + bn + fc, like the fixture model.
inline v1::ModelSpec SmallSpec(const std::string& prefix = "") {
  v1::ModelSpec spec;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, const char* dtype = "F32") {
    v1::TensorSpec* t = spec.add_tensors();
    t->set_name(prefix + name);
    t->set_dtype(dtype);
    t->mutable_shape()->Assign(shape.begin(), shape.end());
  };
  add("conv.weight", {8, 3, 3, 3});
  add("conv.bias", {8});
  add("bn.weight", {8});
  add("bn.bias", {8});
  add("bn.running_mean", {8});
  add("bn.running_var", {8});
  add("bn.num_batches_tracked", {}, "I64");
  add("fc.weight", {10, 8});
  add("fc.bias", {10});
  return spec;
}

// A state_dict for SmallSpec with every key prefixed by `prefix`.
inline std::vector<std::pair<std::string, const Value*>> SmallStateDict(Tree& t,
                                                                        const std::string& prefix,
                                                                        bool with_nbt = true) {
  std::vector<std::pair<std::string, const Value*>> items = {
      {prefix + "conv.weight", t.T({8, 3, 3, 3})},
      {prefix + "conv.bias", t.T({8})},
      {prefix + "bn.weight", t.T({8})},
      {prefix + "bn.bias", t.T({8})},
      {prefix + "bn.running_mean", t.T({8})},
      {prefix + "bn.running_var", t.T({8})},
      {prefix + "fc.weight", t.T({10, 8})},
      {prefix + "fc.bias", t.T({10})},
  };
  if (with_nbt) {
    items.insert(items.begin() + 6, {prefix + "bn.num_batches_tracked", t.T({}, DType::kI64)});
  }
  return items;
}

struct Outcome {
  MatchResult match;
  v1::ValidationReport report;
};

inline Outcome Match(const Value* root, const v1::ModelSpec& spec,
                     const v1::NormalizationPolicy& policy = {}, const MatchOptions& options = {}) {
  Outcome o;
  absl::StatusOr<MatchResult> m = MatchStateDict(root, spec, policy, &o.report, options);
  EXPECT_TRUE(m.ok()) << m.status();
  if (m.ok()) o.match = std::move(*m);
  o.report.set_verdict(VerdictOf(o.report));
  return o;
}

inline std::vector<std::string> FixKinds(const v1::ValidationReport& r) {
  std::vector<std::string> kinds;
  for (const v1::Fix& f : r.fixes()) kinds.push_back(f.kind());
  return kinds;
}

inline std::vector<std::string> Names(const MatchResult& m) {
  std::vector<std::string> names;
  for (const MatchedTensor& t : m.tensors) names.push_back(t.name);
  return names;
}

inline std::vector<std::string> SpecNames(const v1::ModelSpec& spec) {
  std::vector<std::string> names;
  for (const v1::TensorSpec& t : spec.tensors()) names.push_back(t.name());
  return names;
}
inline std::vector<std::string> Reasons(const v1::ValidationReport& r) {
  return std::vector<std::string>(r.reasons().begin(), r.reasons().end());
}

inline std::vector<std::string> Flags(const v1::ValidationReport& r) {
  std::vector<std::string> flags;
  for (const v1::Candidate& c : r.alternatives()) flags.push_back(c.select_flag());
  return flags;
}

inline std::vector<std::pair<std::string, const Value*>> Concat(
    std::vector<std::pair<std::string, const Value*>> a,
    const std::vector<std::pair<std::string, const Value*>>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace weightgate::statedict::matcher_testing

#endif  // WEIGHTGATE_TESTS_STATEDICT_MATCHER_TEST_UTIL_H_
