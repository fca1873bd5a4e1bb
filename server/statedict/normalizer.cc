// The normalisation engine: read, match, check, write, smoke-test, report.
#include "server/statedict/normalizer.h"

#include <ATen/ATen.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
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

void AddReason(v1::ValidationReport* report, std::string_view reason) {
  for (const std::string& r : report->reasons()) {
    if (r == reason) return;
  }
  report->add_reasons(std::string(reason));
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

absl::StatusOr<v1::ValidationReport> Normalize(const std::string& checkpoint_path,
                                               const v1::ModelSpec& spec,
                                               const v1::NormalizationPolicy& policy,
                                               const NormalizeOptions& options) {
  const Clock::time_point start = Clock::now();
  v1::ValidationReport report;
  report.set_model_id(options.model_id);
  absl::StatusOr<std::string> device_name = ResolveDevice(options.device);
  if (!device_name.ok()) return device_name.status();
  report.set_device(*device_name);
  auto finish = [&]() {
    report.set_verdict(VerdictOf(report));
    report.mutable_timings()->set_total_ms(MsSince(start));
    return report;
  };

  // ---- read ----
  Clock::time_point phase = Clock::now();
  absl::StatusOr<Checkpoint> read = absl::UnknownError("not read");
  bool looks_like_checkpoint = true;
  // An uploaded set arrives as one bundle, unpacked for the read (set_bundle.h).
  absl::StatusOr<std::unique_ptr<checkpoint::UnpackedSet>> input =
      checkpoint::UnpackedSet::Open(checkpoint_path);
  if (!input.ok()) {
    AddReason(&report, "unreadable");
    report.set_error(std::string(input.status().message()));
    return finish();
  }
  const std::string& input_path = (*input)->path();
  if (checkpoint::IsCheckpointSetPath(input_path)) {
    // A directory or index file: its files read as one checkpoint, tensor
    // parallel ranks merged by the spec's shapes (checkpoint_set.h).
    checkpoint::ReadOptions set_options = options.read_options;
    if (policy.zero_weights() == "module") {
      set_options.zero_weights = checkpoint::ZeroWeights::kModule;
    }
    for (const std::string& rule : policy.tp_merge_dims()) {
      int dim = 0;
      size_t eq = rule.rfind('=');
      if (eq != std::string::npos && absl::SimpleAtoi(rule.substr(eq + 1), &dim)) {
        set_options.tp_merge_dims.emplace_back(rule.substr(0, eq), dim);
      }
    }
    if (!set_options.expected_shape) {
      std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
      for (const v1::TensorSpec& t : spec.tensors()) {
        shapes.emplace_back(t.name(), std::vector<int64_t>(t.shape().begin(), t.shape().end()));
      }
      set_options.expected_shape = checkpoint::MakeSpecShapeLookup(std::move(shapes));
    }
    read = checkpoint::ReadCheckpointSet(input_path, set_options);
    if (options.compute_input_sha256) {
      absl::StatusOr<std::string> sha = checkpoint::Sha256CheckpointSet(input_path);
      if (sha.ok()) report.set_input_sha256(*sha);
    }
  } else {
    absl::StatusOr<std::shared_ptr<const common::MappedFile>> file =
        common::MappedFile::Open(input_path);
    if (!file.ok()) {
      AddReason(&report, "unreadable");
      report.set_error(std::string(file.status().message()));
      return finish();
    }
    if (options.compute_input_sha256) {
      absl::StatusOr<std::string> sha = common::Sha256File(input_path);
      if (sha.ok()) report.set_input_sha256(*sha);
    }
    read = checkpoint::ReadCheckpoint(*file, options.read_options);
    looks_like_checkpoint = LooksLikeCheckpoint((*file)->data());
  }
  report.mutable_timings()->set_read_ms(MsSince(phase));
  if (!read.ok()) {
    AddReason(&report, looks_like_checkpoint ? "unreadable" : "not_a_checkpoint");
    report.set_error(std::string(read.status().message()));
    return finish();
  }
  const Checkpoint& ckpt = *read;
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
  if (ckpt.unsafe()) {
    // Nothing in an unsafe file is trusted further, not even its layout.
    AddReason(&report, "unsafe_pickle");
    report.set_error(absl::StrCat("pickle names dangerous globals: ", ckpt.unsafe_globals.front(),
                                  ckpt.unsafe_globals.size() > 1 ? ", ..." : ""));
    return finish();
  }
  if (ckpt.format == checkpoint::Format::kJsonSpec) {
    AddReason(&report, "not_a_checkpoint");
    report.set_error("a JSON spec describes tensors but holds no weights");
    return finish();
  }

  // ---- match ----
  phase = Clock::now();
  absl::StatusOr<MatchResult> match = MatchStateDict(ckpt.root, spec, policy, &report);
  if (!match.ok()) return match.status();
  report.mutable_timings()->set_match_ms(MsSince(phase));
  bool invalid = match->invalid;
  const std::vector<MatchedTensor>& tensors = match->tensors;

  // ---- check (+ write) ----
  std::unique_ptr<OutputWriter> writer;
  const bool want_output = !options.output_path.empty();
  double write_ms = 0;
  if (want_output && !invalid) {
    OutputWriter::Format format = OutputWriter::FormatForPath(options.output_path);
    if (options.output_format == NormalizeOptions::OutputFormat::kSafetensors) {
      format = OutputWriter::Format::kSafetensors;
    } else if (options.output_format == NormalizeOptions::OutputFormat::kTorchZip) {
      format = OutputWriter::Format::kTorchZip;
    }
    std::vector<OutputWriter::Entry> entries;
    for (const MatchedTensor& m : tensors)
      entries.push_back({m.name, m.out_dtype, m.shape, m.tied_to});
    absl::StatusOr<std::unique_ptr<OutputWriter>> w =
        OutputWriter::Create(options.output_path, format, std::move(entries),
                             {{"format", "pt"}, {"producer", "weightgate"}}, options.sync_output);
    if (!w.ok()) return w.status();
    writer = std::move(*w);
  }
  auto append = [&](std::string_view bytes) -> absl::Status {
    Clock::time_point t0 = Clock::now();
    absl::Status s = writer->Append(bytes);
    write_ms += MsSince(t0);
    return s;
  };

  phase = Clock::now();
  absl::Status failure = absl::OkStatus();
  std::vector<uint16_t> half_buffer;
  try {
    const c10::Device device(*device_name);
    for (size_t k = 0; k < tensors.size() && failure.ok(); ++k) {
      const MatchedTensor& m = tensors[k];
      const bool write = writer != nullptr && !invalid && writer->NeedsBytes(k);
      if (m.source == nullptr) {
        if (write) {
          const std::string zeros(m.out_nbytes(), '\0');
          failure = append(zeros);
        }
        continue;
      }
      absl::StatusOr<uint64_t> extent = ViewExtentBytes(ckpt, *m.source);
      absl::StatusOr<at::Tensor> view = ViewOf(ckpt, *m.source);
      if (!extent.ok() || !view.ok()) {
        AddReason(&report, "unreadable");
        report.set_error(absl::StrCat("tensor '", m.source_name, "': ",
                                      (extent.ok() ? view.status() : extent.status()).message()));
        invalid = true;
        continue;
      }
      NonFinite counts;
      // F32 -> F16, the commonest cast, runs at memory speed where the CPU can.
      const bool fast_half = m.cast() && m.source_dtype == DType::kF32 &&
                             m.out_dtype == DType::kF16 && HasFastHalfConvert();
      // Checks, converts and writes one piece; a tensor that reaches the
      // output unchanged on CPU is written straight from the mapping.
      auto process = [&](const at::Tensor& piece) -> absl::Status {
        at::Tensor src = device.is_cpu() ? piece : piece.to(device);
        CountNonFinite(src, &counts);
        if (m.cast()) CountOverflow(src, m.out_dtype, &counts);
        if (!write || invalid) return absl::OkStatus();
        if (fast_half && src.is_cpu() && src.is_contiguous()) {
          half_buffer.resize(static_cast<size_t>(src.numel()));
          FloatToHalf(static_cast<const float*>(src.data_ptr()), half_buffer.data(),
                      half_buffer.size());
          return append(std::string_view(reinterpret_cast<const char*>(half_buffer.data()),
                                         half_buffer.size() * sizeof(uint16_t)));
        }
        at::Tensor out = m.cast() ? src.to(ToScalarType(m.out_dtype)) : src;
        out = out.contiguous();
        if (!out.is_cpu()) out = out.cpu();
        return append(TensorBytes(out));
      };
      const int64_t numel = view->numel();
      if (view->is_contiguous() && numel > 0) {
        // Piece by piece, releasing each piece's pages: memory per tensor is
        // bounded by kChunkElements whatever the tensor's size.
        at::Tensor flat = view->reshape({-1});
        for (int64_t begin = 0; begin < numel && failure.ok(); begin += kChunkElements) {
          at::Tensor piece = flat.slice(0, begin, std::min(numel, begin + kChunkElements));
          failure = process(piece);
          if (options.release_pages) {
            ReleaseBytes(ckpt, *m.source, static_cast<const char*>(piece.data_ptr()),
                         piece.nbytes());
          }
        }
      } else {
        failure = process(*view);
        if (options.release_pages) {
          ReleaseBytes(ckpt, *m.source, ckpt.TensorStorageBytes(*m.source).data(), *extent);
        }
      }
      if (counts.nan > 0 || counts.inf > 0 || counts.overflow > 0) {
        v1::NonFiniteCount* count = report.add_non_finite();
        count->set_name(m.name);
        count->set_nan(counts.nan);
        count->set_inf(counts.inf + counts.overflow);
        if (counts.overflow > 0 && report.error().empty()) {
          report.set_error(absl::StrCat("'", m.name, "': ", counts.overflow,
                                        " finite values overflow when cast to ",
                                        std::string(checkpoint::DTypeName(m.out_dtype))));
        }
        if (policy.non_finite() == v1::NormalizationPolicy::NONFINITE_REJECT) {
          AddReason(&report, "non_finite");
          invalid = true;
        }
      }
    }
  } catch (const c10::Error& e) {
    failure = absl::InternalError(absl::StrCat("libtorch: ", e.what_without_backtrace()));
  }
  report.mutable_timings()->set_check_ms(MsSince(phase) - write_ms);

  // ---- smoke test ----
  // Before the output is committed: a failing forward pass makes the
  // checkpoint INVALID, and INVALID never leaves an output behind. The writer
  // thread drains meanwhile.
  if (failure.ok() && !invalid && !options.torchscript_path.empty() &&
      spec.example_inputs_size() > 0) {
    phase = Clock::now();
    absl::flat_hash_map<std::string, const MatchedTensor*> by_name;
    for (const MatchedTensor& m : tensors) by_name.emplace(m.name, &m);
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
    *report.mutable_smoke_test() = RunSmokeTest(options.torchscript_path, spec, weight);
    if (!report.smoke_test().ok()) {
      AddReason(&report, "smoke_test_failed");
      invalid = true;
    }
    report.mutable_timings()->set_smoke_ms(MsSince(phase));
  }

  if (writer != nullptr) {
    Clock::time_point t0 = Clock::now();
    if (failure.ok() && !invalid) {
      failure = writer->Finish();
    } else {
      writer->Abort();
    }
    write_ms += MsSince(t0);
    report.mutable_timings()->set_write_ms(write_ms);
  }
  if (!failure.ok()) return failure;
  return finish();
}

}  // namespace weightgate::statedict
