#include "server/store/fsck.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "server/store/store.h"

namespace weightgate::store {
namespace {

namespace fs = std::filesystem;

class FsckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/wg-fsck-test-XXXXXX";
    root_ = ::mkdtemp(tmpl);
    Store::Options options;
    options.root = root_;
    store_ = *Store::Open(options);
    weightgate::v1::Model model;
    model.set_model_id("m");
    ASSERT_TRUE(store_->PutModel(model).ok());
    for (const char* content : {"one", "two"}) {
      auto staged = *store_->NewStagedFile();
      ASSERT_TRUE(staged->Append(content).ok());
      auto v = store_->CommitVersion("m", std::move(staged), {}, "");
      ASSERT_TRUE(v.ok());
      shas_.push_back(v->blob_sha256());
    }
  }
  void TearDown() override { fs::remove_all(root_); }

  std::string root_;
  std::unique_ptr<Store> store_;
  std::vector<std::string> shas_;
};

TEST_F(FsckTest, CleanStoreHasNoProblems) {
  FsckResult r = Fsck(root_);
  EXPECT_TRUE(r.problems.empty()) << absl::StrJoin(r.problems, "\n");
  EXPECT_EQ(r.blobs, 2u);
  EXPECT_EQ(r.versions, 2u);
  EXPECT_EQ(r.models, 1u);
}

TEST_F(FsckTest, DamagedBlobNamedWithTheVersionsUsingIt) {
  std::string path = store_->BlobPath(shas_[0]);
  ::chmod(path.c_str(), 0644);
  std::ofstream(path, std::ios::trunc) << "onE";
  auto before = fs::last_write_time(path);
  FsckResult r = Fsck(root_);
  ASSERT_EQ(r.problems.size(), 1u) << absl::StrJoin(r.problems, "\n");
  EXPECT_NE(r.problems[0].find("damaged blob " + shas_[0]), std::string::npos);
  EXPECT_NE(r.problems[0].find("m@1"), std::string::npos);
  EXPECT_EQ(fs::last_write_time(path), before);  // read-only
}

TEST_F(FsckTest, MissingBlobCorruptRecordAndDanglingAlias) {
  fs::remove(store_->BlobPath(shas_[1]));
  ASSERT_TRUE(store_
                  ->UpdateModel("m",
                                [](weightgate::v1::Model& m) {
                                  (*m.mutable_aliases())["prod"] = 9;
                                  return absl::OkStatus();
                                })
                  .ok());
  std::ofstream(root_ + "/models/m/versions/1.json", std::ios::trunc) << "{broken";
  FsckResult r = Fsck(root_);
  std::string all = absl::StrJoin(r.problems, "\n");
  EXPECT_NE(all.find("missing blob " + shas_[1] + " (used by m@2)"), std::string::npos) << all;
  EXPECT_NE(all.find("version m@1"), std::string::npos) << all;
  EXPECT_NE(all.find("alias m@prod points at missing version 9"), std::string::npos) << all;
}

}  // namespace
}  // namespace weightgate::store
