#include "client/common/flag_table.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace weightgate::client {
namespace {

// Help lines align the text after the flag column at this width, and wrap
// before this one.
constexpr size_t kHelpColumn = 28;
constexpr size_t kHelpWidth = 100;

// Appends `words` to *out, starting at column `column` and wrapping before
// kHelpWidth onto lines indented by `indent`.
void AppendWrapped(const std::vector<std::string>& words, size_t column, size_t indent,
                   std::string* out) {
  bool first = true;
  for (const std::string& word : words) {
    if (!first && column + 1 + word.size() > kHelpWidth) {
      absl::StrAppend(out, "\n", std::string(indent, ' '));
      column = indent;
    } else if (!first) {
      out->push_back(' ');
      ++column;
    }
    out->append(word);
    column += word.size();
    first = false;
  }
  out->push_back('\n');
}

const Flag* FindFlag(const CommandSpec& spec, absl::string_view name) {
  auto match = [&](const Flag& f) {
    return f.name == name || (!f.alias.empty() && f.alias == name);
  };
  for (const Flag& f : spec.flags) {
    if (match(f)) return &f;
  }
  for (const FlagGroup* group : spec.groups) {
    for (const Flag& f : group->flags) {
      if (match(f)) return &f;
    }
  }
  return nullptr;
}

absl::Status CheckChoice(const Flag& flag, const std::string& value) {
  if (flag.choices.empty()) return absl::OkStatus();
  std::vector<absl::string_view> choices = absl::StrSplit(flag.choices, '|');
  if (std::find(choices.begin(), choices.end(), value) != choices.end()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(flag.name, ": '", value, "' is not one of ", absl::StrJoin(choices, ", ")));
}

bool IsHelp(const std::string& arg) { return arg == "-h" || arg == "--help"; }

std::string FlagColumn(const Flag& flag) {
  std::string column = std::string(flag.name);
  if (!flag.alias.empty()) column = absl::StrCat(flag.alias, ", ", column);
  if (flag.takes_value()) absl::StrAppend(&column, " ", flag.value_name);
  return column;
}

void AppendFlagLine(const Flag& flag, std::string* out) {
  std::string column = FlagColumn(flag);
  absl::StrAppend(out, "  ", column);
  if (column.size() + 1 < kHelpColumn) {
    out->append(kHelpColumn - column.size(), ' ');
  } else {
    absl::StrAppend(out, "\n  ", std::string(kHelpColumn, ' '));
  }
  AppendWrapped(absl::StrSplit(flag.help, ' ', absl::SkipEmpty()), 2 + kHelpColumn, 2 + kHelpColumn,
                out);
}

}  // namespace

bool ParsedArgs::Has(absl::string_view name) const {
  return std::any_of(in_order.begin(), in_order.end(),
                     [&](const auto& kv) { return kv.first == name; });
}

std::string ParsedArgs::Get(absl::string_view name, std::string fallback) const {
  for (auto it = in_order.rbegin(); it != in_order.rend(); ++it) {
    if (it->first == name) return it->second;
  }
  return fallback;
}

std::vector<std::string> ParsedArgs::All(absl::string_view name) const {
  std::vector<std::string> values;
  for (const auto& [flag, value] : in_order) {
    if (flag == name) values.push_back(value);
  }
  return values;
}

absl::StatusOr<ParsedArgs> ParseArgs(const CommandSpec& spec,
                                     const std::vector<std::string>& args) {
  ParsedArgs parsed;
  for (const std::string& a : args) {
    if (a == "--") break;
    if (IsHelp(a)) {
      parsed.help = true;
      return parsed;
    }
  }
  bool only_positional = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (only_positional || a.size() < 2 || a[0] != '-') {
      parsed.positional.push_back(a);
      continue;
    }
    if (a == "--") {
      only_positional = true;
      continue;
    }
    std::string name = a;
    std::string value;
    bool attached = false;
    if (size_t eq = a.find('='); eq != std::string::npos) {
      name = a.substr(0, eq);
      value = a.substr(eq + 1);
      attached = true;
    }
    const Flag* flag = FindFlag(spec, name);
    if (flag == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag '", a, "'"));
    if (!flag->takes_value()) {
      if (attached) return absl::InvalidArgumentError(absl::StrCat(name, " takes no value"));
      value = "true";
    } else if (!attached) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat(name, " needs a value"));
      }
      value = args[++i];
    }
    if (absl::Status s = CheckChoice(*flag, value); !s.ok()) return s;
    parsed.in_order.emplace_back(std::string(flag->name), std::move(value));
  }
  if (parsed.positional.size() < spec.min_args || parsed.positional.size() > spec.max_args) {
    return absl::InvalidArgumentError(std::string(spec.args_error));
  }
  for (const Flag& flag : spec.flags) {
    if (flag.required && !parsed.Has(flag.name)) {
      return absl::InvalidArgumentError(absl::StrCat(flag.alias.empty() ? flag.name : flag.alias,
                                                     " ", flag.value_name, " is required"));
    }
  }
  return parsed;
}

std::string GroupHelp(const FlagGroup& group) {
  std::string out = absl::StrCat(group.title, ":\n");
  for (const Flag& flag : group.flags) AppendFlagLine(flag, &out);
  return out;
}

std::string HelpText(const CommandSpec& spec) {
  std::string out = absl::StrCat("usage: ", spec.program, " ");
  std::vector<std::string> words;
  if (!spec.synopsis.empty()) words.push_back(std::string(spec.synopsis));
  for (const Flag& flag : spec.flags) {
    std::string word(flag.alias.empty() ? flag.name : flag.alias);
    if (flag.takes_value()) absl::StrAppend(&word, " ", flag.value_name);
    if (!flag.required) word = absl::StrCat("[", word, "]");
    words.push_back(absl::StrCat(word, flag.repeatable ? "..." : ""));
  }
  for (const FlagGroup* group : spec.groups) words.push_back(absl::StrCat("[", group->title, "]"));
  AppendWrapped(words, out.size(), out.size(), &out);
  for (absl::string_view line : absl::StrSplit(spec.description, '\n', absl::SkipEmpty())) {
    absl::StrAppend(&out, "  ", line, "\n");
  }
  if (!spec.flags.empty()) {
    out += "flags:\n";
    for (const Flag& flag : spec.flags) AppendFlagLine(flag, &out);
  }
  for (const FlagGroup* group : spec.groups) out += GroupHelp(*group);
  return out;
}

}  // namespace weightgate::client
