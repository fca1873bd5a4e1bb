// The service edge under abuse: limits, timeouts, roles and policy
// overrides, through a real server on loopback.
#include <malloc.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/service/auth.h"
#include "server/service/policy_check.h"
#include "server/service/server.h"
#include "server/store/store.h"
#include "tests/service/server_fixture.h"
#include "weightgate/v1/registry.grpc.pb.h"
#include "weightgate/v1/stream.grpc.pb.h"

namespace weightgate::service {
namespace {

using weightgate::v1::NormalizationPolicy;

// Anonymous resident memory of this process (heap, not the mapped blobs).
int64_t RssAnonKb() {
  std::ifstream in("/proc/self/status");
  std::string key;
  int64_t value = 0;
  while (in >> key) {
    if (key == "RssAnon:") {
      in >> value;
      return value;
    }
    in.ignore(1 << 20, '\n');
  }
  return -1;
}

// A safetensors file of one F32 tensor "w" with `floats` elements.
std::string Safetensors(size_t floats) {
  std::string header = "{\"w\":{\"dtype\":\"F32\",\"shape\":[" + std::to_string(floats) +
                       "],\"data_offsets\":[0," + std::to_string(floats * 4) + "]}}";
  while ((8 + header.size()) % 8 != 0) header.push_back(' ');
  std::string out(8, '\0');
  uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  out += header;
  out.append(floats * 4, '\x01');
  return out;
}

class EdgeTest : public ServerFixture {
 protected:
  Server::Options Options() const {
    Server::Options o = ServerFixture::Options();
    o.access_log = false;
    return o;
  }

