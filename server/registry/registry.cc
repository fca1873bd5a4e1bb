// Registry: model metadata operations. The checkpoint paths (RegisterModel,
// Validate, NormalizeTo) live in registry_validate.cc.
#include "server/registry/registry.h"

#include "absl/status/status.h"

namespace weightgate::registry {

absl::StatusOr<std::unique_ptr<Registry>> Registry::Create(const Options& options) {
  if (options.store == nullptr) return absl::InvalidArgumentError("Registry needs a store");
  return std::unique_ptr<Registry>(new Registry(options));
}

absl::StatusOr<weightgate::v1::Model> Registry::GetModel(const std::string& model_id) const {
  return options_.store->GetModel(model_id);
}

absl::StatusOr<std::vector<weightgate::v1::Model>> Registry::ListModels() const {
  return options_.store->ListModels();
}

absl::Status Registry::DeleteModel(const std::string& model_id) {
  return options_.store->DeleteModel(model_id);
}

}  // namespace weightgate::registry
