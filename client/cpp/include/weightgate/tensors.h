// Client::FetchTensors with the ATen types it returns: include this header
// (and link weightgate::client_torch) to fetch a model as at::Tensor views.
//
//   weightgate::FetchInfo info;
//   absl::StatusOr<weightgate::TensorMap> tensors = client->FetchTensors("resnet50@prod", &info);
//   at::Tensor w = tensors->at("fc.weight");  // a view of the fetched blob
#ifndef WEIGHTGATE_TENSORS_H_
#define WEIGHTGATE_TENSORS_H_

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>

#include "weightgate/client.h"

namespace weightgate {

// The at::ScalarType of a safetensors dtype name ("F32", "BF16", ...).
std::optional<at::ScalarType> ScalarTypeOf(std::string_view dtype);

}  // namespace weightgate

#endif  // WEIGHTGATE_TENSORS_H_
