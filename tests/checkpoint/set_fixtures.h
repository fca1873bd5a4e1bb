// The multi-file fixtures (tests/fixtures/make_multifile_fixtures.py),
// written once per build tree under <build>/fixtures/multifile by Debian's
// python3-torch, again when the generator changes.
#ifndef WEIGHTGATE_TESTS_CHECKPOINT_SET_FIXTURES_H_
#define WEIGHTGATE_TESTS_CHECKPOINT_SET_FIXTURES_H_

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

#include "gtest/gtest.h"

namespace weightgate::checkpoint::testing {

inline std::string SetEnvOr(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

// Runs make_multifile_fixtures.py once per build tree (again when it changes).
inline std::string SetFixtureDir() {
  static const std::string dir = [] {
    std::string bin = SetEnvOr("WG_BINARY_DIR", WG_BINARY_DIR);
    std::string src = SetEnvOr("WG_SOURCE_DIR", WG_SOURCE_DIR);
    std::string script = src + "/tests/fixtures/make_multifile_fixtures.py";
    std::string out = bin + "/fixtures/multifile";
    struct stat st {};
    ::stat(script.c_str(), &st);
    std::string stamp = std::to_string(st.st_mtime) + ":" + std::to_string(st.st_size) + "\n";
    auto fresh = [&] {
      if (::access((out + "/DONE").c_str(), F_OK) != 0) return false;
      std::ifstream in(out + "/STAMP");
      std::string have((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      return have == stamp;
    };
    if (fresh()) return out;
    ::mkdir((bin + "/fixtures").c_str(), 0755);
    std::string tmp = out + ".tmp." + std::to_string(::getpid());
    std::string cmd = "/usr/bin/python3 '" + script + "' '" + tmp + "' >'" + tmp + ".log' 2>&1";
    if (std::system(cmd.c_str()) != 0) {
      std::ifstream log(tmp + ".log");
      std::stringstream ss;
      ss << log.rdbuf();
      ADD_FAILURE() << "fixture generator failed: " << ss.str();
    } else {
      std::ofstream(tmp + "/STAMP") << stamp;
      std::string old = out + ".old." + std::to_string(::getpid());
      if (!fresh()) std::rename(out.c_str(), old.c_str());
      if (std::rename(tmp.c_str(), out.c_str()) != 0) std::system(("rm -rf '" + tmp + "'").c_str());
      std::system(("rm -rf '" + old + "'").c_str());
    }
    std::remove((tmp + ".log").c_str());
    return out;
  }();
  return dir;
}

inline std::string Fx(const std::string& name) { return SetFixtureDir() + "/" + name; }

}  // namespace weightgate::checkpoint::testing

#endif  // WEIGHTGATE_TESTS_CHECKPOINT_SET_FIXTURES_H_
