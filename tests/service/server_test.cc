#include "server/service/server.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "common/sha256.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/checkpoint/safetensors.h"
#include "server/service/auth.h"
#include "tests/fixtures/fixture_dir.h"
#include "tests/service/server_fixture.h"
#include "weightgate/v1/registry.grpc.pb.h"

namespace weightgate::service {
namespace {

TEST(IsLoopbackAddressTest, Classifies) {
  EXPECT_TRUE(IsLoopbackAddress("127.0.0.1:50051"));
  EXPECT_TRUE(IsLoopbackAddress("127.5.5.5:1"));
  EXPECT_TRUE(IsLoopbackAddress("localhost:50051"));
  EXPECT_TRUE(IsLoopbackAddress("[::1]:50051"));
  EXPECT_TRUE(IsLoopbackAddress("unix:/tmp/wg.sock"));
  EXPECT_FALSE(IsLoopbackAddress("0.0.0.0:50051"));
  EXPECT_FALSE(IsLoopbackAddress("[::]:50051"));
  EXPECT_FALSE(IsLoopbackAddress("10.1.2.3:50051"));
  EXPECT_FALSE(IsLoopbackAddress("128.0.0.1:50051"));
}

TEST(AuthorizerTest, BadTokenFilesRejected) {
  EXPECT_FALSE(Authorizer::Create("/nonexistent/tokens").ok());
  std::string path = "/tmp/wg-tokens-" + std::to_string(::getpid());
  std::ofstream(path) << "# only a comment\n";
  EXPECT_FALSE(Authorizer::Create(path).ok());
  std::ofstream(path) << "tok superuser\n";
  EXPECT_FALSE(Authorizer::Create(path).ok());
  std::ofstream(path) << "tok admin name extra\n";
  EXPECT_FALSE(Authorizer::Create(path).ok());
  std::ofstream(path) << "tok reader\nother\n";
  auto auth = Authorizer::Create(path);
  ASSERT_TRUE(auth.ok());
  EXPECT_TRUE((*auth)->enabled());
  std::filesystem::remove(path);
}

class ServerTest : public ServerFixture {};

TEST_F(ServerTest, RefusesPublicAddressWithoutProtection) {
  Server::Options o = Options();
  o.listen = "0.0.0.0:0";
  auto s = Server::Start(o);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("--insecure"), std::string::npos);
}

TEST_F(ServerTest, TlsNeedsCertAndKey) {
  Server::Options o = Options();
  o.tls_cert = root_ + "/cert.pem";
  EXPECT_FALSE(Server::Start(o).ok());
}

TEST_F(ServerTest, BadDeviceRejected) {
  Server::Options o = Options();
  o.device = "tpu";
  EXPECT_FALSE(Server::Start(o).ok());
}

TEST_F(ServerTest, UploadWithoutHeaderIsInvalidArgument) {
  auto server = Server::Start(Options());
  ASSERT_TRUE(server.ok()) << server.status();
  {
    grpc::Status s = Validate(**server, {Chunk("bytes before any header")});
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("header"), std::string::npos);
  }
  {
    // Announced size larger than what arrives: incomplete, not validated.
    grpc::Status s = Validate(**server, {Header("m", 100), Chunk("short")});
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("incomplete"), std::string::npos);
  }
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
}

