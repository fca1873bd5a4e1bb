#include "server/statedict/renamer.h"

#include <re2/re2.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace weightgate::statedict {

namespace v1 = weightgate::v1;

struct CompiledRenameRule {
  std::unique_ptr<re2::RE2> re;
  std::string rewrite;  // RE2 spelling: \0..\9, '\\' for a backslash
  std::string pattern;  // as the user wrote it, for messages
  int groups = 0;       // submatches the rewrite needs, plus the whole match
};

namespace {

// The user's replacement ($1, $&, $$, \1, \\) in RE2's rewrite spelling.
absl::StatusOr<std::string> ToRe2Rewrite(absl::string_view replacement) {
  std::string out;
  for (size_t i = 0; i < replacement.size(); ++i) {
    const char c = replacement[i];
    const char next = i + 1 < replacement.size() ? replacement[i + 1] : '\0';
    if (c == '$' && next >= '0' && next <= '9') {
      out.push_back('\\');
      out.push_back(next);
      ++i;
    } else if (c == '$' && next == '&') {
      out.append("\\0");
      ++i;
    } else if (c == '$' && next == '$') {
      out.push_back('$');
      ++i;
    } else if (c == '\\' && ((next >= '0' && next <= '9') || next == '\\')) {
      out.push_back('\\');
      out.push_back(next);
      ++i;
    } else if (c == '\\') {
      return absl::InvalidArgumentError(
          absl::StrCat("'\\' must be followed by a digit or '\\' (at byte ", i, ")"));
    } else {
      out.push_back(c);
    }
  }
  return out;
}

absl::Status RuleError(size_t index, const v1::RenameRule& rule, absl::string_view why) {
  std::string shown = rule.pattern().size() <= 80
                          ? rule.pattern()
                          : absl::StrCat(rule.pattern().substr(0, 80), "...");
  return absl::InvalidArgumentError(
      absl::StrCat("rename rule ", index + 1, " '", shown, "': ", why));
}

absl::StatusOr<CompiledRenameRule> CompileRule(const v1::RenameRule& rule, size_t index) {
  if (rule.pattern().size() > kMaxRenamePatternBytes) {
    return RuleError(index, rule,
                     absl::StrCat("pattern is ", rule.pattern().size(), " bytes (limit ",
                                  kMaxRenamePatternBytes, ", kMaxRenamePatternBytes)"));
  }
  if (rule.replacement().size() > kMaxRenameReplacementBytes) {
    return RuleError(index, rule,
                     absl::StrCat("replacement is ", rule.replacement().size(), " bytes (limit ",
                                  kMaxRenameReplacementBytes, ", kMaxRenameReplacementBytes)"));
  }
  if (rule.pattern().empty()) return RuleError(index, rule, "empty pattern");
  absl::StatusOr<std::string> rewrite = ToRe2Rewrite(rule.replacement());
  if (!rewrite.ok()) {
    return RuleError(
        index, rule,
        absl::StrCat("replacement '", rule.replacement(), "': ", rewrite.status().message()));
  }
  re2::RE2::Options options;
  options.set_log_errors(false);
  options.set_max_mem(kMaxRenameRuleMemory);
  CompiledRenameRule out;
  out.re = std::make_unique<re2::RE2>(rule.pattern(), options);
  if (!out.re->ok()) {
    return RuleError(index, rule,
                     absl::StrCat("invalid RE2 regular expression: ", out.re->error()));
  }
  std::string error;
  if (!out.re->CheckRewriteString(*rewrite, &error)) {
    return RuleError(index, rule, absl::StrCat("replacement '", rule.replacement(), "': ", error));
  }
  out.rewrite = *std::move(rewrite);
  out.pattern = rule.pattern();
  out.groups = re2::RE2::MaxSubmatch(out.rewrite) + 1;
  return out;
}

// Every match of `rule` in `text` replaced, like RE2::GlobalReplace (an
// empty match right after the previous match is skipped), but with the
// per-key caps checked as it goes.
absl::Status ReplaceAll(const CompiledRenameRule& rule, const std::string& text, std::string* out,
                        bool* changed) {
  re2::StringPiece vec[10];
  const size_t limit = text.size() + kMaxRenameGrowthBytes;
  size_t pos = 0;
  size_t last_end = std::string::npos;
  size_t matches = 0;
  out->clear();
  *changed = false;
  while (pos <= text.size()) {
    if (!rule.re->Match(text, pos, text.size(), re2::RE2::UNANCHORED, vec, rule.groups)) break;
    const size_t begin = static_cast<size_t>(vec[0].data() - text.data());
    const size_t end = begin + vec[0].size();
    out->append(text, pos, begin - pos);
    if (vec[0].empty() && begin == last_end) {
      // An empty match where the previous one ended: step over one
      // character (a whole UTF-8 sequence) and look again.
      if (begin >= text.size()) break;
      size_t step = 1;
      while (begin + step < text.size() &&
             (static_cast<unsigned char>(text[begin + step]) & 0xC0) == 0x80)
        ++step;
      out->append(text, begin, step);
      pos = begin + step;
      continue;
    }
    if (++matches > kMaxRenameMatchesPerKey) {
      return absl::ResourceExhaustedError(
          absl::StrCat("rename rule '", rule.pattern, "' matches a key more than ",
                       kMaxRenameMatchesPerKey, " times (kMaxRenameMatchesPerKey)"));
    }
    rule.re->Rewrite(out, rule.rewrite, vec, rule.groups);
    *changed = true;
    if (out->size() > limit) {
      return absl::ResourceExhaustedError(
          absl::StrCat("rename rule '", rule.pattern, "' grows a key by more than ",
                       kMaxRenameGrowthBytes, " bytes (kMaxRenameGrowthBytes)"));
    }
    pos = end;
    last_end = end;
    if (begin == end && end >= text.size()) break;
  }
  if (pos < text.size()) out->append(text, pos, std::string::npos);
  return absl::OkStatus();
}

}  // namespace

