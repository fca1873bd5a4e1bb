#include "client/common/report_format.h"

#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"

namespace weightgate::client {
namespace {

namespace v1 = weightgate::v1;

// Lists longer than this are cut: the table must stay readable on a
// checkpoint with thousands of unexpected optimizer keys; --json has all.
constexpr int kMaxListed = 8;

void Row(std::string* out, absl::string_view label, absl::string_view value) {
  absl::StrAppendFormat(out, "%-12s %s\n", label, value);
}

std::string Shape(const google::protobuf::RepeatedField<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string Bytes(int64_t n) {
  if (n >= (int64_t{1} << 30)) return absl::StrFormat("%.2f GiB", n / double(int64_t{1} << 30));
  if (n >= (1 << 20)) return absl::StrFormat("%.1f MiB", n / double(1 << 20));
  if (n >= (1 << 10)) return absl::StrFormat("%.1f KiB", n / double(1 << 10));
  return absl::StrCat(n, " B");
}

template <typename Container, typename Fn>
void ListRows(std::string* out, absl::string_view label, const Container& items, Fn render) {
  int i = 0;
  for (const auto& item : items) {
    if (i == kMaxListed) {
      Row(out, "", absl::StrCat("... (", items.size() - kMaxListed, " more)"));
      break;
    }
    Row(out, i == 0 ? label : "", render(item));
    ++i;
  }
}

// "161 spec tensors matched, transform strip 'module.', container 'state_dict'"
std::string CandidateText(const v1::Candidate& c) {
  const std::string container =
      c.container().empty() ? "(top level)" : absl::StrCat("'", c.container(), "'");
  return absl::StrCat(c.matched(), " spec tensors matched, transform ", c.transform(),
                      ", container ", container);
}

}  // namespace

std::string VerdictName(v1::Verdict verdict) {
  switch (verdict) {
    case v1::VALID: return "VALID";
    case v1::NORMALIZED: return "NORMALIZED";
    case v1::INVALID: return "INVALID";
    default: return "UNSPECIFIED";
  }
}

std::string FormatReport(const v1::ValidationReport& r) {
  std::string out;
  Row(&out, "verdict", VerdictName(r.verdict()));
  if (!r.reasons().empty()) Row(&out, "reasons", absl::StrJoin(r.reasons(), ", "));
  if (!r.error().empty()) Row(&out, "error", r.error());
  if (!r.model_id().empty()) Row(&out, "model", r.model_id());
  if (!r.format().empty()) Row(&out, "format", r.format());
  if (r.has_winner()) {
    Row(&out, "container", r.container_path().empty() ? "(top level)" : r.container_path());
    Row(&out, "match", CandidateText(r.winner()));
    if (r.has_runner_up()) Row(&out, "runner-up", CandidateText(r.runner_up()));
    // The readings a flag must choose between, or that were bitwise equal.
    ListRows(&out, "choices", r.alternatives(), [](const v1::Candidate& c) {
      return absl::StrCat(CandidateText(c), c.weights() == "ema" ? " (EMA)" : "",
                          c.equal_to_winner() ? ": bitwise identical to the match"
                                              : absl::StrCat(": ", c.select_flag()));
    });
  }
  if (!r.device().empty()) Row(&out, "device", r.device());
  if (r.tensor_count() > 0) {
    Row(&out, "tensors", absl::StrCat(r.tensor_count(), " (", Bytes(r.total_bytes()), ")"));
  }
  if (!r.input_sha256().empty()) Row(&out, "sha256", r.input_sha256());
  ListRows(&out, "fixes", r.fixes(),
           [](const v1::Fix& f) { return absl::StrFormat("%-16s %s", f.kind(), f.detail()); });
  ListRows(&out, "missing", r.missing_keys(), [](const std::string& s) { return s; });
  ListRows(&out, "unexpected", r.unexpected_keys(), [](const std::string& s) { return s; });
  ListRows(&out, "shape", r.shape_mismatches(), [](const v1::Mismatch& m) {
    return absl::StrCat(m.name(), ": expected ", Shape(m.expected_shape()), ", got ",
                        Shape(m.actual_shape()));
  });
  ListRows(&out, "dtype", r.dtype_mismatches(), [](const v1::Mismatch& m) {
    return absl::StrCat(m.name(), ": expected ", m.expected_dtype(), ", got ", m.actual_dtype());
  });
  ListRows(&out, "non-finite", r.non_finite(), [](const v1::NonFiniteCount& n) {
    return absl::StrCat(n.name(), ": ", n.nan(), " NaN, ", n.inf(), " Inf");
  });
  ListRows(&out, "shared", r.shared_storages(),
           [](const v1::SharedStorage& s) { return absl::StrJoin(s.names(), " = "); });
  ListRows(&out, "unsafe", r.unsafe_globals(), [](const std::string& s) { return s; });
  ListRows(&out, "opaque", r.opaque_globals(), [](const std::string& s) { return s; });
  ListRows(&out, "calls", r.called_globals(), [](const std::string& s) { return s; });
  if (!r.format().empty() && (r.format() == "torch_zip" || r.format() == "torch_legacy")) {
    Row(&out, "weights_only",
        r.loads_with_weights_only() ? "loads under torch.load(weights_only=True) (torch 1.13)"
                                    : absl::StrCat("refused by torch.load(weights_only=True): ",
                                                   absl::StrJoin(r.weights_only_blockers(), ", ")));
  }
  if (r.smoke_test().ran()) {
    const v1::SmokeTestResult& s = r.smoke_test();
    Row(&out, "smoke test",
        s.ok() ? "ok, outputs finite"
               : absl::StrCat("FAILED", s.error().empty() ? "" : ": ", s.error()));
  }
  if (r.has_timings()) {
    const v1::Timings& t = r.timings();
    std::vector<std::string> parts;
    auto add = [&](absl::string_view name, double ms) {
      if (ms > 0) parts.push_back(absl::StrFormat("%s %.1f ms", name, ms));
    };
    add("read", t.read_ms());
    add("match", t.match_ms());
    add("check", t.check_ms());
    add("smoke", t.smoke_ms());
    add("write", t.write_ms());
    add("total", t.total_ms());
    if (!parts.empty()) Row(&out, "timings", absl::StrJoin(parts, ", "));
  }
  return out;
}

std::string ReportToJson(const v1::ValidationReport& report) { return ProtoToJson(report); }

std::string ProtoToJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  auto status = google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!status.ok()) return absl::StrCat("{\"error\": \"", std::string(status.message()), "\"}\n");
  if (json.empty() || json.back() != '\n') json.push_back('\n');
  return json;
}

}  // namespace weightgate::client
