#include "server/store/store.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace weightgate::store {
namespace {

namespace fs = std::filesystem;
using weightgate::v1::Model;
using weightgate::v1::Version;

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/wg-store-test-XXXXXX";
    root_ = ::mkdtemp(tmpl);
    store_ = Open();
  }
  void TearDown() override { fs::remove_all(root_); }

  std::unique_ptr<Store> Open(Store::Options options = {}) {
    options.root = root_ + "/store";
    auto store = Store::Open(options);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  std::string Blob(const std::string& content) {
    auto staged = store_->NewStagedFile();
    EXPECT_TRUE(staged.ok());
    EXPECT_TRUE((*staged)->Append(content).ok());
    auto sha = store_->CommitBlob(*std::move(staged));
    EXPECT_TRUE(sha.ok()) << sha.status();
    return *sha;
  }

  // A blob of `content` unused for two hours (collectable, and unreferenced),
  // and an upload of the same bytes staged in `store`: its commit reuses the
  // blob. Returns the blob's sha256; null `*staged` on failure.
  std::string OldBlobAndStagedCopy(Store* store, const std::string& content,
                                   std::unique_ptr<StagedFile>* staged) {
    std::string sha = Blob(content);
    fs::last_write_time(store->BlobPath(sha),
                        fs::file_time_type::clock::now() - std::chrono::hours(2));
    auto copy = store->NewStagedFile();
    EXPECT_TRUE(copy.ok()) << copy.status();
    if (!copy.ok()) return sha;
    EXPECT_TRUE((*copy)->Append(content).ok());
    *staged = *std::move(copy);
    return sha;
  }

  Model MakeModel(const std::string& id) {
    Model m;
    m.set_model_id(id);
    auto* t = m.mutable_spec()->add_tensors();
    t->set_name("fc.weight");
    t->set_dtype("F32");
    t->add_shape(2);
    return m;
  }

  std::string root_;
  std::unique_ptr<Store> store_;
};

TEST_F(StoreTest, OpenCreatesLayout) {
  for (const char* sub : {"blobs", "models", "tmp"}) {
    EXPECT_TRUE(fs::is_directory(root_ + "/store/" + sub)) << sub;
  }
}

