// client/common: the policy flags shared by the CLI and weightgate-normalize
// (one table: parsing, values, help), and the report's human and JSON
// renderings.
#include "client/common/policy_flags.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/common/flag_table.h"
#include "client/common/report_format.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"

namespace weightgate::client {
namespace {

namespace v1 = weightgate::v1;

// A command taking any number of words, -o OUT and the policy flags.
// clang-format off
const CommandSpec kSpec = {
    .program = "test", .synopsis = "[WORD]...", .description = "",
    .flags = {{.name = "--output", .value_name = "OUT", .help = "", .alias = "-o"}},
    .groups = {&PolicyFlags()},
    .min_args = 0, .max_args = 9, .args_error = "too many words"};
// clang-format on

absl::StatusOr<v1::NormalizationPolicy> Parse(const std::vector<std::string>& args,
                                              ParsedArgs* parsed = nullptr) {
  absl::StatusOr<ParsedArgs> p = ParseArgs(kSpec, args);
  if (!p.ok()) return p.status();
  v1::NormalizationPolicy policy;
  if (absl::Status s = ApplyPolicyFlags(*p, &policy, nullptr); !s.ok()) return s;
  if (parsed != nullptr) *parsed = *std::move(p);
  return policy;
}

TEST(PolicyFlagsTest, EveryFlag) {
  ParsedArgs rest;
  absl::StatusOr<v1::NormalizationPolicy> p = Parse({"model-x",
                                                     "--container",
                                                     "checkpoint.weights",
                                                     "--prefixes",
                                                     "none",
                                                     "--rename",
                                                     "^classifier\\.(.*)=head.$1",
                                                     "--rename=gamma$=weight",
                                                     "--legacy_gamma_beta",
                                                     "--positional_remap",
                                                     "--dtype",
                                                     "keep",
                                                     "--optional",
                                                     "*.running_*",
                                                     "--optional=aux.*",
                                                     "--unexpected",
                                                     "reject",
                                                     "--non_finite=allow",
                                                     "--unknown_calls",
                                                     "reject",
                                                     "-o",
                                                     "out.safetensors"},
                                                    &rest);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(rest.positional, (std::vector<std::string>{"model-x"}));
  EXPECT_EQ(rest.Get("--output"), "out.safetensors");
  EXPECT_EQ(p->container(), "checkpoint.weights");
  EXPECT_EQ(p->prefixes(), v1::NormalizationPolicy::PREFIX_NONE);
  ASSERT_EQ(p->rename_rules_size(), 2);
  EXPECT_EQ(p->rename_rules(0).pattern(), "^classifier\\.(.*)");
  EXPECT_EQ(p->rename_rules(0).replacement(), "head.$1");
  EXPECT_EQ(p->rename_rules(1).pattern(), "gamma$");
  EXPECT_EQ(p->rename_rules(1).replacement(), "weight");
  EXPECT_TRUE(p->legacy_gamma_beta());
  EXPECT_TRUE(p->positional_remap());
  EXPECT_EQ(p->dtype(), v1::NormalizationPolicy::DTYPE_KEEP);
  ASSERT_TRUE(p->has_optional_keys());
  EXPECT_EQ(p->optional_keys().values_size(), 2);
  EXPECT_EQ(p->unexpected(), v1::NormalizationPolicy::UNEXPECTED_REJECT);
  EXPECT_EQ(p->non_finite(), v1::NormalizationPolicy::NONFINITE_ALLOW);
  EXPECT_EQ(p->unknown_calls(), v1::NormalizationPolicy::UNKNOWN_CALLS_REJECT);
}

TEST(PolicyFlagsTest, DefaultsStayUnset) {
  absl::StatusOr<v1::NormalizationPolicy> p = Parse({"--container", "auto"});
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->container(), "");
  EXPECT_FALSE(p->has_optional_keys());
  p = Parse({"--no_optional"});
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->has_optional_keys());
  EXPECT_EQ(p->optional_keys().values_size(), 0);
}

TEST(PolicyFlagsTest, OneLineErrors) {
  struct Bad {
    std::vector<std::string> args;
    std::string message;
  };
  for (const Bad& b : std::vector<Bad>{
           {{"--dtype"}, "--dtype needs a value"},
           {{"--dtype", "sometimes"}, "--dtype: 'sometimes' is not one of cast, keep, reject"},
           {{"--prefixes=all"}, "--prefixes: 'all' is not one of auto, none, any"},
           {{"--unexpected", "keep"}, "--unexpected: 'keep' is not one of drop, reject"},
           {{"--non_finite", "ignore"}, "--non_finite: 'ignore' is not one of reject, allow"},
           {{"--rename", "no-equals-sign"}, "--rename: 'no-equals-sign' is not REGEX=REPLACEMENT"},
           {{"--legacy_gamma_beta=yes"}, "--legacy_gamma_beta takes no value"},
           {{"--policy", "/nonexistent/policy.json"},
            "--policy: cannot open /nonexistent/policy.json"},
       }) {
    absl::StatusOr<v1::NormalizationPolicy> p = Parse(b.args);
    ASSERT_FALSE(p.ok()) << b.args[0];
    EXPECT_EQ(std::string(p.status().message()), b.message);
    EXPECT_EQ(std::string(p.status().message()).find('\n'), std::string::npos);
  }
}

