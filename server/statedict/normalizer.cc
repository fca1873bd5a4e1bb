// The normalisation engine: read, match, check, write, smoke-test, report.
#include "server/statedict/normalizer.h"

#include <ATen/ATen.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/mapped_file.h"
#include "common/sha256.h"
#include "server/checkpoint/checkpoint_set.h"
#include "server/checkpoint/megatron_reader.h"
#include "server/checkpoint/read_budget.h"
#include "server/checkpoint/set_bundle.h"
#include "server/statedict/half_convert.h"
#include "server/statedict/matcher.h"
#include "server/statedict/output_writer.h"
#include "server/statedict/torch_views.h"

namespace weightgate::statedict {
namespace {

namespace v1 = weightgate::v1;
using checkpoint::Checkpoint;
using checkpoint::DType;
using checkpoint::TensorRecord;
using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// Whether bytes that failed to parse at least start like one of the formats
// we read: then the file is a damaged checkpoint ("unreadable"), otherwise
// it is simply something else ("not_a_checkpoint").
bool LooksLikeCheckpoint(std::string_view data) {
  if (data.size() >= 4 && (data.substr(0, 4) == std::string_view("PK\x03\x04", 4) ||
                           data.substr(0, 4) == std::string_view("PK\x05\x06", 4))) {
    return true;
  }
  if (!data.empty() && static_cast<unsigned char>(data[0]) == 0x80) return true;  // pickle >= 2
  if (data.size() >= 9) {
    uint64_t n = 0;
    std::memcpy(&n, data.data(), 8);  // safetensors: little-endian header length, then '{'
    if (data[8] == '{' && n > 1 && n <= data.size() - 8) return true;
  }
  size_t i = 0;
  while (i < data.size() &&
         (data[i] == ' ' || data[i] == '\n' || data[i] == '\t' || data[i] == '\r'))
    ++i;
  return i < data.size() && data[i] == '{' && data.find("\"tensors\"") != std::string_view::npos;
}

// Elements per piece when a contiguous tensor is checked, converted and
// written: bounds what one tensor costs in memory (its mapped pages plus the
// converted copy) whatever its size.
constexpr int64_t kChunkElements = int64_t{4} << 20;

// float16's largest finite value is 65504; round-to-nearest sends |x| >= 65520
// to Inf.
constexpr double kHalfOverflow = 65520.0;

// Drops the pages of [begin, begin + len) of a tensor's storage from this
// process once they are checked and written. Safe only on the read-only file
// mapping (re-reading faults them back in from the page cache);
// MappedFile::Open is the only constructor that sets a path, and bytes held
// in memory (FromString, inflated zip entries) are left alone.
void ReleaseBytes(const Checkpoint& ckpt, const TensorRecord& rec, const char* begin_ptr,
                  uint64_t len) {
  if (len == 0 || rec.storage_index < 0 ||
      static_cast<size_t>(rec.storage_index) >= ckpt.storages.size()) {
    return;
  }
  // Sets map several files: the one this storage lies in.
  const common::MappedFile* mapped = ckpt.FileOf(ckpt.storages[rec.storage_index]);
  if (mapped == nullptr || mapped->path().empty()) return;
  std::string_view file = mapped->data();
  if (begin_ptr < file.data() || len > file.size() ||
      static_cast<uint64_t>(begin_ptr - file.data()) > file.size() - len) {
    return;
  }
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t map_begin = reinterpret_cast<uintptr_t>(file.data());
  const uintptr_t map_end = (map_begin + file.size() + page - 1) & ~(page - 1);
  uintptr_t begin = reinterpret_cast<uintptr_t>(begin_ptr) & ~(page - 1);
  uintptr_t end = (reinterpret_cast<uintptr_t>(begin_ptr) + len + page - 1) & ~(page - 1);
  if (begin < map_begin) begin = map_begin;
  if (end > map_end) end = map_end;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

struct NonFinite {
  int64_t nan = 0;
  int64_t inf = 0;
  int64_t overflow = 0;  // finite values a narrowing cast turns into inf
};

// Counts NaN/Inf in `src`. The common all-finite case costs one vectorised
// sum: a sum is finite only if every term is (NaN and Inf propagate, and
// +Inf + -Inf is NaN); only a non-finite sum (or a finite overflow) pays for
// the exact counts.
void CountNonFinite(const at::Tensor& src, NonFinite* counts) {
  const at::ScalarType st = src.scalar_type();
  if (!at::isFloatingType(st) && !at::isComplexType(st)) return;
  at::Tensor sum = (st == at::kHalf || st == at::kBFloat16) ? src.sum(at::kFloat) : src.sum();
  if (at::isfinite(sum).item<bool>()) return;
  counts->nan += at::isnan(src).sum().item<int64_t>();
  counts->inf += at::isinf(src).sum().item<int64_t>();
}

// Counts finite values that become Inf when cast to `out`: only float16
// narrows the range of what weightgate casts from (F32/F64).
void CountOverflow(const at::Tensor& src, DType out, NonFinite* counts) {
  const at::ScalarType st = src.scalar_type();
  if (out != DType::kF16 || (st != at::kFloat && st != at::kDouble)) return;
  auto [lo, hi] = at::aminmax(src);
  // NaN compares false: a tensor with NaN falls through to the exact count,
  // which does not count NaN.
  if (hi.item<double>() < kHalfOverflow && lo.item<double>() > -kHalfOverflow) return;
  at::Tensor abs = src.abs();
  counts->overflow += (abs.ge(kHalfOverflow).logical_and(at::isfinite(src))).sum().item<int64_t>();
}

std::string_view TensorBytes(const at::Tensor& t) {
  return {static_cast<const char*>(t.data_ptr()), t.nbytes()};
}

}  // namespace

at::ScalarType ToScalarType(DType dtype) {
  switch (dtype) {
    case DType::kF64: return at::kDouble;
    case DType::kF32: return at::kFloat;
    case DType::kF16: return at::kHalf;
    case DType::kBF16: return at::kBFloat16;
    case DType::kI64: return at::kLong;
    case DType::kI32: return at::kInt;
    case DType::kI16: return at::kShort;
    case DType::kI8: return at::kChar;
    case DType::kU8: return at::kByte;
    case DType::kBool: return at::kBool;
    case DType::kC64: return at::kComplexFloat;
    case DType::kC128: return at::kComplexDouble;
  }
  return at::kFloat;
}

absl::StatusOr<uint64_t> ViewExtentBytes(const Checkpoint& ckpt, const TensorRecord& rec) {
  if (rec.shape.size() != rec.strides.size()) {
    return absl::InvalidArgumentError("tensor rank and strides disagree");
  }
  uint64_t last = 0;  // offset of the last addressed element, in elements
  for (size_t d = 0; d < rec.shape.size(); ++d) {
    if (rec.shape[d] == 0) return 0;
    if (rec.shape[d] < 0 || rec.strides[d] < 0) {
      return absl::InvalidArgumentError("negative size or stride");
    }
    last += static_cast<uint64_t>(rec.shape[d] - 1) * static_cast<uint64_t>(rec.strides[d]);
  }
  uint64_t extent = (last + 1) * checkpoint::ItemSize(rec.dtype);
  if (extent > ckpt.TensorStorageBytes(rec).size()) {
    return absl::InvalidArgumentError("tensor view exceeds its storage");
  }
  return extent;
}

absl::StatusOr<at::Tensor> ViewOf(const Checkpoint& ckpt, const TensorRecord& rec) {
  absl::StatusOr<uint64_t> extent = ViewExtentBytes(ckpt, rec);
  if (!extent.ok()) return extent.status();
  at::TensorOptions options = at::TensorOptions().dtype(ToScalarType(rec.dtype));
  if (*extent == 0) return at::empty(rec.shape, options);
  void* data = const_cast<char*>(ckpt.TensorStorageBytes(rec).data());
  return at::from_blob(data, rec.shape, rec.strides, options);
}

absl::StatusOr<std::string> ResolveDevice(const std::string& device) {
  if (device.empty() || device == "auto") return at::hasCUDA() ? "cuda:0" : "cpu";
  if (device == "cpu") return "cpu";
  if (device == "cuda" || device.rfind("cuda:", 0) == 0) {
    if (!at::hasCUDA()) {
      return absl::FailedPreconditionError(
          "device 'cuda' requested but this libtorch build has no CUDA");
    }
    int index = 0;
    if (device.size() > 5 && !absl::SimpleAtoi(device.substr(5), &index)) {
      return absl::InvalidArgumentError(absl::StrCat("unknown device '", device, "'"));
    }
    return absl::StrCat("cuda:", index);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown device '", device, "' (expected auto, cpu, cuda or cuda:N)"));
}

namespace {

// Everything one Normalize call works on; the phases below fill it in order.
struct NormalizeContext {
  NormalizeContext(const std::string& path, const v1::ModelSpec& s,
                   const v1::NormalizationPolicy& p, const NormalizeOptions& o)
      : checkpoint_path(path), spec(s), policy(p), options(o) {}

  const std::string& checkpoint_path;
  const v1::ModelSpec& spec;
  const v1::NormalizationPolicy& policy;
  const NormalizeOptions& options;
  Clock::time_point start = Clock::now();
  std::string device_name;
  v1::ValidationReport report;
  // Keeps an unpacked set bundle's files for as long as the call reads them.
  std::unique_ptr<checkpoint::UnpackedSet> input;
  std::shared_ptr<const common::MappedFile> file;
  std::optional<Checkpoint> ckpt;
  MatchResult match;
  // True once the report holds a rejection reason: nothing is written.
  bool invalid = false;
  std::unique_ptr<OutputWriter> writer;
  double write_ms = 0;
  // The first hard error (I/O, libtorch); the call returns it.
  absl::Status failure;
  std::vector<uint16_t> half_buffer;
};

// Maps and parses the file, or the set of files (a directory, an index file
// or an uploaded set bundle). False when the report is already final
// (unreadable, unsafe, not a checkpoint).
bool ReadPhase(NormalizeContext& ctx) {
  v1::ValidationReport& report = ctx.report;
  const Clock::time_point phase = Clock::now();
  // An uploaded set arrives as one bundle, unpacked for the read (set_bundle.h).
  absl::StatusOr<std::unique_ptr<checkpoint::UnpackedSet>> input =
      checkpoint::UnpackedSet::Open(ctx.checkpoint_path);
  if (!input.ok()) {
    AddReason(&report, "unreadable");
    report.set_error(std::string(input.status().message()));
    return false;
  }
  ctx.input = *std::move(input);
  const std::string& input_path = ctx.input->path();
  absl::StatusOr<Checkpoint> read = absl::UnknownError("not read");
  bool looks_like_checkpoint = true;
  if (checkpoint::IsCheckpointSetPath(input_path)) {
    // A directory or index file: its files read as one checkpoint, tensor
    // parallel ranks merged by the spec's shapes (checkpoint_set.h).
    checkpoint::ReadOptions set_options = ctx.options.read_options;
    if (ctx.policy.zero_weights() == "module") {
      set_options.zero_weights = checkpoint::ZeroWeights::kModule;
    }
    for (const std::string& rule : ctx.policy.tp_merge_dims()) {
      int dim = 0;
      size_t eq = rule.rfind('=');
      if (eq != std::string::npos && absl::SimpleAtoi(rule.substr(eq + 1), &dim)) {
        set_options.tp_merge_dims.emplace_back(rule.substr(0, eq), dim);
      }
    }
    if (!set_options.expected_shape) {
      std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
      for (const v1::TensorSpec& t : ctx.spec.tensors()) {
        shapes.emplace_back(t.name(), std::vector<int64_t>(t.shape().begin(), t.shape().end()));
      }
      set_options.expected_shape = checkpoint::MakeSpecShapeLookup(std::move(shapes));
    }
    read = checkpoint::ReadCheckpointSet(input_path, set_options);
    if (ctx.options.compute_input_sha256) {
      absl::StatusOr<std::string> sha = checkpoint::Sha256CheckpointSet(input_path);
      if (sha.ok()) report.set_input_sha256(*sha);
    }
  } else {
    absl::StatusOr<std::shared_ptr<const common::MappedFile>> file =
        common::MappedFile::Open(input_path);
    if (!file.ok()) {
      AddReason(&report, "unreadable");
      report.set_error(std::string(file.status().message()));
      return false;
    }
    ctx.file = *std::move(file);
    if (ctx.options.compute_input_sha256) {
      absl::StatusOr<std::string> sha = common::Sha256File(input_path);
      if (sha.ok()) report.set_input_sha256(*sha);
    }
    read = checkpoint::ReadCheckpoint(ctx.file, ctx.options.read_options);
    looks_like_checkpoint = LooksLikeCheckpoint(ctx.file->data());
  }
  report.mutable_timings()->set_read_ms(MsSince(phase));
  if (!read.ok()) {
    // A reader limit (read budget, inflated bytes, tensor names) is its own reason.
    AddReason(&report, checkpoint::IsResourceLimit(read.status()) ? "resource_limit"
                       : looks_like_checkpoint                    ? "unreadable"
                                                                  : "not_a_checkpoint");
    report.set_error(std::string(read.status().message()));
    return false;
  }
  ctx.ckpt.emplace(*std::move(read));
  const Checkpoint& ckpt = *ctx.ckpt;
  for (const std::string& m : ckpt.metadata) {
    // Rebuilt ZeRO weights are a repair the report names (zero_reader.h).
    if (m.rfind("zero_weights=", 0) == 0) {
      v1::Fix* fix = report.add_fixes();
      fix->set_kind("zero_weights");
      fix->set_detail(absl::StrCat("DeepSpeed ZeRO set read as its ", m.substr(13),
                                   m == "zero_weights=fp32"
                                       ? " master weights (optimizer partitions)"
                                       : " weights (model states)"));
      fix->set_to(m.substr(13));
    }
  }
  report.set_format(std::string(checkpoint::FormatName(ckpt.format)));
  for (const std::string& g : ckpt.opaque_globals) report.add_opaque_globals(g);
  for (const std::string& g : ckpt.unsafe_globals) report.add_unsafe_globals(g);
  for (const std::string& g : ckpt.called_globals) report.add_called_globals(g);
  for (const std::string& g : ckpt.weights_only_blockers) report.add_weights_only_blockers(g);
  report.set_loads_with_weights_only((ckpt.format == checkpoint::Format::kTorchZip ||
                                      ckpt.format == checkpoint::Format::kTorchLegacy) &&
                                     ckpt.weights_only_blockers.empty());
  if (ckpt.unsafe()) {
    // Nothing in an unsafe file is trusted further, not even its layout.
    AddReason(&report, "unsafe_pickle");
    report.set_error(absl::StrCat("pickle names dangerous globals: ", ckpt.unsafe_globals.front(),
                                  ckpt.unsafe_globals.size() > 1 ? ", ..." : ""));
    return false;
  }
  if (ctx.policy.unknown_calls() == v1::NormalizationPolicy::UNKNOWN_CALLS_REJECT &&
      !ckpt.called_globals.empty()) {
    AddReason(&report, "unknown_calls");
    report.set_error(absl::StrCat("pickle calls ", ckpt.called_globals.front(),
                                  ckpt.called_globals.size() > 1 ? ", ..." : "",
                                  " (policy unknown_calls = reject)"));
    return false;
  }
  if (ckpt.format == checkpoint::Format::kJsonSpec) {
    AddReason(&report, "not_a_checkpoint");
    report.set_error("a JSON spec describes tensors but holds no weights");
    return false;
  }
  return true;
}

// Whether two tensor views of the checkpoint hold bitwise-identical values
// (NaN payloads included), for telling equal readings from ambiguous ones.
bool SameBytes(const Checkpoint& ckpt, const TensorRecord& a, const TensorRecord& b) {
  if (a.dtype != b.dtype || a.shape != b.shape) return false;
  try {
    absl::StatusOr<at::Tensor> va = ViewOf(ckpt, a);
    absl::StatusOr<at::Tensor> vb = ViewOf(ckpt, b);
    if (!va.ok() || !vb.ok()) return false;
    at::Tensor ca = va->contiguous();
    at::Tensor cb = vb->contiguous();
    return ca.nbytes() == cb.nbytes() &&
           (ca.nbytes() == 0 || std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) == 0);
  } catch (const c10::Error&) {
    return false;
  }
}

absl::Status MatchPhase(NormalizeContext& ctx) {
  const Clock::time_point phase = Clock::now();
  MatchOptions match_options;
  match_options.cancelled = ctx.options.cancelled;
  match_options.same_bytes = [&ckpt = *ctx.ckpt](const TensorRecord& a, const TensorRecord& b) {
    return SameBytes(ckpt, a, b);
  };
  absl::StatusOr<MatchResult> match =
      MatchStateDict(ctx.ckpt->root, ctx.spec, ctx.policy, &ctx.report, match_options);
  if (!match.ok()) return match.status();
  ctx.report.mutable_timings()->set_match_ms(MsSince(phase));
  ctx.match = *std::move(match);
  ctx.invalid = ctx.match.invalid;
  return absl::OkStatus();
}

// Opens the output when one is wanted and the match is usable.
absl::Status OpenOutput(NormalizeContext& ctx) {
  const NormalizeOptions& options = ctx.options;
  if (options.output_path.empty() || ctx.invalid) return absl::OkStatus();
  OutputWriter::Format format = OutputWriter::FormatForPath(options.output_path);
  if (options.output_format == NormalizeOptions::OutputFormat::kSafetensors) {
    format = OutputWriter::Format::kSafetensors;
  } else if (options.output_format == NormalizeOptions::OutputFormat::kStoredSafetensors) {
    format = OutputWriter::Format::kStoredSafetensors;
  } else if (options.output_format == NormalizeOptions::OutputFormat::kTorchZip) {
    format = OutputWriter::Format::kTorchZip;
  }
  std::vector<OutputWriter::Entry> entries;
  for (const MatchedTensor& m : ctx.match.tensors) {
    entries.push_back({m.name, m.out_dtype, m.shape, m.tied_to});
  }
  absl::StatusOr<std::unique_ptr<OutputWriter>> w =
      OutputWriter::Create(options.output_path, format, std::move(entries),
                           {{"format", "pt"}, {"producer", "weightgate"}}, options.sync_output);
  if (!w.ok()) return w.status();
  ctx.writer = *std::move(w);
  return absl::OkStatus();
}

absl::Status Append(NormalizeContext& ctx, std::string_view bytes) {
  Clock::time_point t0 = Clock::now();
  absl::Status s = ctx.writer->Append(bytes);
  ctx.write_ms += MsSince(t0);
  return s;
}

// One output tensor's numeric check, cast and write, piece by piece.
class TensorPass final {
 public:
  TensorPass(NormalizeContext& ctx, const c10::Device& device, const MatchedTensor& m, bool write)
      : ctx_(ctx), device_(device), m_(m), write_(write) {
    // F32 -> F16, the commonest cast, runs at memory speed where the CPU can.
    fast_half_ = m.cast() && m.source_dtype == DType::kF32 && m.out_dtype == DType::kF16 &&
                 HasFastHalfConvert();
  }

  const NonFinite& counts() const { return counts_; }

  // Checks, converts and writes the whole view of the source tensor.
  absl::Status Run(const at::Tensor& view, uint64_t extent) {
    const Checkpoint& ckpt = *ctx_.ckpt;
    const int64_t numel = view.numel();
    absl::Status status;
    if (view.is_contiguous() && numel > 0) {
      // Piece by piece, releasing each piece's pages: memory per tensor is
      // bounded by kChunkElements whatever the tensor's size.
      at::Tensor flat = view.reshape({-1});
      for (int64_t begin = 0; begin < numel && status.ok(); begin += kChunkElements) {
        at::Tensor piece = flat.slice(0, begin, std::min(numel, begin + kChunkElements));
        status = Piece(piece);
        if (ctx_.options.release_pages) {
          ReleaseBytes(ckpt, *m_.source, static_cast<const char*>(piece.data_ptr()),
                       piece.nbytes());
        }
      }
    } else {
      status = Piece(view);
      if (ctx_.options.release_pages) {
        ReleaseBytes(ckpt, *m_.source, ckpt.TensorStorageBytes(*m_.source).data(), extent);
      }
    }
    return status;
  }

 private:
  // Checks, converts and writes one piece; a tensor that reaches the output
  // unchanged on CPU is written straight from the mapping.
  absl::Status Piece(const at::Tensor& piece) {
    at::Tensor src = device_.is_cpu() ? piece : piece.to(device_);
    CountNonFinite(src, &counts_);
    if (m_.cast()) CountOverflow(src, m_.out_dtype, &counts_);
    if (!write_ || ctx_.invalid) return absl::OkStatus();
    if (fast_half_ && src.is_cpu() && src.is_contiguous()) {
      std::vector<uint16_t>& half = ctx_.half_buffer;
      half.resize(static_cast<size_t>(src.numel()));
      FloatToHalf(static_cast<const float*>(src.data_ptr()), half.data(), half.size());
      return Append(ctx_, std::string_view(reinterpret_cast<const char*>(half.data()),
                                           half.size() * sizeof(uint16_t)));
    }
    at::Tensor out = m_.cast() ? src.to(ToScalarType(m_.out_dtype)) : src;
    out = out.contiguous();
    if (!out.is_cpu()) out = out.cpu();
    return Append(ctx_, TensorBytes(out));
  }

  NormalizeContext& ctx_;
  const c10::Device& device_;
  const MatchedTensor& m_;
  const bool write_;
  bool fast_half_ = false;
  NonFinite counts_;
};

// Non-finite values of one output tensor, reported (and rejected by policy).
void ReportNonFinite(NormalizeContext& ctx, const MatchedTensor& m, const NonFinite& counts) {
  if (counts.nan == 0 && counts.inf == 0 && counts.overflow == 0) return;
  v1::ValidationReport& report = ctx.report;
  v1::NonFiniteCount* count = report.add_non_finite();
  count->set_name(m.name);
  count->set_nan(counts.nan);
  count->set_inf(counts.inf + counts.overflow);
  if (counts.overflow > 0 && report.error().empty()) {
    report.set_error(absl::StrCat("'", m.name, "': ", counts.overflow,
                                  " finite values overflow when cast to ",
                                  std::string(checkpoint::DTypeName(m.out_dtype))));
  }
  if (ctx.policy.non_finite() == v1::NormalizationPolicy::NONFINITE_REJECT) {
    AddReason(&report, "non_finite");
    ctx.invalid = true;
  }
}

// Every output tensor: numeric checks, casts, and (when writing) its bytes.
void CheckPhase(NormalizeContext& ctx) {
  const Clock::time_point phase = Clock::now();
  const Checkpoint& ckpt = *ctx.ckpt;
  const std::vector<MatchedTensor>& tensors = ctx.match.tensors;
  try {
    const c10::Device device(ctx.device_name);
    for (size_t k = 0; k < tensors.size() && ctx.failure.ok(); ++k) {
      if (ctx.options.cancelled && ctx.options.cancelled()) {
        ctx.failure = absl::CancelledError("validation cancelled");
        break;
      }
      const MatchedTensor& m = tensors[k];
      const bool write = ctx.writer != nullptr && !ctx.invalid && ctx.writer->NeedsBytes(k);
      if (m.source == nullptr) {
        if (write) ctx.failure = Append(ctx, std::string(m.out_nbytes(), '\0'));
        continue;
      }
      absl::StatusOr<uint64_t> extent = ViewExtentBytes(ckpt, *m.source);
      absl::StatusOr<at::Tensor> view = ViewOf(ckpt, *m.source);
      if (!extent.ok() || !view.ok()) {
        AddReason(&ctx.report, "unreadable");
        ctx.report.set_error(
            absl::StrCat("tensor '", m.source_name,
                         "': ", (extent.ok() ? view.status() : extent.status()).message()));
        ctx.invalid = true;
        continue;
      }
      TensorPass pass(ctx, device, m, write);
      ctx.failure = pass.Run(*view, *extent);
      ReportNonFinite(ctx, m, pass.counts());
    }
  } catch (const c10::Error& e) {
    ctx.failure = absl::InternalError(absl::StrCat("libtorch: ", e.what_without_backtrace()));
  }
  ctx.report.mutable_timings()->set_check_ms(MsSince(phase) - ctx.write_ms);
}

// Before the output is committed: a failing forward pass makes the
// checkpoint INVALID, and INVALID never leaves an output behind. The writer
// thread drains meanwhile.
void SmokeTestPhase(NormalizeContext& ctx) {
  if (!ctx.failure.ok() || ctx.invalid || ctx.options.torchscript_path.empty() ||
      ctx.spec.example_inputs_size() == 0) {
    return;
  }
  const Clock::time_point phase = Clock::now();
  const Checkpoint& ckpt = *ctx.ckpt;
  absl::flat_hash_map<std::string, const MatchedTensor*> by_name;
  for (const MatchedTensor& m : ctx.match.tensors) by_name.emplace(m.name, &m);
  auto weight = [&](const std::string& name) -> absl::StatusOr<at::Tensor> {
    auto it = by_name.find(name);
    if (it == by_name.end()) return absl::NotFoundError(absl::StrCat("missing '", name, "'"));
    const MatchedTensor& m = *it->second;
    at::TensorOptions opts = at::TensorOptions().dtype(ToScalarType(m.out_dtype));
    if (m.source == nullptr) return at::zeros(m.shape, opts);
    absl::StatusOr<at::Tensor> view = ViewOf(ckpt, *m.source);
    if (!view.ok()) return view.status();
    return view->to(ToScalarType(m.out_dtype));
  };
  *ctx.report.mutable_smoke_test() = RunSmokeTest(ctx.options.torchscript_path, ctx.spec, weight);
  if (!ctx.report.smoke_test().ok()) {
    AddReason(&ctx.report, "smoke_test_failed");
    ctx.invalid = true;
  }
  ctx.report.mutable_timings()->set_smoke_ms(MsSince(phase));
}

// Renames the output into place, or removes it when anything failed.
void FinishOutput(NormalizeContext& ctx) {
  if (ctx.writer == nullptr) return;
  Clock::time_point t0 = Clock::now();
  if (ctx.failure.ok() && !ctx.invalid) {
    ctx.failure = ctx.writer->Finish();
    if (ctx.failure.ok() && ctx.options.output_sha256 != nullptr) {
      *ctx.options.output_sha256 = ctx.writer->sha256();
    }
  } else {
    ctx.writer->Abort();
  }
  ctx.write_ms += MsSince(t0);
  ctx.report.mutable_timings()->set_write_ms(ctx.write_ms);
}

v1::ValidationReport Finish(NormalizeContext& ctx) {
  ctx.report.set_verdict(VerdictOf(ctx.report));
  ctx.report.mutable_timings()->set_total_ms(MsSince(ctx.start));
  return std::move(ctx.report);
}

}  // namespace

absl::StatusOr<v1::ValidationReport> Normalize(const std::string& checkpoint_path,
                                               const v1::ModelSpec& spec,
                                               const v1::NormalizationPolicy& policy,
                                               const NormalizeOptions& options) {
  NormalizeContext ctx(checkpoint_path, spec, policy, options);
  ctx.report.set_model_id(options.model_id);
  absl::StatusOr<std::string> device_name = ResolveDevice(options.device);
  if (!device_name.ok()) return device_name.status();
  ctx.device_name = *device_name;
  ctx.report.set_device(ctx.device_name);

  if (!ReadPhase(ctx)) return Finish(ctx);
  if (absl::Status s = MatchPhase(ctx); !s.ok()) return s;
  if (absl::Status s = OpenOutput(ctx); !s.ok()) return s;
  CheckPhase(ctx);
  SmokeTestPhase(ctx);
  FinishOutput(ctx);
  if (!ctx.failure.ok()) return ctx.failure;
  return Finish(ctx);
}

}  // namespace weightgate::statedict