TEST_F(StoreTest, BlobIsNamedBySha256AndStoredOnce) {
  std::string a = Blob("hello");
  EXPECT_EQ(a, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
  EXPECT_TRUE(store_->HasBlob(a));
  EXPECT_EQ(store_->BlobSize(a), 5u);
  EXPECT_EQ(Blob("hello"), a);
  EXPECT_EQ(store_->BlobBytes(), 5u);
  // Nothing left in staging.
  EXPECT_TRUE(fs::is_empty(store_->staging_dir()));
}

// A file written by another writer that hashed it as it wrote: the known
// hash names the blob (no second pass over the file); without one the store
// hashes the file itself; something that is not a sha256 is refused.
TEST_F(StoreTest, AdoptContentsTakesAKnownSha256AndRefusesAMalformedOne) {
  const std::string hello_sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
  auto adopt = [&](const std::string& known) -> absl::StatusOr<std::string> {
    auto staged = store_->NewStagedFile();
    EXPECT_TRUE(staged.ok());
    std::ofstream((*staged)->path(), std::ios::binary | std::ios::trunc) << "hello";
    if (absl::Status s = (*staged)->AdoptContents(known); !s.ok()) return s;
    EXPECT_EQ((*staged)->size(), 5u);
    return store_->CommitBlob(*std::move(staged));
  };
  absl::StatusOr<std::string> hashed = adopt("");
  ASSERT_TRUE(hashed.ok()) << hashed.status();
  EXPECT_EQ(*hashed, hello_sha);
  // The store takes the writer's word: the name is the one given.
  const std::string given(64, 'a');
  absl::StatusOr<std::string> known = adopt(given);
  ASSERT_TRUE(known.ok()) << known.status();
  EXPECT_EQ(*known, given);
  for (const std::string& bad :
       {std::string("abc"), std::string(64, 'A'), std::string("../") + std::string(61, 'a')}) {
    absl::StatusOr<std::string> refused = adopt(bad);
    EXPECT_FALSE(refused.ok()) << bad;
  }
  EXPECT_EQ(store_->BlobBytes(), 10u);
  EXPECT_TRUE(fs::is_empty(store_->staging_dir()));
}

TEST_F(StoreTest, AbandonedStagedFileIsRemoved) {
  std::string path;
  {
    auto staged = store_->NewStagedFile();
    ASSERT_TRUE(staged.ok());
    ASSERT_TRUE((*staged)->Append("partial").ok());
    path = (*staged)->path();
    EXPECT_TRUE(fs::exists(path));
  }
  EXPECT_FALSE(fs::exists(path));
}

TEST_F(StoreTest, StaleStagingRemovedOnOpenFreshKept) {
  std::string old_file = root_ + "/store/tmp/stage.crashed";
  std::string fresh_file = root_ + "/store/tmp/stage.live";
  std::ofstream(old_file) << "x";
  std::ofstream(fresh_file) << "y";
  fs::last_write_time(old_file, fs::file_time_type::clock::now() - std::chrono::hours(3));
  auto reopened = Open();
  EXPECT_FALSE(fs::exists(old_file));
  EXPECT_TRUE(fs::exists(fresh_file));
}

TEST_F(StoreTest, StagingIsPerProcessAndSweepSparesLiveReplicas) {
  // A live replica's staging file, older than any age limit, survives
  // another replica's startup sweep: it is in the live process's directory.
  auto staged = store_->NewStagedFile();
  ASSERT_TRUE(staged.ok());
  ASSERT_TRUE((*staged)->Append("in flight").ok());
  EXPECT_EQ((*staged)->path().rfind(store_->staging_dir() + "/", 0), 0u);
  fs::last_write_time((*staged)->path(), fs::file_time_type::clock::now() - std::chrono::hours(5));
  fs::last_write_time(store_->staging_dir(),
                      fs::file_time_type::clock::now() - std::chrono::hours(5));
  // A crashed process of this host: its pid no longer exists.
  pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  ASSERT_GT(dead, 0);
  ::waitpid(dead, nullptr, 0);
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  std::string dead_dir = root_ + "/store/tmp/" + host + "-" + std::to_string(dead) + "-1";
  fs::create_directories(dead_dir);
  std::ofstream(dead_dir + "/stage.1") << "orphan";
  // Another host's fresh directory: unknown liveness, recent activity, kept.
  std::string remote_dir = root_ + "/store/tmp/otherhost-12345-1";
  fs::create_directories(remote_dir);
  std::ofstream(remote_dir + "/stage.1") << "remote";

  auto other = Open();
  ASSERT_NE(other, nullptr);
  EXPECT_NE(other->staging_dir(), store_->staging_dir());
  EXPECT_TRUE(fs::exists((*staged)->path()));
  EXPECT_FALSE(fs::exists(dead_dir));
  EXPECT_TRUE(fs::exists(remote_dir + "/stage.1"));
  fs::last_write_time(remote_dir + "/stage.1",
                      fs::file_time_type::clock::now() - std::chrono::hours(5));
  fs::last_write_time(remote_dir, fs::file_time_type::clock::now() - std::chrono::hours(5));
  auto third = Open();
  EXPECT_FALSE(fs::exists(remote_dir));
}

TEST_F(StoreTest, ModelRoundTripAndList) {
  ASSERT_TRUE(store_->PutModel(MakeModel("b-model")).ok());
  ASSERT_TRUE(store_->PutModel(MakeModel("a.model")).ok());
  auto got = store_->GetModel("b-model");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->spec().tensors(0).name(), "fc.weight");
  auto all = store_->ListModels();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].model_id(), "a.model");
  EXPECT_TRUE(absl::IsNotFound(store_->GetModel("missing").status()));
}

TEST_F(StoreTest, InvalidModelIdsRejected) {
  for (std::string bad : std::vector<std::string>{"", "Upper", "-x", ".x", "a/b", "../etc",
                                                  std::string(129, 'a'), "a b"}) {
    EXPECT_FALSE(store_->PutModel(MakeModel(bad)).ok()) << bad;
  }
}

