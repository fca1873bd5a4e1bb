// Fixtures of the statedict tests: written once per generator version by
// tests/fixtures/make_statedict_fixtures.py (Debian's python3-torch) under
// $WG_BINARY_DIR/fixtures/statedict-<hash>. Test binaries run in parallel, so
// each generates into a private temporary directory and renames it into
// place; the loser of the race removes its copy.
#ifndef WEIGHTGATE_TESTS_STATEDICT_STATEDICT_FIXTURES_H_
#define WEIGHTGATE_TESTS_STATEDICT_STATEDICT_FIXTURES_H_

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>

#include "gtest/gtest.h"

namespace weightgate::testing {

inline std::string Env(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

inline std::string SourceDir() { return Env("WG_SOURCE_DIR", WG_SOURCE_DIR); }
inline std::string BinaryDir() { return Env("WG_BINARY_DIR", WG_BINARY_DIR); }

inline std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline bool IsDir(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Runs `command` through the shell; returns its exit status and stdout+stderr.
inline int RunCommand(const std::string& command, std::string* output) {
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return -1;
  char buf[4096];
  size_t n;
  output->clear();
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) output->append(buf, n);
  int status = ::pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// The fixture directory ("" after a reported failure).
inline const std::string& StatedictFixtureDir() {
  static const std::string dir = [] {
    const std::string fixtures = SourceDir() + "/tests/fixtures";
    const std::string script = fixtures + "/make_statedict_fixtures.py";
    const size_t hash = std::hash<std::string>{}(ReadWholeFile(script) +
                                                 ReadWholeFile(fixtures + "/statedict_model.py"));
    char hex[32];
    std::snprintf(hex, sizeof hex, "%016zx", hash);
    const std::string parent = BinaryDir() + "/fixtures";
    const std::string final_dir = parent + "/statedict-" + hex;
    if (IsDir(final_dir)) return final_dir;
    ::mkdir(parent.c_str(), 0755);
    std::string tmpl = parent + "/statedict.tmp.XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      ADD_FAILURE() << "mkdtemp under " << parent;
      return std::string();
    }
    std::string log;
    int rc = RunCommand("/usr/bin/python3 '" + script + "' '" + tmpl + "'", &log);
    if (rc != 0) {
      ADD_FAILURE() << "fixture generator failed (" << rc << "): " << log;
      std::string ignored;
      RunCommand("rm -rf '" + tmpl + "'", &ignored);
      return std::string();
    }
    if (::rename(tmpl.c_str(), final_dir.c_str()) != 0) {
      // Another test process won the race; its fixtures are identical.
      std::string ignored;
      RunCommand("rm -rf '" + tmpl + "'", &ignored);
    }
    return final_dir;
  }();
  return dir;
}

// A fresh scratch directory for one test's outputs.
inline std::string ScratchDir() {
  const std::string parent = BinaryDir() + "/fixtures";
  ::mkdir(parent.c_str(), 0755);
  std::string tmpl = parent + "/statedict-out.XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) return parent;
  return tmpl;
}

}  // namespace weightgate::testing

#endif  // WEIGHTGATE_TESTS_STATEDICT_STATEDICT_FIXTURES_H_
