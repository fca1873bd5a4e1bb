// Store is weightgate's embedded, crash-safe persistence: content-addressed
// immutable blobs plus per-model metadata, all in one directory that several
// server processes (replicas) may share.
//
//   <root>/blobs/<sha256>             immutable normalised weights (safetensors) and
//                                     reference archives
//   <root>/models/<id>/model.json     weightgate.v1.Model (spec, policy, aliases)
//   <root>/models/<id>/versions/<n>.json  weightgate.v1.Version
//   <root>/tmp/<host>-<pid>-<rand>/   this process's staging; Open() removes the
//                                     directories of dead processes only
//   <root>/LOCK                       flock()ed around read-modify-write of metadata
//
// Every write is temp file + fsync + rename (+ fsync of every directory that
// gains or loses an entry), so a crash at any point leaves the previous state
// readable.
//
// Correctness does not rest on flock alone (NFS may emulate it or make it a
// no-op): version numbers are claimed with link(), which never replaces an
// existing versions/<n>.json, so two replicas can never store two versions
// under one number. Within one process an absl::Mutex serialises writers.
//
// Blobs and garbage collection: a blob that is committed or reused has its
// mtime refreshed under the store lock, and collection (under the same lock)
// spares unreferenced blobs younger than the grace period. CommitVersion
// places the blob and writes the version record under one lock hold, so no
// collection can run between them.
//
// This class is thread-safe.
#ifndef WEIGHTGATE_SERVER_STORE_STORE_H_
#define WEIGHTGATE_SERVER_STORE_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/sha256.h"
#include "weightgate/v1/registry.pb.h"

namespace weightgate::store {

// A file being written under tmp/. Destroying it without Commit removes it.
class StagedFile final {
 public:
  StagedFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~StagedFile();
  StagedFile(const StagedFile&) = delete;
  StagedFile& operator=(const StagedFile&) = delete;

  // Appends bytes (and feeds the running sha256).
  absl::Status Append(std::string_view bytes);
  // fsyncs (unless !sync) and closes; the file stays at path() until
  // committed or destroyed. A file finished without sync must be made
  // durable before it is committed (AdoptContents does).
  absl::Status Finish(bool sync = true);

  // The file at path() was written by another writer (e.g. a normaliser):
  // close our descriptor, then fsync and hash what the file holds, so that
  // CommitBlob can name it. `known_sha256`, when given, is the hash of those
  // bytes already computed as they were written (a finished StagedFile's
  // sha256() moved here, or the normaliser's hash of its output): no second
  // pass. Whoever passes it vouches for it as for the bytes themselves (the
  // validation worker that wrote the file could as well have written other
  // bytes); anything but 64 lower-case hex digits is refused.
  absl::Status AdoptContents(const std::string& known_sha256 = "");

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }
  // Hex sha256 of everything appended; valid after Finish().
  const std::string& sha256() const { return sha256_; }

 private:
  friend class Store;
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
  std::string sha256_;
  std::unique_ptr<common::Sha256> sha_;
  bool keep_ = false;
};

class Store final {
 public:
  struct Options {
    // Root directory; created if missing. Default "./var/store".
    std::string root = "./var/store";
    // Unreferenced blobs modified more recently than this survive garbage
    // collection. Default 600 s.
    int64_t blob_grace_seconds = 600;
    // Staging directories of processes on other hosts are removed by Open()
    // once nothing in them changed for this long. Default 3600 s.
    int64_t stale_staging_seconds = 3600;
    // flock() the LOCK file around metadata writes. Default true; false
    // emulates a filesystem where flock is silently a no-op (tests).
    bool use_flock = true;
    // Test hook: runs inside CommitVersion with the store lock held, after
    // the blob is in place and before the version record is written.
    std::function<void()> after_blob_hook_for_testing;
  };

  // Opens (creating if needed) the store and removes stale staging files.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const Options& options);

  const std::string& root() const { return root_; }