TEST_F(StoreTest, VersionsAliasesResolve) {
  ASSERT_TRUE(store_->PutModel(MakeModel("m")).ok());
  Version v;
  v.set_blob_sha256(Blob("one"));
  auto v1 = store_->AddVersion("m", v, "candidate");
  ASSERT_TRUE(v1.ok()) << v1.status();
  EXPECT_EQ(v1->version(), 1);
  v.set_blob_sha256(Blob("two"));
  auto v2 = store_->AddVersion("m", v, "");
  ASSERT_TRUE(v2.ok());
  EXPECT_EQ(v2->version(), 2);

  auto latest = store_->Resolve("m");
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(latest->version(), 2);
  auto candidate = store_->Resolve("m@candidate");
  ASSERT_TRUE(candidate.ok());
  EXPECT_EQ(candidate->version(), 1);
  EXPECT_EQ(store_->Resolve("m@1")->blob_sha256(), v1->blob_sha256());
  EXPECT_TRUE(absl::IsNotFound(store_->Resolve("m@prod").status()));
  EXPECT_TRUE(absl::IsNotFound(store_->Resolve("m@3").status()));

  auto previous = store_->SetAlias("m", "prod", 2);
  ASSERT_TRUE(previous.ok());
  EXPECT_EQ(*previous, 0);
  previous = store_->SetAlias("m", "prod", 1);
  ASSERT_TRUE(previous.ok());
  EXPECT_EQ(*previous, 2);
  EXPECT_TRUE(absl::IsNotFound(store_->SetAlias("m", "prod", 9).status()));

  auto versions = store_->ListVersions("m");
  ASSERT_TRUE(versions.ok());
  ASSERT_EQ(versions->size(), 2u);
  EXPECT_EQ((*versions)[0].aliases_size(), 2);  // candidate, prod
  EXPECT_EQ(store_->GetModel("m")->version_count(), 2);
}

TEST_F(StoreTest, DeleteVersionMovesLatestAndKeepsSharedBlob) {
  ASSERT_TRUE(store_->PutModel(MakeModel("m")).ok());
  Version v;
  v.set_blob_sha256(Blob("same"));
  ASSERT_TRUE(store_->AddVersion("m", v, "").ok());
  ASSERT_TRUE(store_->AddVersion("m", v, "").ok());
  ASSERT_TRUE(store_->DeleteVersion("m", 2).ok());
  EXPECT_EQ(store_->Resolve("m")->version(), 1);
  EXPECT_TRUE(store_->HasBlob(v.blob_sha256()));
  EXPECT_TRUE(absl::IsNotFound(store_->DeleteVersion("m", 2)));
  // Version numbers are never reused.
  auto v3 = store_->AddVersion("m", v, "");
  ASSERT_TRUE(v3.ok());
  EXPECT_EQ(v3->version(), 3);
}

TEST_F(StoreTest, DeleteModelRemovesEverythingButFreshBlobsSurviveGc) {
  ASSERT_TRUE(store_->PutModel(MakeModel("m")).ok());
  Version v;
  v.set_blob_sha256(Blob("weights"));
  ASSERT_TRUE(store_->AddVersion("m", v, "").ok());
  ASSERT_TRUE(store_->DeleteModel("m").ok());
  EXPECT_TRUE(absl::IsNotFound(store_->GetModel("m").status()));
  EXPECT_FALSE(fs::exists(root_ + "/store/models/m"));
  // Within the grace period an unreferenced blob may belong to an upload in flight.
  EXPECT_TRUE(store_->HasBlob(v.blob_sha256()));
  fs::last_write_time(store_->BlobPath(v.blob_sha256()),
                      fs::file_time_type::clock::now() - std::chrono::hours(1));
  ASSERT_TRUE(store_->CollectGarbage().ok());
  EXPECT_FALSE(store_->HasBlob(v.blob_sha256()));
}

