// Command-line flags as data. Each command states its flags once, in a table
// that serves parsing, validation and --help, so the three cannot drift apart.
//
//   --name VALUE, --name=VALUE   a flag with a value (value_name set)
//   --name                       a switch (no value_name)
//   -h, --help                   help (anywhere before "--")
//   --                           everything after it is positional
//
// Errors are one line, meant to be printed after "program: command: ".
#ifndef WEIGHTGATE_CLIENT_COMMON_FLAG_TABLE_H_
#define WEIGHTGATE_CLIENT_COMMON_FLAG_TABLE_H_

#include <cstddef>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace weightgate::client {

struct Flag {
  // "--format".
  absl::string_view name;
  // What --help shows after the name ("NAME", "safetensors|pt"); empty for a
  // switch, which takes no value.
  absl::string_view value_name = {};
  // One line for --help.
  absl::string_view help;
  // When set ("safetensors|pt"), the value must be one of these words.
  absl::string_view choices = {};
  // A second spelling ("-o" for "--output").
  absl::string_view alias = {};
  // May be given several times (--help shows "..."); otherwise the last wins.
  bool repeatable = false;
  // Must be given ("-o OUT is required").
  bool required = false;

  bool takes_value() const { return !value_name.empty(); }
};

// Flags several commands share (e.g. the policy flags), with a --help title.
struct FlagGroup {
  absl::string_view title;
  std::vector<Flag> flags = {};
};

struct CommandSpec {
  // "weightgate fetch": what --help prints after "usage: ".
  absl::string_view program;
  // Positional arguments in the synopsis ("REF", "MODEL FILE").
  absl::string_view synopsis = {};
  // Paragraph under the usage line, each line indented by two spaces.
  absl::string_view description = {};
  std::vector<Flag> flags = {};
  // Shared groups this command also accepts.
  std::vector<const FlagGroup*> groups = {};
  // Number of positional arguments, and the error when it is off.
  size_t min_args = 0;
  size_t max_args = 0;
  absl::string_view args_error = {};
};

struct ParsedArgs {
  bool help = false;
  std::vector<std::string> positional;
  // Every flag given, by canonical name, in command-line order.
  std::vector<std::pair<std::string, std::string>> in_order;

  bool Has(absl::string_view name) const;
  // The last value given for `name`, or `fallback`.
  std::string Get(absl::string_view name, std::string fallback = "") const;
  // Every value given for `name`, in order.
  std::vector<std::string> All(absl::string_view name) const;
};

// Parses `args` (the words after the command) against `spec`: unknown flags,
// missing or unexpected values, values outside `choices`, a wrong number of
// positional arguments and a missing required flag are InvalidArgument. With -h/--help, returns at
// once with help set and nothing validated.
absl::StatusOr<ParsedArgs> ParseArgs(const CommandSpec& spec, const std::vector<std::string>& args);

// "usage: <program> <synopsis> [flags]\n", the description, then one line
// per flag and group.
std::string HelpText(const CommandSpec& spec);

// The flag lines of one group under its title, as HelpText prints them.
std::string GroupHelp(const FlagGroup& group);

}  // namespace weightgate::client

#endif  // WEIGHTGATE_CLIENT_COMMON_FLAG_TABLE_H_