// A 12 MiB safetensors checkpoint of one F32 tensor "w" (finite values),
// without weightgate's metadata, so an upload of it is normalised.
std::string TwelveMiBCheckpoint() {
  const int64_t n = int64_t{3} << 20;
  std::vector<checkpoint::SafetensorsEntry> entries = {{"w", checkpoint::DType::kF32, {n}}};
  std::string bytes = checkpoint::SafetensorsHeader(entries, {});
  for (int64_t i = 0; i < n; ++i) {
    float v = static_cast<float>(i % 1000) * 0.5f;
    bytes.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  return bytes;
}

std::shared_ptr<grpc::Channel> ChannelTo(const Server& server) {
  return grpc::CreateChannel("127.0.0.1:" + std::to_string(server.port()),
                             grpc::InsecureChannelCredentials());
}

void RegisterJsonSpec(const Server& server, const std::string& model_id, const std::string& spec) {
  auto stub = weightgate::v1::ModelRegistry::NewStub(ChannelTo(server));
  grpc::ClientContext ctx;
  weightgate::v1::Model model;
  auto writer = stub->RegisterModel(&ctx, &model);
  weightgate::v1::RegisterModelRequest header;
  header.mutable_header()->set_model_id(model_id);
  header.mutable_header()->set_total_bytes(static_cast<int64_t>(spec.size()));
  weightgate::v1::RegisterModelRequest chunk;
  chunk.set_chunk(spec);
  writer->Write(header);
  writer->Write(chunk);
  writer->WritesDone();
  grpc::Status s = writer->Finish();
  ASSERT_TRUE(s.ok()) << s.error_message();
}

// Uploads `bytes` cut into pieces of the given sizes (cycled).
grpc::Status UploadInPieces(const Server& server, const std::string& model_id,
                            const std::string& bytes, const std::vector<size_t>& sizes,
                            weightgate::v1::UploadResponse* response) {
  auto stub = weightgate::v1::ModelRegistry::NewStub(ChannelTo(server));
  grpc::ClientContext ctx;
  auto writer = stub->UploadCheckpoint(&ctx, response);
  weightgate::v1::UploadRequest header;
  header.mutable_header()->set_model_id(model_id);
  header.mutable_header()->set_total_bytes(static_cast<int64_t>(bytes.size()));
  writer->Write(header);
  size_t off = 0;
  for (size_t k = 0; off < bytes.size(); ++k) {
    size_t n = std::min(sizes[k % sizes.size()], bytes.size() - off);
    weightgate::v1::UploadRequest chunk;
    chunk.set_chunk(bytes.substr(off, n));
    if (!writer->Write(chunk)) break;
    off += n;
  }
  writer->WritesDone();
  return writer->Finish();
}

// Chunks are hashed and written while later ones are read; whatever the
// chunk sizes (empty, tiny, larger than what may wait to be written), the
// staged file holds the bytes in order, and the normalised output the store
// commits is named by the sha256 of what it holds.
TEST_F(ServerTest, UploadInManyPiecesIsStagedInOrderAndCommittedUnderItsHash) {
  Server::Options o = Options();
  o.validation_workers = 1;
  o.validation_worker_argv = {weightgate::testing::BinaryDir() + "/bin/weightgate-server",
                              "--validation_worker"};
  auto server = Server::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  RegisterJsonSpec(**server, "m", R"({"tensors": {"w": {"dtype": "F32", "shape": [3145728]}}})");
  const std::string bytes = TwelveMiBCheckpoint();
  weightgate::v1::UploadResponse response;
  grpc::Status s =
      UploadInPieces(**server, "m", bytes, {0, 1, 4096, 3 << 20, 7, 9 << 20, 65536}, &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(response.report().verdict(), weightgate::v1::VALID) << response.report().error();
  EXPECT_EQ(response.report().input_sha256(), common::Sha256Hex(bytes));
  ASSERT_FALSE(response.version().blob_sha256().empty());
  // Rewritten (other metadata), so not the uploaded bytes: the hash the
  // normaliser computed while writing names exactly what was written.
  EXPECT_NE(response.version().blob_sha256(), common::Sha256Hex(bytes));
  absl::StatusOr<std::string> on_disk =
      common::Sha256File(root_ + "/store/blobs/" + response.version().blob_sha256());
  ASSERT_TRUE(on_disk.ok()) << on_disk.status();
  EXPECT_EQ(*on_disk, response.version().blob_sha256());

  // The same bytes, one of them flipped in the header: refused, nothing stored.
  std::string corrupt = bytes;
  corrupt[10] = '\x01';
  weightgate::v1::UploadResponse refused;
  s = UploadInPieces(**server, "m", corrupt, {1 << 20}, &refused);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(refused.report().verdict(), weightgate::v1::INVALID);
  EXPECT_FALSE(refused.has_version());
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
}

TEST_F(ServerTest, UploadOverLimitIsResourceExhausted) {
  Server::Options o = Options();
  o.max_upload_bytes = 1024;
  auto server = Server::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  grpc::Status s = Validate(**server, {Header("m"), Chunk(std::string(4096, 'x'))});
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  // Nothing is left in staging once the call is over on the server too.
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server->reset();
  EXPECT_TRUE(std::filesystem::is_empty(root_ + "/store/tmp"));
}

}  // namespace
}  // namespace weightgate::service