Renamer::Renamer() = default;
Renamer::Renamer(Renamer&&) noexcept = default;
Renamer& Renamer::operator=(Renamer&&) noexcept = default;
Renamer::~Renamer() = default;

absl::StatusOr<Renamer> Renamer::Create(const v1::NormalizationPolicy& policy,
                                        const absl::flat_hash_map<std::string, int>* spec_index) {
  if (static_cast<size_t>(policy.rename_rules_size()) > kMaxRenameRules) {
    return absl::InvalidArgumentError(absl::StrCat("policy has ", policy.rename_rules_size(),
                                                   " rename rules (limit ", kMaxRenameRules,
                                                   ", kMaxRenameRules)"));
  }
  Renamer r;
  r.spec_index_ = spec_index;
  r.legacy_gamma_beta_ = policy.legacy_gamma_beta();
  for (int i = 0; i < policy.rename_rules_size(); ++i) {
    absl::StatusOr<CompiledRenameRule> rule =
        CompileRule(policy.rename_rules(i), static_cast<size_t>(i));
    if (!rule.ok()) return rule.status();
    r.rules_.push_back(*std::move(rule));
  }
  return r;
}

const Renamer::Result& Renamer::Rename(const std::string& key) {
  auto it = memo_.find(key);
  if (it != memo_.end()) return it->second;
  Result res;
  res.name = key;
  std::string next;
  for (const CompiledRenameRule& rule : rules_) {
    bool changed = false;
    absl::Status s = ReplaceAll(rule, res.name, &next, &changed);
    if (!s.ok()) {
      // The key keeps the name it had; the match is refused as a whole.
      if (status_.ok()) status_ = std::move(s);
      break;
    }
    if (changed && next != res.name) {
      res.name.swap(next);
      res.renamed_by_rule = true;
    }
  }
  if (legacy_gamma_beta_ && !spec_index_->contains(res.name)) {
    absl::string_view name = res.name;
    size_t dot = name.rfind('.');
    absl::string_view last = dot == absl::string_view::npos ? name : name.substr(dot + 1);
    absl::string_view base = dot == absl::string_view::npos ? "" : name.substr(0, dot + 1);
    absl::string_view repl = last == "gamma" ? "weight" : last == "beta" ? "bias" : "";
    if (!repl.empty()) {
      std::string candidate = absl::StrCat(base, repl);
      if (spec_index_->contains(candidate)) {
        res.name = std::move(candidate);
        res.renamed_gamma_beta = true;
      }
    }
  }
  return memo_.emplace(key, std::move(res)).first->second;
}

absl::Status ValidateRenameRules(const v1::NormalizationPolicy& policy) {
  absl::flat_hash_map<std::string, int> empty;
  return Renamer::Create(policy, &empty).status();
}

absl::StatusOr<std::string> ApplyRenameRules(const v1::NormalizationPolicy& policy,
                                             const std::string& key) {
  absl::flat_hash_map<std::string, int> empty;
  v1::NormalizationPolicy rules_only;
  *rules_only.mutable_rename_rules() = policy.rename_rules();
  absl::StatusOr<Renamer> renamer = Renamer::Create(rules_only, &empty);
  if (!renamer.ok()) return renamer.status();
  std::string name = renamer->Rename(key).name;
  if (!renamer->status().ok()) return renamer->status();
  return name;
}

}  // namespace weightgate::statedict
