#include "server/store/blob_cache.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "gtest/gtest.h"
#include "server/checkpoint/safetensors.h"

namespace weightgate::store {
namespace {

// A two-tensor safetensors file built by hand (the layout is the spec).
std::string TinySafetensors(char fill) {
  std::string header =
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[1,1],"data_offsets":[8,16]}})";
  while ((8 + header.size()) % 8 != 0) header.push_back(' ');
  std::string out(8, '\0');
  uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  out += header;
  out += std::string(16, fill);
  return out;
}

class BlobCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/wg-cache-test-XXXXXX";
    root_ = ::mkdtemp(tmpl);
    Store::Options options;
    options.root = root_;
    store_ = *Store::Open(options);
  }
  void TearDown() override { std::filesystem::remove_all(root_); }

  std::string Put(const std::string& bytes) {
    auto staged = *store_->NewStagedFile();
    EXPECT_TRUE(staged->Append(bytes).ok());
    return *store_->CommitBlob(std::move(staged));
  }

  std::string root_;
  std::unique_ptr<Store> store_;
};

TEST_F(BlobCacheTest, ManifestMatchesLayout) {
  std::string sha = Put(TinySafetensors('x'));
  BlobCache cache(store_.get(), 1 << 20);
  bool hit = true;
  auto blob = cache.Get(sha, &hit);
  ASSERT_TRUE(blob.ok()) << blob.status();
  EXPECT_FALSE(hit);
  const auto& m = (*blob)->manifest;
  ASSERT_EQ(m.tensors_size(), 2);
  EXPECT_EQ(m.tensors(0).name(), "a");
  EXPECT_EQ(m.tensors(1).dtype(), "I64");
  EXPECT_EQ(m.header_bytes() + 16, m.total_bytes());
  EXPECT_EQ(m.tensors(0).offset(), m.header_bytes());
  EXPECT_EQ(m.tensors(1).offset(), m.header_bytes() + 8);
  EXPECT_EQ(m.blob_sha256(), sha);
  ASSERT_TRUE(cache.Get(sha, &hit).ok());
  EXPECT_TRUE(hit);
}

// A tied tensor stored once: the manifest lists both names, the tied one
// with tied_to and its partner's byte range.
TEST_F(BlobCacheTest, ManifestListsTiedNamesOnTheirPartnersRange) {
  std::string bytes = checkpoint::SafetensorsHeader(
      {{"embed.weight", checkpoint::DType::kF32, {2, 2}}, {"bias", checkpoint::DType::kF32, {2}}},
      {{"format", "pt"}, {checkpoint::SafetensorsTieKey("head.weight"), "embed.weight"}});
  const uint64_t header = bytes.size();
  bytes += std::string(16, 'e') + std::string(8, 'b');
  std::string sha = Put(bytes);
  BlobCache cache(store_.get(), 1 << 20);
  bool hit = true;
  auto blob = cache.Get(sha, &hit);
  ASSERT_TRUE(blob.ok()) << blob.status();
  const auto& m = (*blob)->manifest;
  ASSERT_EQ(m.tensors_size(), 3);
  EXPECT_EQ(m.total_bytes(), header + 24);  // the bytes once
  EXPECT_EQ(m.tensors(0).name(), "embed.weight");
  EXPECT_TRUE(m.tensors(0).tied_to().empty());
  EXPECT_TRUE(m.tensors(1).tied_to().empty());
  const auto& head = m.tensors(2);
  EXPECT_EQ(head.name(), "head.weight");
  EXPECT_EQ(head.tied_to(), "embed.weight");
  EXPECT_EQ(head.dtype(), "F32");
  EXPECT_EQ(std::vector<int64_t>(head.shape().begin(), head.shape().end()),
            (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(head.offset(), m.tensors(0).offset());
  EXPECT_EQ(head.length(), m.tensors(0).length());
  EXPECT_EQ(head.offset(), header);
}

TEST_F(BlobCacheTest, EvictsLeastRecentlyUsedButKeepsHeldBlobsAlive) {
  std::string a = Put(TinySafetensors('a'));
  std::string b = Put(TinySafetensors('b'));
  uint64_t one = store_->BlobSize(a);
  BlobCache cache(store_.get(), one);  // room for one blob
  bool hit = false;
  auto held = *cache.Get(a, &hit);
  ASSERT_TRUE(cache.Get(b, &hit).ok());
  EXPECT_EQ(cache.bytes(), one);
  // a was evicted, yet the holder still reads it.
  EXPECT_EQ(held->file->data().back(), 'a');
  ASSERT_TRUE(cache.Get(a, &hit).ok());
  EXPECT_FALSE(hit);
}

TEST_F(BlobCacheTest, CorruptBlobIsDataLoss) {
  std::string sha = Put("definitely not safetensors");
  BlobCache cache(store_.get(), 1 << 20);
  bool hit = false;
  auto blob = cache.Get(sha, &hit);
  EXPECT_EQ(blob.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(absl::IsNotFound(cache.Get(std::string(64, 'a'), &hit).status()));
}

}  // namespace
}  // namespace weightgate::store

namespace weightgate::store {
namespace {

// A blob truncated (or gone on NFS) while mapped: touching it raised SIGBUS
// and killed the server. Now the read sees zeros, the blob is marked
// damaged, and the cache reopens it instead of serving it again.
TEST_F(BlobCacheTest, FileVanishingUnderTheMappingMarksDamagedNotCrash) {
  std::string sha = Put(TinySafetensors('z'));
  BlobCache cache(store_.get(), 1 << 20);
  bool hit = false;
  auto blob = *cache.Get(sha, &hit);
  EXPECT_FALSE(blob->damaged());
  std::string path = store_->BlobPath(sha);
  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
  ASSERT_EQ(::truncate(path.c_str(), 0), 0);
  // Read every byte, as a fetch computing a chunk's CRC does.
  std::string_view data = blob->file->data();
  size_t nonzero = 0;
  for (char c : data) nonzero += c != 0;
  EXPECT_EQ(nonzero, 0u);
  EXPECT_TRUE(blob->damaged());
  // Not served again from the cache: reopening finds a corrupt (empty) file.
  auto again = cache.Get(sha, &hit);
  EXPECT_FALSE(again.ok());
  EXPECT_FALSE(hit);
}

}  // namespace
}  // namespace weightgate::store
