#include "server/service/staged_upload.h"

#include <stdlib.h>

#include <atomic>
#include <filesystem>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "server/checkpoint/set_bundle.h"
#include "tests/checkpoint/set_fixtures.h"
#include "tests/service/server_fixture.h"

namespace weightgate::service {
namespace {

using checkpoint::testing::Fx;

// Regular-file bytes below `dir` (0 when it is gone).
uint64_t BytesBelow(const std::string& dir) {
  uint64_t n = 0;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    std::error_code size_ec;
    if (it->is_regular_file(size_ec)) {
      uintmax_t size = it->file_size(size_ec);
      if (!size_ec) n += size;
    }
  }
  return n;
}

std::string Bundle(const std::string& path) {
  std::string out;
  absl::Status s = checkpoint::StreamSetBundle(path, 1 << 16, [&](std::string_view piece) {
    out.append(piece);
    return true;
  });
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

// A set of `pad` extra bytes beside the hf_st fixture, as a directory.
std::string PaddedSet(const std::string& root, size_t pad) {
  std::string dir = root + "/set";
  std::filesystem::create_directories(dir);
  for (const auto& e : std::filesystem::directory_iterator(Fx("hf_st"))) {
    std::filesystem::copy_file(e.path(), dir + "/" + e.path().filename().string());
  }
  std::ofstream(dir + "/notes.txt", std::ios::binary) << std::string(pad, 'n');
  return dir;
}

class StagedUploadTest : public ServerFixture {
 protected:
  void SetUp() override {
    ServerFixture::SetUp();
    store::Store::Options o;
    o.root = root_ + "/store";
    auto store = store::Store::Open(o);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }
  std::unique_ptr<StagedUpload> NewUpload() {
    auto file = store_->NewStagedFile();
    EXPECT_TRUE(file.ok()) << file.status();
    return std::make_unique<StagedUpload>(*std::move(file));
  }
  std::unique_ptr<store::Store> store_;
};

// A bundle is unpacked as it arrives: the staged file stays empty, the files
// hold the set once, and the worker is handed a directory it reads in place.
TEST_F(StagedUploadTest, SetCostsItsSizeOnceOnDisk) {
  const std::string set = PaddedSet(root_, 4 << 20);
  const uint64_t set_bytes = BytesBelow(set);
  const std::string bundle = Bundle(set);
  const std::string staging = root_ + "/store/tmp";
  std::string dir;
  {
    std::unique_ptr<StagedUpload> up = NewUpload();
    uint64_t peak = 0;
    for (size_t off = 0; off < bundle.size(); off += 1 << 20) {
      ASSERT_TRUE(up->Append(std::string_view(bundle).substr(off, 1 << 20)).ok());
      peak = std::max(peak, BytesBelow(staging));
    }
    ASSERT_TRUE(up->Finish().ok());
    peak = std::max(peak, BytesBelow(staging));
    EXPECT_TRUE(up->is_set());
    EXPECT_EQ(up->size(), bundle.size());
    EXPECT_EQ(up->sha256(), common::Sha256Hex(bundle));
    EXPECT_EQ(up->file().size(), 0u);
    EXPECT_EQ(peak, set_bytes);  // was bundle + set (2x) when the bundle was stored
    dir = up->path();
    EXPECT_TRUE(std::filesystem::is_directory(dir));
    auto input = checkpoint::UnpackedSet::Open(dir);
    ASSERT_TRUE(input.ok()) << input.status();
    EXPECT_FALSE((*input)->unpacked()) << "a directory is read in place, not copied";
  }
  EXPECT_FALSE(std::filesystem::exists(dir)) << "set directory left behind";
  EXPECT_EQ(BytesBelow(staging), 0u);
}

TEST_F(StagedUploadTest, PlainBytesGoToTheStagedFile) {
  for (std::string bytes : {std::string("PK\3\4 a zip, not a bundle"), std::string("WGS")}) {
    std::unique_ptr<StagedUpload> up = NewUpload();
    for (char c : bytes) ASSERT_TRUE(up->Append(std::string_view(&c, 1)).ok());
    ASSERT_TRUE(up->Finish().ok());
    EXPECT_FALSE(up->is_set());
    EXPECT_EQ(up->path(), up->file().path());
    EXPECT_EQ(up->size(), bytes.size());
    EXPECT_EQ(up->sha256(), common::Sha256Hex(bytes));
    EXPECT_EQ(std::filesystem::file_size(up->path()), bytes.size());
  }
}

TEST_F(StagedUploadTest, TruncatedOrHostileBundleFailsAndLeavesNothing) {
  std::string bundle = Bundle(Fx("hf_st"));
  {
    std::unique_ptr<StagedUpload> up = NewUpload();
    ASSERT_TRUE(up->Append(std::string_view(bundle).substr(0, bundle.size() - 1)).ok());
    absl::Status s = up->Finish();
    EXPECT_NE(std::string(s.message()).find("fewer follow"), std::string::npos) << s;
  }
  {
    std::unique_ptr<StagedUpload> up = NewUpload();
    std::string hostile = std::string(checkpoint::kSetBundleMagic) + std::string("\1\0\0\0", 4) +
                          std::string("\x0b\0", 2) + "../../evil" + std::string(8, '\0');
    absl::Status s = up->Append(hostile);
    EXPECT_NE(std::string(s.message()).find("bad path component"), std::string::npos) << s;
  }
  EXPECT_EQ(BytesBelow(root_ + "/store/tmp"), 0u);
  EXPECT_FALSE(std::filesystem::exists(root_ + "/store/evil"));
}

// Through the server: a set registers and validates, the staging directory
// never holds more than the set (polled while the upload and the validation
// run), and a --max_staged_bytes just above the bundle is enough.
TEST_F(StagedUploadTest, ServerValidatesASetWithinItsSize) {
  const std::string set = PaddedSet(root_, 8 << 20);
  const uint64_t set_bytes = BytesBelow(set);
  const std::string bundle = Bundle(set);
  Server::Options o = Options();
  o.max_staged_bytes = bundle.size() + 4096;
  o.validation_worker_argv = {
      checkpoint::testing::SetEnvOr("WG_BINARY_DIR", WG_BINARY_DIR) + "/bin/weightgate-server",
      "--validation_worker"};
  auto server = Server::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = weightgate::v1::ModelRegistry::NewStub(Channel(**server));
  auto send = [&](auto* writer, auto header) {
    EXPECT_TRUE(writer->Write(header));
    for (size_t off = 0; off < bundle.size(); off += 1 << 20) {
      typename std::remove_reference_t<decltype(header)> chunk;
      chunk.set_chunk(bundle.substr(off, 1 << 20));
      EXPECT_TRUE(writer->Write(chunk));
    }
    writer->WritesDone();
    return writer->Finish();
  };
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> peak{0};
  std::thread poll([&] {
    while (!stop.load()) {
      uint64_t now = BytesBelow(root_ + "/store/tmp");
      if (now > peak.load()) peak.store(now);
    }
  });
  grpc::Status registered;
  {
    grpc::ClientContext ctx;
    weightgate::v1::Model model;
    auto writer = stub->RegisterModel(&ctx, &model);
    weightgate::v1::RegisterModelRequest header;
    header.mutable_header()->set_model_id("sharded");
    registered = send(writer.get(), header);
  }
  // The staged set (and its --max_staged_bytes reservation) is released when
  // the call is torn down, which may come just after the client has its
  // answer: the second upload would not fit beside it.
  auto wait_for_empty_staging = [&] {
    for (int i = 0; i < 200 && BytesBelow(root_ + "/store/tmp") != 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  };
  wait_for_empty_staging();
  grpc::Status validated;
  weightgate::v1::ValidationReport report;
  if (registered.ok()) {
    grpc::ClientContext ctx;
    auto writer = stub->ValidateCheckpoint(&ctx, &report);
    weightgate::v1::UploadRequest header;
    header.mutable_header()->set_model_id("sharded");
    validated = send(writer.get(), header);
  }
  stop = true;
  poll.join();
  ASSERT_TRUE(registered.ok()) << registered.error_message();
  ASSERT_TRUE(validated.ok()) << validated.error_message();
  EXPECT_EQ(report.verdict(), weightgate::v1::VALID) << report.DebugString();
  EXPECT_GT(peak.load(), 0u);
  // The set once, plus small metadata files written through staging; the
  // stored bundle and its unpacked copy made it 2x.
  EXPECT_LE(peak.load(), set_bytes + (64 << 10));
  wait_for_empty_staging();
  EXPECT_EQ(BytesBelow(root_ + "/store/tmp"), 0u);
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

}  // namespace
}  // namespace weightgate::service