  // ---- blobs ----
  absl::StatusOr<std::unique_ptr<StagedFile>> NewStagedFile();
  // Moves a finished staged file to blobs/<sha256> (or drops it when that
  // blob already exists, refreshing the existing blob's mtime so that garbage
  // collection spares it for the grace period) and returns the sha256.
  absl::StatusOr<std::string> CommitBlob(std::unique_ptr<StagedFile> staged)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Directory of this process's staging files.
  const std::string& staging_dir() const { return staging_dir_; }
  std::string BlobPath(const std::string& sha256) const;
  bool HasBlob(const std::string& sha256) const;
  // Size in bytes of a stored blob; 0 when absent.
  uint64_t BlobSize(const std::string& sha256) const;
  // Bytes of all blobs (for the store_bytes gauge).
  uint64_t BlobBytes() const;

  // ---- models ----
  // Creates or overwrites models/<id>/model.json.
  absl::Status PutModel(const weightgate::v1::Model& model) ABSL_LOCKS_EXCLUDED(mu_);
  // `fn(model_id)` runs after every model.json this process writes (aliases,
  // versions, spec), with the store's lock held: it must not block or call
  // back into the store. Set before the store is shared.
  void SetModelListener(std::function<void(const std::string&)> fn) { listener_ = std::move(fn); }
  // NOT_FOUND when absent.
  absl::StatusOr<weightgate::v1::Model> GetModel(const std::string& model_id) const;
  // Sorted by id.
  absl::StatusOr<std::vector<weightgate::v1::Model>> ListModels() const;
  // Removes the model and its versions; then garbage-collects unreferenced blobs.
  absl::Status DeleteModel(const std::string& model_id) ABSL_LOCKS_EXCLUDED(mu_);

  // Runs `fn` on the model under the store-wide lock and writes the result
  // back atomically (read-modify-write safe across processes).
  absl::Status UpdateModel(const std::string& model_id,
                           const std::function<absl::Status(weightgate::v1::Model&)>& fn)
      ABSL_LOCKS_EXCLUDED(mu_);

  // ---- versions ----
  // Allocates the next version number under the lock, writes the version
  // record, bumps version_count, moves "latest" (and `alias` if non-empty).
  absl::StatusOr<weightgate::v1::Version> AddVersion(const std::string& model_id,
                                                     weightgate::v1::Version version,
                                                     const std::string& alias)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Commits `staged` as a blob and adds a version of it, under one hold of
  // the store lock (no garbage collection in between). Sets blob_sha256 and
  // size_bytes of `version`.
  absl::StatusOr<weightgate::v1::Version> CommitVersion(const std::string& model_id,
                                                        std::unique_ptr<StagedFile> staged,
                                                        weightgate::v1::Version version,
                                                        const std::string& alias)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<weightgate::v1::Version> GetVersion(const std::string& model_id,
                                                     int64_t version) const;
  absl::StatusOr<std::vector<weightgate::v1::Version>> ListVersions(
      const std::string& model_id) const;
  absl::Status DeleteVersion(const std::string& model_id, int64_t version) ABSL_LOCKS_EXCLUDED(mu_);
  // Returns the previous version of the alias (0 if none).
  absl::StatusOr<int64_t> SetAlias(const std::string& model_id, const std::string& alias,
                                   int64_t version) ABSL_LOCKS_EXCLUDED(mu_);
  // Resolves MODEL, MODEL@VERSION or MODEL@ALIAS.
  absl::StatusOr<weightgate::v1::Version> Resolve(const std::string& ref) const;

  // Removes blobs that no version and no model spec references.
  absl::Status CollectGarbage() ABSL_LOCKS_EXCLUDED(mu_);

  ~Store();

 private:
  class Lock;
  explicit Store(const Options& options, std::string root);

  absl::StatusOr<std::string> PlaceBlobLocked(StagedFile& staged)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<weightgate::v1::Version> AddVersionLocked(const std::string& model_id,
                                                           weightgate::v1::Version version,
                                                           const std::string& alias)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes versions/<n>.json for the first n >= `first` that does not exist
  // yet; never replaces a record.
  absl::StatusOr<int64_t> ClaimVersionLocked(const std::string& model_id, int64_t first,
                                             weightgate::v1::Version& version)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status PutModelLocked(const weightgate::v1::Model& model)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CollectGarbageLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  const std::string root_;
  std::string staging_dir_;
  // Serialises this process's metadata writers; LOCK's flock serialises processes.
  absl::Mutex mu_;
  std::function<void(const std::string&)> listener_;
};

}  // namespace weightgate::store

#endif  // WEIGHTGATE_SERVER_STORE_STORE_H_
