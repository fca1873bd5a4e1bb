#include "server/store/store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

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

  std::unique_ptr<Store> Open() {
    Store::Options options;
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
  EXPECT_TRUE(fs::is_empty(root_ + "/store/tmp"));
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

}  // namespace
}  // namespace weightgate::store
