// SetBuilder assembles one Checkpoint from the pieces of a multi-file
// checkpoint (HF shards, torch.distributed.checkpoint chunks, ...): a flat
// dict of name -> tensor whose records point into every piece's mapped file.
// Tensors taken from a piece keep pointing at that piece's bytes (no copy);
// tensors the set reader has to assemble itself (stitched chunks) are written
// to an unlinked scratch file and mapped back, so the result holds at most
// one assembled tensor in anonymous memory at a time, and the page cache
// holds the rest.
//
// Names must be unique across the set; a repeat is an error naming both
// places it came from. Globals of every piece are merged into the result.
//
// This class is not thread-safe.
#ifndef WEIGHTGATE_SERVER_CHECKPOINT_SET_BUILDER_H_
#define WEIGHTGATE_SERVER_CHECKPOINT_SET_BUILDER_H_

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/checkpoint/checkpoint.h"

namespace weightgate::checkpoint {

// Copies the elements of `src` (a strided view whose first element is at
// src_bytes[0]) into the row-major buffer `dst` of shape `full` at
// `offsets`. REQUIRES: the caller checked that the chunk lies inside `full`,
// that src_bytes covers the view, and that dst holds numel(full) items.
void CopyStridedInto(const TensorRecord& src, std::string_view src_bytes,
                     const std::vector<int64_t>& offsets, const std::vector<int64_t>& full,
                     char* dst);

class SetBuilder final {
 public:
  // `layout` is reported as metadata "set_layout=<layout>".
  explicit SetBuilder(std::string layout);
  ~SetBuilder();
  SetBuilder(const SetBuilder&) = delete;
  SetBuilder& operator=(const SetBuilder&) = delete;

  // Adds `tensors` (records owned by `part`, named as they appear in the
  // result) and takes over what they need of `part`: its files, the
  // storages they view, inflated bytes. Storages several tensors share stay
  // shared. `origin` names the piece in errors ("model-00001-of-00002.bin").
  absl::Status AddPart(Checkpoint part, const std::vector<NamedTensor>& tensors,
                       std::string_view origin);

  // Merges `part`'s globals and metadata only (a piece read for its
  // structure, e.g. a DCP chunk whose tensor is stitched from several).
  void AddGlobals(const Checkpoint& part);

  // Adds a tensor whose contiguous row-major bytes the caller assembled.
  // REQUIRES: bytes.size() == numel(shape) * ItemSize(dtype).
  absl::Status AddAssembled(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                            std::string_view bytes, std::string_view origin);

  // Adds `name` as a second name of the tensor already added as `target`
  // (same record, same storage), as torch ties shared parameters.
  absl::Status AddAlias(const std::string& name, const std::string& target,
                        std::string_view origin);

  void AddMetadata(std::string entry) { out_.metadata.push_back(std::move(entry)); }

  size_t tensor_count() const { return origin_.size(); }
  bool Has(const std::string& name) const { return origin_.contains(name); }

  // The merged checkpoint. REQUIRES: called once.
  absl::StatusOr<Checkpoint> Finish();

 private:
  int FileIndex(const std::shared_ptr<const common::MappedFile>& file);
  absl::Status AddName(const std::string& name, std::string_view origin);
  void Append(const std::string& name, const Value* tensor);
  void MergeGlobals(const Checkpoint& part);

  Checkpoint out_;
  Value* root_ = nullptr;
  bool have_format_ = false;
  absl::flat_hash_map<const common::MappedFile*, int> file_index_;
  absl::flat_hash_map<std::string, std::string> origin_;   // tensor name -> piece
  absl::flat_hash_map<std::string, const Value*> values_;  // tensor name -> its value

  // Scratch file for assembled tensors: written at scratch_size_, mapped at
  // Finish; its storages get their file index then.
  int scratch_fd_ = -1;
  std::string scratch_path_;
  uint64_t scratch_size_ = 0;
  std::vector<size_t> scratch_storages_;
};

}  // namespace weightgate::checkpoint

#endif  // WEIGHTGATE_SERVER_CHECKPOINT_SET_BUILDER_H_
