// OutputWriter's forms and ties: the stored safetensors form holds a tied
// tensor's bytes once and records the tie in its metadata; plain safetensors
// holds every name's bytes; a tie the format cannot hold is refused.
#include "server/statedict/output_writer.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/mapped_file.h"
#include "gtest/gtest.h"
#include "server/checkpoint/safetensors.h"

namespace weightgate::statedict {
namespace {

using checkpoint::DType;

class OutputWriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/wg-output-writer-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // embed [2,3] F32, norm [3] F32, head tied to embed.
  static std::vector<OutputWriter::Entry> TiedEntries() {
    return {{"embed.weight", DType::kF32, {2, 3}},
            {"norm.bias", DType::kF32, {3}},
            {"head.weight", DType::kF32, {2, 3}, /*tied_to=*/0}};
  }

  // Writes TiedEntries() in `format`, appending only what NeedsBytes asks for.
  std::string Write(OutputWriter::Format format, const std::string& name) {
    const std::string path = dir_ + "/" + name;
    auto w = OutputWriter::Create(path, format, TiedEntries(), {{"format", "pt"}});
    EXPECT_TRUE(w.ok()) << w.status();
    if (!w.ok()) return path;
    const std::string bytes[] = {std::string(24, 'e'), std::string(12, 'n'), std::string(24, 'e')};
    for (size_t k = 0; k < 3; ++k) {
      if ((*w)->NeedsBytes(k)) {
        EXPECT_TRUE((*w)->Append(bytes[k]).ok());
      }
    }
    absl::Status s = (*w)->Finish();
    EXPECT_TRUE(s.ok()) << s;
    return path;
  }

  static std::string Header(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string all = ss.str();
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(all[i]);
    return all.substr(8, n);
  }

  std::string dir_;
};

TEST_F(OutputWriterTest, StoredFormHoldsTiedBytesOnceAndRecordsTheTie) {
  const std::string path = Write(OutputWriter::Format::kStoredSafetensors, "stored.safetensors");
  const std::string header = Header(path);
  EXPECT_EQ(std::filesystem::file_size(path), 8 + header.size() + 24 + 12);
  EXPECT_EQ(header.find("\"head.weight\":{"), std::string::npos) << header;
  EXPECT_NE(header.find("\"weightgate.tied_to:head.weight\":\"embed.weight\""), std::string::npos)
      << header;

  auto file = common::MappedFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  auto ckpt = checkpoint::ReadSafetensors(*file);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::vector<checkpoint::NamedTensor> tensors = checkpoint::FlattenTensors(ckpt->root);
  ASSERT_EQ(tensors.size(), 3u);
  EXPECT_EQ(tensors[2].name, "head.weight");
  EXPECT_EQ(tensors[2].tensor->storage_index, tensors[0].tensor->storage_index);
  EXPECT_EQ(ckpt->TensorStorageBytes(*tensors[2].tensor).substr(0, 24), std::string(24, 'e'));
}

TEST_F(OutputWriterTest, PlainSafetensorsHoldsEveryName) {
  const std::string path = Write(OutputWriter::Format::kSafetensors, "plain.safetensors");
  const std::string header = Header(path);
  EXPECT_EQ(std::filesystem::file_size(path), 8 + header.size() + 24 + 12 + 24);
  EXPECT_NE(header.find("\"head.weight\":{"), std::string::npos) << header;
  EXPECT_EQ(header.find("tied_to"), std::string::npos) << header;
}

TEST_F(OutputWriterTest, StoredFormRefusesATieItCannotRecord) {
  std::vector<OutputWriter::Entry> later = {{"head.weight", DType::kF32, {2, 3}, /*tied_to=*/1},
                                            {"embed.weight", DType::kF32, {2, 3}}};
  std::vector<OutputWriter::Entry> reshaped = {{"embed.weight", DType::kF32, {2, 3}},
                                               {"head.weight", DType::kF32, {3, 2}, 0}};
  std::vector<OutputWriter::Entry> chained = {
      {"a", DType::kF32, {2}}, {"b", DType::kF32, {2}, 0}, {"c", DType::kF32, {2}, 1}};
  for (auto* entries : {&later, &reshaped, &chained}) {
    auto w = OutputWriter::Create(dir_ + "/bad.safetensors",
                                  OutputWriter::Format::kStoredSafetensors, *entries);
    ASSERT_FALSE(w.ok());
    EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument) << w.status();
  }
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/bad.safetensors"));
}

}  // namespace
}  // namespace weightgate::statedict