TEST_F(StoreTest, CorruptMetadataIsDataLossNotCrash) {
  ASSERT_TRUE(store_->PutModel(MakeModel("m")).ok());
  std::ofstream(root_ + "/store/models/m/model.json") << "{not json";
  auto got = store_->GetModel("m");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  // GC refuses to run on a store it cannot read fully: it could delete live blobs.
  EXPECT_FALSE(store_->CollectGarbage().ok());
}

TEST_F(StoreTest, ConcurrentAddVersionFromTwoStoresNeverCollides) {
  ASSERT_TRUE(store_->PutModel(MakeModel("m")).ok());
  auto other = Open();  // a second replica on the same directory
  Version v;
  v.set_blob_sha256(Blob("w"));
  std::vector<int64_t> got_a, got_b;
  std::thread a([&] {
    for (int i = 0; i < 20; ++i) got_a.push_back(store_->AddVersion("m", v, "")->version());
  });
  std::thread b([&] {
    for (int i = 0; i < 20; ++i) got_b.push_back(other->AddVersion("m", v, "")->version());
  });
  a.join();
  b.join();
  std::set<int64_t> all(got_a.begin(), got_a.end());
  all.insert(got_b.begin(), got_b.end());
  EXPECT_EQ(all.size(), 40u);
  EXPECT_EQ(*all.rbegin(), 40);
  EXPECT_EQ(store_->GetModel("m")->version_count(), 40);
  EXPECT_EQ(other->ListVersions("m")->size(), 40u);
}

TEST_F(StoreTest, UpdateModelIsAtomicAcrossReplicas) {
  ASSERT_TRUE(store_->PutModel(MakeModel("m")).ok());
  auto other = Open();
  auto bump = [](Store* s) {
    for (int i = 0; i < 25; ++i) {
      ASSERT_TRUE(s->UpdateModel("m", [](Model& m) {
                     m.set_version_count(m.version_count() + 1);
                     return absl::OkStatus();
                   }).ok());
    }
  };
  std::thread a(bump, store_.get());
  std::thread b(bump, other.get());
  a.join();
  b.join();
  EXPECT_EQ(store_->GetModel("m")->version_count(), 50);
}

// The race of issue 8: an upload of bytes identical to an unreferenced, old
// blob reuses it; garbage collection then runs before the version record is
// written. The reused blob must survive.
TEST_F(StoreTest, ReusedBlobIsRefreshedSoGcBetweenCommitAndVersionSparesIt) {
  ASSERT_TRUE(store_->PutModel(MakeModel("m1")).ok());
  std::unique_ptr<StagedFile> staged;
  std::string sha = OldBlobAndStagedCopy(store_.get(), "identical weights", &staged);
  ASSERT_NE(staged, nullptr);
  auto reused = store_->CommitBlob(std::move(staged));
  ASSERT_TRUE(reused.ok());
  ASSERT_EQ(*reused, sha);
  ASSERT_TRUE(store_->CollectGarbage().ok());  // the interleaving that lost the blob
  Version v;
  v.set_blob_sha256(sha);
  auto added = store_->AddVersion("m1", v, "");
  ASSERT_TRUE(added.ok()) << added.status();
  EXPECT_TRUE(store_->HasBlob(store_->Resolve("m1")->blob_sha256()));
}

