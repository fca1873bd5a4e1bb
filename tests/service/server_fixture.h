// The service tests' fixture: a scratch folder for the store (removed after
// each test), options for a server on a free loopback port without metrics,
// and an insecure channel to a started server.
#ifndef WEIGHTGATE_TESTS_SERVICE_SERVER_FIXTURE_H_
#define WEIGHTGATE_TESTS_SERVICE_SERVER_FIXTURE_H_

#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/service/server.h"
#include "weightgate/v1/registry.grpc.pb.h"

namespace weightgate::service {

class ServerFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/wg-service-test-XXXXXX";
    root_ = ::mkdtemp(tmpl);
  }
  void TearDown() override { std::filesystem::remove_all(root_); }

  Server::Options Options() const {
    Server::Options o;
    o.listen = "127.0.0.1:0";
    o.metrics_listen = "";
    o.store = root_ + "/store";
    return o;
  }

  static std::shared_ptr<grpc::Channel> Channel(const Server& server) {
    return grpc::CreateChannel("127.0.0.1:" + std::to_string(server.port()),
                               grpc::InsecureChannelCredentials());
  }

  // Sends `messages` on one ValidateCheckpoint stream and returns its status.
  static grpc::Status Validate(const Server& server,
                               const std::vector<weightgate::v1::UploadRequest>& messages) {
    auto stub = weightgate::v1::ModelRegistry::NewStub(Channel(server));
    grpc::ClientContext ctx;
    weightgate::v1::ValidationReport report;
    auto writer = stub->ValidateCheckpoint(&ctx, &report);
    for (const weightgate::v1::UploadRequest& m : messages) writer->Write(m);
    writer->WritesDone();
    return writer->Finish();
  }
  static weightgate::v1::UploadRequest Header(const std::string& model_id,
                                              int64_t total_bytes = 0) {
    weightgate::v1::UploadRequest m;
    m.mutable_header()->set_model_id(model_id);
    if (total_bytes > 0) m.mutable_header()->set_total_bytes(total_bytes);
    return m;
  }
  static weightgate::v1::UploadRequest Chunk(std::string bytes) {
    weightgate::v1::UploadRequest m;
    m.set_chunk(std::move(bytes));
    return m;
  }

  std::string root_;
};

}  // namespace weightgate::service

#endif  // WEIGHTGATE_TESTS_SERVICE_SERVER_FIXTURE_H_
