// Recognises an upload that already is the canonical stored form of a
// model's weights: the safetensors file the normaliser writes for a VALID
// checkpoint (spec order, spec dtypes and shapes, weightgate's metadata,
// tensors back to back, each spec tie stored once with a tie record). Such an upload, once
// validation finds it VALID with no fixes, can be committed as it is: the normaliser would rewrite
// the same bytes.
#ifndef WEIGHTGATE_SERVER_REGISTRY_CANONICAL_H_
#define WEIGHTGATE_SERVER_REGISTRY_CANONICAL_H_

#include <string>

#include "weightgate/v1/types.pb.h"

namespace weightgate::registry {

// True when the file at `path` has exactly the canonical header for `spec`
// and exactly the data bytes that header declares. Reads only the header.
bool IsCanonicalSafetensors(const weightgate::v1::ModelSpec& spec, const std::string& path);

}  // namespace weightgate::registry

#endif  // WEIGHTGATE_SERVER_REGISTRY_CANONICAL_H_
