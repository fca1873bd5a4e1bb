// Shared helpers for the server/checkpoint tests: fixtures written by
// tests/fixtures/make_checkpoint_fixtures.py (real torch) under the build
// tree, and a way to read a tensor's bytes through its record the way torch
// addresses them (strided gather), to compare with torch.load's output.
#ifndef WEIGHTGATE_TESTS_CHECKPOINT_CHECKPOINT_TEST_UTIL_H_
#define WEIGHTGATE_TESTS_CHECKPOINT_CHECKPOINT_TEST_UTIL_H_

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "common/sha256.h"
#include "gtest/gtest.h"
#include "server/checkpoint/checkpoint.h"
#include "tests/fixtures/fixture_dir.h"

namespace weightgate::checkpoint::testing {

using ::weightgate::testing::ReadWholeFile;

inline bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// Written by tests/fixtures/make_checkpoint_fixtures.py; see
// tests/fixtures/fixture_dir.h.
inline const std::string& FixtureDir() {
  static const std::string dir =
      ::weightgate::testing::GenerateFixtures("checkpoint", {"make_checkpoint_fixtures.py"});
  return dir;
}

// The attack classes of make_hostile_fixtures.py (manifest.tsv lists them).
inline const std::string& HostileFixtureDir() {
  static const std::string dir =
      ::weightgate::testing::GenerateFixtures("hostile", {"make_hostile_fixtures.py"});
  return dir;
}

// The file's bytes (the name these tests use).
inline std::string ReadFileBytes(const std::string& path) { return ReadWholeFile(path); }

using common::Sha256Hex;

// The tensor's elements in row-major order, gathered through its strides.
inline std::string GatherTensorBytes(const Checkpoint& ckpt, const TensorRecord& t) {
  std::string_view storage = ckpt.StorageBytes(t.storage_index);
  const size_t item = ItemSize(t.dtype);
  int64_t numel = t.numel();
  std::string out;
  if (numel == 0) return out;
  out.reserve(static_cast<size_t>(numel) * item);
  std::vector<int64_t> idx(t.shape.size(), 0);
  for (int64_t n = 0; n < numel; ++n) {
    int64_t off = t.storage_offset;
    for (size_t d = 0; d < idx.size(); ++d) off += idx[d] * t.strides[d];
    size_t byte = static_cast<size_t>(off) * item;
    if (byte + item > storage.size()) return "<out of range>";
    out.append(storage.substr(byte, item));
    for (size_t d = idx.size(); d-- > 0;) {
      if (++idx[d] < t.shape[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

struct ExpectedTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<int64_t> stride;
  int64_t offset = 0;
  std::string sha256;
  int storage = -1;
};

inline std::vector<int64_t> ParseInts(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, ',')) {
    if (!part.empty()) out.push_back(std::stoll(part));
  }
  return out;
}

// <fixture dir>/<name>.tensors.tsv as written by the generator.
inline std::vector<ExpectedTensor> ReadExpectedTensors(const std::string& name) {
  std::vector<ExpectedTensor> out;
  std::ifstream in(FixtureDir() + "/" + name + ".tensors.tsv");
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::stringstream ss(line);
    std::string part;
    while (std::getline(ss, part, '\t')) f.push_back(part);
    while (f.size() < 7) f.emplace_back();
    ExpectedTensor e;
    e.name = f[0];
    e.dtype = f[1];
    e.shape = ParseInts(f[2]);
    e.stride = ParseInts(f[3]);
    e.offset = f[4].empty() ? 0 : std::stoll(f[4]);
    e.sha256 = f[5];
    e.storage = f[6].empty() ? -1 : std::stoi(f[6]);
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace weightgate::checkpoint::testing

#endif  // WEIGHTGATE_TESTS_CHECKPOINT_CHECKPOINT_TEST_UTIL_H_
