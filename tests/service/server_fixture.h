// The service tests' fixture: a scratch folder for the store (removed after
// each test), options for a server on a free loopback port without metrics,
// and an insecure channel to a started server.
#ifndef WEIGHTGATE_TESTS_SERVICE_SERVER_FIXTURE_H_
#define WEIGHTGATE_TESTS_SERVICE_SERVER_FIXTURE_H_

#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/service/server.h"

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

  std::string root_;
};

}  // namespace weightgate::service

#endif  // WEIGHTGATE_TESTS_SERVICE_SERVER_FIXTURE_H_