// With no grace period at all, CommitVersion still cannot lose its blob: GC
// from another thread (or replica) waits for the one lock hold that places
// the blob and writes the record.
TEST_F(StoreTest, CommitVersionHoldsTheLockAcrossBlobAndRecord) {
  std::atomic<bool> gc_done{false};
  std::thread gc;
  Store::Options options;
  options.blob_grace_seconds = 0;
  options.after_blob_hook_for_testing = [&] {
    gc = std::thread([&] {
      Store::Options other_options;
      other_options.blob_grace_seconds = 0;
      auto other = Open(other_options);
      EXPECT_TRUE(other->CollectGarbage().ok());
      gc_done = true;
    });
    // Give the collector every chance to run now, as it could without the lock.
    for (int i = 0; i < 30 && !gc_done; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_FALSE(gc_done.load()) << "garbage collection ran between blob and version record";
  };
  auto store = Open(options);
  ASSERT_TRUE(store->PutModel(MakeModel("m1")).ok());
  std::unique_ptr<StagedFile> staged;
  std::string sha = OldBlobAndStagedCopy(store.get(), "identical weights", &staged);
  ASSERT_NE(staged, nullptr);
  auto version = store->CommitVersion("m1", std::move(staged), Version(), "prod");
  ASSERT_TRUE(version.ok()) << version.status();
  gc.join();
  EXPECT_EQ(version->blob_sha256(), sha);
  auto resolved = store->Resolve("m1@prod");
  ASSERT_TRUE(resolved.ok());
  EXPECT_TRUE(store->HasBlob(resolved->blob_sha256()));
}

// RegisterModel's TorchScript reference: committed (maybe reused), then the
// model record names it. Collection in between spares it; a model naming a
// blob that is gone is not written.
TEST_F(StoreTest, TorchScriptReferenceSurvivesGcAndMustExist) {
  std::string sha = Blob("torchscript archive");
  fs::last_write_time(store_->BlobPath(sha),
                      fs::file_time_type::clock::now() - std::chrono::hours(2));
  auto staged = store_->NewStagedFile();
  ASSERT_TRUE((*staged)->Append("torchscript archive").ok());
  ASSERT_EQ(*store_->CommitBlob(*std::move(staged)), sha);  // reused
  ASSERT_TRUE(store_->CollectGarbage().ok());
  Model m = MakeModel("ts");
  m.mutable_spec()->set_torchscript_sha256(sha);
  ASSERT_TRUE(store_->PutModel(m).ok());
  EXPECT_TRUE(store_->HasBlob(sha));
  m.set_model_id("ts2");
  m.mutable_spec()->set_torchscript_sha256(std::string(64, 'b'));
  EXPECT_EQ(store_->PutModel(m).code(), absl::StatusCode::kAborted);
}

TEST_F(StoreTest, AddVersionRefusesABlobThatVanished) {
  ASSERT_TRUE(store_->PutModel(MakeModel("m")).ok());
  Version v;
  v.set_blob_sha256(std::string(64, 'a'));
  EXPECT_EQ(store_->AddVersion("m", v, "").status().code(), absl::StatusCode::kAborted);
}

// Where flock is a no-op (some NFS setups), link() still gives every version
// its own number: no record is ever overwritten.
TEST_F(StoreTest, VersionNumbersNeverCollideWithoutFlock) {
  ASSERT_TRUE(store_->PutModel(MakeModel("m")).ok());
  constexpr int kReplicas = 4;
  constexpr int kEach = 10;
  std::vector<std::unique_ptr<Store>> replicas;
  Store::Options no_flock;
  no_flock.use_flock = false;
  for (int i = 0; i < kReplicas; ++i) replicas.push_back(Open(no_flock));
  std::vector<std::vector<Version>> got(kReplicas);
  std::vector<std::thread> threads;
  for (int r = 0; r < kReplicas; ++r) {
    threads.emplace_back([&, r] {
      for (int i = 0; i < kEach; ++i) {
        Version v;
        v.set_filename(absl::StrCat("r", r, "-", i));
        auto added = replicas[r]->AddVersion("m", v, "");
        ASSERT_TRUE(added.ok()) << added.status();
        got[r].push_back(*added);
      }
    });
  }
  for (auto& t : threads) t.join();
  std::set<int64_t> numbers;
  for (const auto& list : got) {
    for (const Version& v : list) {
      numbers.insert(v.version());
      // The record under that number is the one this writer wrote.
      auto stored = store_->GetVersion("m", v.version());
      ASSERT_TRUE(stored.ok());
      EXPECT_EQ(stored->filename(), v.filename());
    }
  }
  EXPECT_EQ(numbers.size(), size_t{kReplicas * kEach});
  EXPECT_EQ(store_->ListVersions("m")->size(), size_t{kReplicas * kEach});
}

}  // namespace
}  // namespace weightgate::store