  // Stores model "m" with one version of `bytes` (as another replica would).
  void StoreModel(const std::string& bytes) {
    store::Store::Options so;
    so.root = root_ + "/store";
    auto store = *store::Store::Open(so);
    weightgate::v1::Model model;
    model.set_model_id("m");
    auto* t = model.mutable_spec()->add_tensors();
    t->set_name("w");
    t->set_dtype("F32");
    t->add_shape(static_cast<int64_t>((bytes.size() - 64) / 4));
    model.mutable_policy()->set_non_finite(NormalizationPolicy::NONFINITE_REJECT);
    ASSERT_TRUE(store->PutModel(model).ok());
    auto staged = *store->NewStagedFile();
    ASSERT_TRUE(staged->Append(bytes).ok());
    ASSERT_TRUE(store->CommitVersion("m", std::move(staged), {}, "").ok());
  }
};

TEST_F(EdgeTest, HeaderOnlyUploadsTimeOutAndGiveBackTheirSlots) {
  Server::Options o = Options();
  o.max_uploads = 4;
  o.idle_upload_timeout_ms = 300;
  auto server = Server::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = weightgate::v1::ModelRegistry::NewStub(Channel(**server));
  struct Call {
    grpc::ClientContext ctx;
    weightgate::v1::ValidationReport report;
    std::unique_ptr<grpc::ClientWriter<weightgate::v1::UploadRequest>> writer;
  };
  auto open = [&](Call& c) {
    c.writer = stub->ValidateCheckpoint(&c.ctx, &c.report);
    weightgate::v1::UploadRequest header;
    header.mutable_header()->set_model_id("m");
    c.writer->Write(header);  // and nothing more
  };
  std::vector<std::unique_ptr<Call>> calls;
  for (int i = 0; i < 4; ++i) {
    calls.push_back(std::make_unique<Call>());
    open(*calls.back());
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  // The fifth is refused at once, with a retry hint.
  {
    Call extra;
    open(extra);
    grpc::Status s = extra.writer->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
    EXPECT_NE(s.error_message().find("--max_uploads"), std::string::npos);
    EXPECT_EQ(extra.ctx.GetServerTrailingMetadata().count("retry-after-ms"), 1u);
  }
  // The idle ones are cancelled by the server, staged files removed...
  for (auto& c : calls) {
    grpc::Status s = c->writer->Finish();
    EXPECT_FALSE(s.ok());
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  int staged = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(root_ + "/store/tmp")) {
    staged += e.is_regular_file();
  }
  EXPECT_EQ(staged, 0);
  // ...and their slots are free again.
  Call after;
  open(after);
  after.writer->WritesDone();
  grpc::Status s = after.writer->Finish();
  EXPECT_NE(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

TEST_F(EdgeTest, StalledReadersAreCancelledAndTheirMemoryReturned) {
  StoreModel(Safetensors(16 << 20));  // 64 MiB
  Server::Options o = Options();
  o.stalled_reader_timeout_ms = 500;
  o.max_streams = 40;
  auto server = Server::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  // A stalled reader is a client whose receive window is full: keep the
  // window small and fixed so it fills (no BDP probing growing it).
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 10);
  auto channel = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string((*server)->port()),
                                           grpc::InsecureChannelCredentials(), args);
  auto stub = weightgate::v1::WeightStream::NewStub(channel);
  int64_t before = RssAnonKb();
  struct Reader {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReader<weightgate::v1::FetchResponse>> reader;
  };
  std::vector<std::unique_ptr<Reader>> readers;
  for (int i = 0; i < 40; ++i) {
    auto r = std::make_unique<Reader>();
    weightgate::v1::FetchRequest request;
    request.set_ref("m");
    request.set_chunk_bytes(8 << 20);  // clamped to --max_chunk_bytes (1 MiB)
    r->reader = stub->FetchWeights(&r->ctx, request);
    weightgate::v1::FetchResponse manifest;
    ASSERT_TRUE(r->reader->Read(&manifest));  // then read nothing more
    readers.push_back(std::move(r));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  int64_t stalled = RssAnonKb();
  // A 41st stream is refused while they hold their slots.
  {
    grpc::ClientContext ctx;
    weightgate::v1::FetchRequest request;
    request.set_ref("m");
    auto reader = stub->FetchWeights(&ctx, request);
    weightgate::v1::FetchResponse response;
    while (reader->Read(&response)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_EQ((*server)->timeouts(), 40u);
  for (auto& r : readers) {
    r->ctx.TryCancel();  // drop what the client side buffered
    EXPECT_FALSE(r->reader->Finish().ok());
  }
  readers.clear();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  ::malloc_trim(0);  // the client half's buffers live in this process too
  int64_t after = RssAnonKb();
  std::cerr << "RssAnon kB: before " << before << ", 40 stalled readers " << stalled
            << ", after timeout " << after << "\n";
  // Client and server share this process, so `stalled` includes the client's
  // receive windows too; what matters is that it is bounded and given back.
  EXPECT_LT(stalled - before, 40 * 4 * 1024);
  EXPECT_LT(after - before, 16 * 1024);
  // Slots are free again: a full fetch works.
  grpc::ClientContext ctx;
  weightgate::v1::FetchRequest request;
  request.set_ref("m");
  auto reader = stub->FetchWeights(&ctx, request);
  weightgate::v1::FetchResponse response;
  uint64_t bytes = 0;
  uint64_t total = 0;
  while (reader->Read(&response)) {
    if (response.has_manifest()) total = response.manifest().total_bytes();
    bytes += response.chunk().data().size();
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_GT(total, (16u << 20) * 4);
  EXPECT_EQ(bytes, total);
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

// Space is checked before bytes are accepted: the staging total across
// uploads, and the free-disk reserve that keeps metadata writes possible.
TEST_F(EdgeTest, StagingTotalAndFreeDiskReserveRefuseBytesBeforeWriting) {
  auto upload = [&](const Server& server, size_t bytes) {
    return Validate(server, {Header("m"), Chunk(std::string(bytes, 'x'))});
  };
  {
    Server::Options o = Options();
    o.min_free_bytes = uint64_t{1} << 60;  // more than any disk has
    auto server = Server::Start(o);
    ASSERT_TRUE(server.ok()) << server.status();
    grpc::Status s = upload(**server, 4096);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_NE(s.error_message().find("--min_free_bytes"), std::string::npos) << s.error_message();
    (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }
  {
    Server::Options o = Options();
    o.max_staged_bytes = 1000;
    auto server = Server::Start(o);
    ASSERT_TRUE(server.ok()) << server.status();
    grpc::Status s = upload(**server, 4096);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_NE(s.error_message().find("--max_staged_bytes"), std::string::npos) << s.error_message();
    (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }
  int staged = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(root_ + "/store/tmp")) {
    staged += e.is_regular_file() && e.file_size() > 0;
  }
  EXPECT_EQ(staged, 0);
}

TEST(PolicyCheckTest, OverridesMayOnlyTighten) {
  NormalizationPolicy model;
  EXPECT_TRUE(CheckOverrideOnlyTightens(model, model).ok());
  NormalizationPolicy p = model;
  p.mutable_optional_keys()->add_values("*");
  EXPECT_EQ(CheckOverrideOnlyTightens(model, p).code(), absl::StatusCode::kPermissionDenied);
  p = model;
  p.mutable_optional_keys();  // set and empty: nothing may be missing (stricter)
  EXPECT_TRUE(CheckOverrideOnlyTightens(model, p).ok());
  p = model;
  p.set_non_finite(NormalizationPolicy::NONFINITE_ALLOW);
  EXPECT_FALSE(CheckOverrideOnlyTightens(model, p).ok());
  p = model;
  p.set_positional_remap(true);
  EXPECT_FALSE(CheckOverrideOnlyTightens(model, p).ok());
  p = model;
  p.set_dtype(NormalizationPolicy::DTYPE_REJECT);
  p.set_unexpected(NormalizationPolicy::UNEXPECTED_REJECT);
  p.set_prefixes(NormalizationPolicy::PREFIX_NONE);
  EXPECT_TRUE(CheckOverrideOnlyTightens(model, p).ok());
  p = model;
  p.set_dtype(NormalizationPolicy::DTYPE_KEEP);
  EXPECT_FALSE(CheckOverrideOnlyTightens(model, p).ok());
  p = model;
  p.add_rename_rules()->set_pattern("^x");
  EXPECT_FALSE(CheckOverrideOnlyTightens(model, p).ok());
  p = model;
  p.set_prefixes(NormalizationPolicy::PREFIX_ANY);
  EXPECT_FALSE(CheckOverrideOnlyTightens(model, p).ok());
  p = model;
  p.set_key_prefix("student.");
  EXPECT_FALSE(CheckOverrideOnlyTightens(model, p).ok());
  p = model;
  p.set_weights(NormalizationPolicy::WEIGHTS_EMA);  // a choice the model leaves open
  EXPECT_TRUE(CheckOverrideOnlyTightens(model, p).ok());
  EXPECT_FALSE(CheckOverrideOnlyTightens(p, model).ok());
  NormalizationPolicy strict;
  strict.set_prefixes(NormalizationPolicy::PREFIX_NONE);
  strict.set_container("state_dict");
  EXPECT_FALSE(CheckOverrideOnlyTightens(strict, model).ok());
}

TEST(AuthorizerTest, RolesNestAndReloadReplacesTokens) {
  std::string path = "/tmp/wg-roles-" + std::to_string(::getpid());
  std::ofstream(path) << "r reader\nw writer ci-bot\na admin\n";
  auto auth = Authorizer::Create(path);
  ASSERT_TRUE(auth.ok()) << auth.status();
  std::filesystem::remove(path);
  // Reload of a missing file keeps the old tokens.
  EXPECT_FALSE((*auth)->Reload().ok());
  std::ofstream(path) << "new admin\n";
  EXPECT_TRUE((*auth)->Reload().ok());
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace weightgate::service
