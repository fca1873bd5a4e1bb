#include "server/service/server.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/service/auth.h"
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
