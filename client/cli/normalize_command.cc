// `weightgate normalize ...`: execs weightgate-normalize (client/normalize/),
// which sits beside this binary and alone loads libtorch. Its flags and
// --help are that program's.
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "client/cli/command_line.h"
#include "client/cli/commands.h"

namespace weightgate::cli {

int RunNormalize(const GlobalOptions& global, const Args& args, const char* argv0) {
  std::string self(4096, '\0');
  ssize_t n = ::readlink("/proc/self/exe", self.data(), self.size() - 1);
  std::string dir = n > 0 ? self.substr(0, static_cast<size_t>(n)) : std::string(argv0);
  dir = dir.substr(0, dir.rfind('/') == std::string::npos ? 0 : dir.rfind('/'));
  std::string helper = (dir.empty() ? std::string(".") : dir) + "/weightgate-normalize";
  std::vector<std::string> argv_strings = {helper};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  if (global.json) argv_strings.push_back("--json");
  std::vector<char*> argv;
  for (std::string& s : argv_strings) argv.push_back(s.data());
  argv.push_back(nullptr);
  ::execv(helper.c_str(), argv.data());
  return UsageError("normalize", absl::StrCat("cannot run ", helper, ": ", std::strerror(errno)));
}

}  // namespace weightgate::cli
