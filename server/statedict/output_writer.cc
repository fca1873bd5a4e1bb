#include "server/statedict/output_writer.h"

#include <unistd.h>

#include <cstdio>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/checkpoint/safetensors.h"

namespace weightgate::statedict {
namespace {

bool EndsWith(const std::string& s, const char* suffix) {
  const std::string t(suffix);
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}

std::string TempPath(const std::string& path) {
  return absl::StrCat(path, ".tmp.", ::getpid());
}

absl::Status RenameInto(const std::string& from, const std::string& to) {
  if (std::rename(from.c_str(), to.c_str()) != 0) {
    absl::Status s = absl::ErrnoToStatus(errno, absl::StrCat("rename ", from, " -> ", to));
    std::remove(from.c_str());
    return s;
  }
  return absl::OkStatus();
}

// safetensors cannot alias: every entry, tied or not, carries its bytes.
class SafetensorsOutput final : public OutputWriter {
 public:
  SafetensorsOutput(std::string path, std::string temp,
                    std::unique_ptr<checkpoint::SafetensorsWriter> writer)
      : path_(std::move(path)), temp_(std::move(temp)), writer_(std::move(writer)) {}
  ~SafetensorsOutput() override {
    if (!done_) Abort();
  }

  bool NeedsBytes(size_t) const override { return true; }
  absl::Status Append(std::string_view bytes) override { return writer_->Append(bytes); }
  absl::Status Finish() override {
    done_ = true;
    absl::Status s = writer_->Finish();
    if (!s.ok()) {
      std::remove(temp_.c_str());
      return s;
    }
    return RenameInto(temp_, path_);
  }
  void Abort() override {
    done_ = true;
    writer_.reset();
    std::remove(temp_.c_str());
  }

 private:
  std::string path_;
  std::string temp_;
  std::unique_ptr<checkpoint::SafetensorsWriter> writer_;
  bool done_ = false;
};

}  // namespace

OutputWriter::Format OutputWriter::FormatForPath(const std::string& path) {
  if (EndsWith(path, ".pt") || EndsWith(path, ".pth") || EndsWith(path, ".bin")) {
    return Format::kTorchZip;
  }
  return Format::kSafetensors;
}

absl::StatusOr<std::unique_ptr<OutputWriter>> OutputWriter::Create(
    const std::string& path, Format format, std::vector<Entry> entries,
    std::vector<std::pair<std::string, std::string>> metadata) {
  const std::string temp = TempPath(path);
  if (format == Format::kSafetensors) {
    std::vector<checkpoint::SafetensorsEntry> tensors;
    tensors.reserve(entries.size());
    for (Entry& e : entries) tensors.push_back({std::move(e.name), e.dtype, std::move(e.shape)});
    absl::StatusOr<std::unique_ptr<checkpoint::SafetensorsWriter>> w =
        checkpoint::SafetensorsWriter::Create(temp, std::move(tensors), std::move(metadata));
    if (!w.ok()) {
      std::remove(temp.c_str());
      return w.status();
    }
    return std::unique_ptr<OutputWriter>(new SafetensorsOutput(path, temp, std::move(*w)));
  }
  return absl::UnimplementedError("torch zip output is not available yet");
}

}  // namespace weightgate::statedict