TEST(PolicyFlagsTest, PolicyFileIsMergedInOrder) {
  char path[] = "/tmp/wg-policy-XXXXXX";
  int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  const std::string json =
      R"({"container": "state_dict", "rename_rules": [{"pattern": "^a\\.", "replacement": "b."}],
          "dtype": "DTYPE_REJECT", "optional_keys": {"values": []}})";
  ASSERT_EQ(::write(fd, json.data(), json.size()), static_cast<ssize_t>(json.size()));
  ::close(fd);
  absl::StatusOr<v1::NormalizationPolicy> p =
      Parse({"--rename", "x=y", "--policy", path, "--dtype", "cast"});
  std::remove(path);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->container(), "state_dict");
  ASSERT_EQ(p->rename_rules_size(), 2);
  EXPECT_EQ(p->rename_rules(0).pattern(), "x");
  EXPECT_EQ(p->rename_rules(1).pattern(), "^a\\.");
  EXPECT_EQ(p->dtype(), v1::NormalizationPolicy::DTYPE_CAST);  // the later flag wins
  EXPECT_TRUE(p->has_optional_keys());

  EXPECT_FALSE(PolicyFromJson("{\"no_such_field\": 1}").ok());
}

TEST(PolicyFlagsTest, HelpListsEveryFlagTheParserTakes) {
  const std::string help = PolicyFlagsHelp();
  for (const Flag& flag : PolicyFlags().flags) {
    EXPECT_NE(help.find(absl::StrCat("  ", flag.name)), std::string::npos) << flag.name;
    std::vector<std::string> args = {std::string(flag.name)};
    if (flag.takes_value()) {
      std::string value = flag.name == "--rename"         ? "a=b"
                          : flag.name == "--tp_merge_dim" ? "a=0"
                                                          : "x";
      if (!flag.choices.empty())
        value = std::string(flag.choices.substr(0, flag.choices.find('|')));
      if (flag.name == "--policy") continue;  // needs a file; PolicyFileIsMergedInOrder
      args.push_back(value);
    }
    ParsedArgs parsed;
    absl::StatusOr<v1::NormalizationPolicy> p = Parse(args, &parsed);
    EXPECT_TRUE(p.ok()) << flag.name << ": " << p.status();
    EXPECT_TRUE(parsed.Has(flag.name)) << flag.name;
  }
}

v1::ValidationReport SampleReport() {
  v1::ValidationReport r;
  r.set_verdict(v1::INVALID);
  r.set_model_id("resnet");
  r.set_format("torch_zip");
  r.set_container_path("state_dict");
  r.add_reasons("missing_keys");
  r.add_reasons("non_finite");
  r.mutable_winner()->set_container("state_dict");
  r.mutable_winner()->set_transform("strip 'module.'");
  r.mutable_winner()->set_matched(160);
  v1::Fix* f = r.add_fixes();
  f->set_kind("strip_prefix");
  f->set_detail("stripped 'module.' from 161 keys");
  for (int i = 0; i < 20; ++i) r.add_unexpected_keys("optimizer.state." + std::to_string(i));
  r.add_missing_keys("fc.weight");
  v1::NonFiniteCount* n = r.add_non_finite();
  n->set_name("conv1.weight");
  n->set_nan(3);
  r.set_device("cpu");
  r.mutable_timings()->set_total_ms(12.5);
  return r;
}

TEST(ReportFormatTest, HumanTable) {
  const std::string text = FormatReport(SampleReport());
  EXPECT_EQ(text.rfind("verdict      INVALID\n", 0), 0u) << text;
  EXPECT_NE(text.find("reasons      missing_keys, non_finite\n"), std::string::npos) << text;
  EXPECT_NE(text.find("container    state_dict\n"), std::string::npos) << text;
  EXPECT_NE(text.find("strip_prefix     stripped 'module.' from 161 keys"), std::string::npos);
  EXPECT_NE(text.find("missing      fc.weight\n"), std::string::npos) << text;
  EXPECT_NE(text.find("non-finite   conv1.weight: 3 NaN, 0 Inf\n"), std::string::npos) << text;
  // 20 unexpected keys: 8 shown, then a count.
  EXPECT_NE(text.find("optimizer.state.7\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("optimizer.state.8\n"), std::string::npos) << text;
  EXPECT_NE(text.find("... (12 more)"), std::string::npos) << text;
  EXPECT_NE(text.find("timings      total 12.5 ms\n"), std::string::npos) << text;
  EXPECT_EQ(text.back(), '\n');
}

TEST(ReportFormatTest, JsonIsTheProto) {
  const v1::ValidationReport r = SampleReport();
  const std::string json = ReportToJson(r);
  EXPECT_NE(json.find("\"verdict\": \"INVALID\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"unexpected_keys\""), std::string::npos) << json;
  v1::ValidationReport back;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &back).ok());
  EXPECT_EQ(back.SerializeAsString(), r.SerializeAsString());
}

}  // namespace
}  // namespace weightgate::client
