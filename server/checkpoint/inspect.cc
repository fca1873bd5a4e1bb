#include "server/checkpoint/inspect.h"

#include <algorithm>
#include <cstdio>
#include <map>

#include "common/human_bytes.h"
#include "common/str_util.h"

namespace weightgate::checkpoint {

using common::Cat;
using common::HumanBytes;
namespace {

using Kind = Value::Kind;

// Lists in the text table are cut after this many names.
constexpr size_t kMaxListedNames = 20;

bool HoldsTensorsDirectly(const Value* dict) {
  for (size_t k = 1; k < dict->items.size(); k += 2) {
    if (dict->items[k]->kind == Kind::kTensor) return true;
  }
  return false;
}

std::string KeyText(const Value* key) {
  if (key->kind == Kind::kString) return key->str;
  return DebugString(key, 2);
}

bool StartsWith(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

std::vector<std::string> DetectWrappers(const std::vector<InspectedTensor>& tensors) {
  std::vector<std::string> found;
  if (tensors.empty()) return found;
  // Leading prefixes every key shares, peeled one at a time (module._orig_mod.x).
  size_t peeled = 0;
  for (bool again = true; again;) {
    again = false;
    for (std::string_view prefix : kWrapperPrefixes) {
      bool all = std::all_of(tensors.begin(), tensors.end(), [&](const InspectedTensor& t) {
        return t.name.size() > peeled + prefix.size() &&
               StartsWith(std::string_view(t.name).substr(peeled), prefix);
      });
      if (all) {
        found.emplace_back(prefix);
        peeled += prefix.size();
        again = true;
        break;
      }
    }
  }
  // FSDP / activation checkpointing / torch.compile wrappers also nest inside names.
  for (std::string_view inner :
       {"_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod."}) {
    if (std::find(found.begin(), found.end(), inner) != found.end()) continue;
    std::string dotted = Cat(".", inner);
    for (const InspectedTensor& t : tensors) {
      if (StartsWith(t.name, inner) || t.name.find(dotted) != std::string::npos) {
        found.emplace_back(inner);
        break;
      }
    }
  }
  return found;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t k = 0; k < shape.size(); ++k) {
    if (k > 0) s += ", ";
    s += std::to_string(shape[k]);
  }
  return s + "]";
}

std::string JoinNames(const std::vector<std::string>& names, size_t max) {
  std::string s;
  for (size_t k = 0; k < names.size() && k < max; ++k) {
    if (k > 0) s += ", ";
    s += names[k];
  }
  if (names.size() > max) s += Cat(", ... (", names.size() - max, " more)");
  return s;
}

// Display text for a name: control characters escaped so one name is one line.
std::string Printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

// Length of the valid UTF-8 sequence at s[i], or 0.
size_t Utf8Length(std::string_view s, size_t i) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n;
  uint32_t cp;
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) {
    n = 2;
    cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3;
    cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (n > s.size() - i) return 0;
  for (size_t k = 1; k < n; ++k) {
    unsigned char cc = static_cast<unsigned char>(s[i + k]);
    if ((cc & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (cc & 0x3F);
  }
  if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
      cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    return 0;
  }
  return n;
}

// `s` as a JSON string literal; unlike json.h's JsonQuote it accepts any
// bytes (pickle strings are untrusted), replacing invalid UTF-8 by U+FFFD.
std::string QuoteJson(std::string_view s);

void JsonStrings(std::string* out, const std::vector<std::string>& v) {
  out->push_back('[');
  for (size_t k = 0; k < v.size(); ++k) {
    if (k > 0) out->push_back(',');
    out->append(QuoteJson(v[k]));
  }
  out->push_back(']');
}

void JsonInts(std::string* out, const std::vector<int64_t>& v) {
  out->push_back('[');
  for (size_t k = 0; k < v.size(); ++k) {
    if (k > 0) out->push_back(',');
    out->append(std::to_string(v[k]));
  }
  out->push_back(']');
}

std::string QuoteJson(std::string_view s) {
  std::string out = "\"";
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '"') {
      out += "\\\"";
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else if (c >= 0x80) {
      size_t n = Utf8Length(s, i);
      if (n == 0) {
        out += "\\ufffd";
        ++i;
        continue;
      }
      out.append(s.substr(i, n));
      i += n;
      continue;
    } else {
      out.push_back(static_cast<char>(c));
    }
    ++i;
  }
  out.push_back('"');
  return out;
}

}  // namespace

Inspection Inspect(const Checkpoint& ckpt) {
  Inspection in;
  if (ckpt.file != nullptr) {
    in.file = ckpt.file->path();
    in.file_size = ckpt.file->size();
  }
  in.format = ckpt.format;
  in.archive_prefix = ckpt.archive_prefix;
  in.opaque_globals = ckpt.opaque_globals;
  in.unsafe_globals = ckpt.unsafe_globals;
  in.called_globals = ckpt.called_globals;
  in.weights_only_blockers = ckpt.weights_only_blockers;
  if (ckpt.format == Format::kTorchZip || ckpt.format == Format::kTorchLegacy) {
    in.weights_only = in.weights_only_blockers.empty() ? Inspection::WeightsOnly::kLoads
                                                       : Inspection::WeightsOnly::kRefused;
  }
  in.budget_used = ckpt.budget_used;
  in.budget_limit = ckpt.budget_limit;
  in.metadata = ckpt.metadata;
  const Value* root = ckpt.root;
  if (root == nullptr) return in;

  const Value* sd = nullptr;
  if (root->kind == Kind::kDict) {
    for (size_t k = 0; k + 1 < root->items.size(); k += 2) {
      in.top_level_keys.push_back(KeyText(root->items[k]));
    }
    if (HoldsTensorsDirectly(root)) {
      sd = root;
    } else {
      for (std::string_view key : kStateDictKeys) {
        const Value* v = root->Get(key);
        if (v != nullptr && !FlattenTensors(v).empty()) {
          sd = v;
          in.state_dict_path = std::string(key);
          break;
        }
      }
    }
  }
  std::vector<NamedTensor> all = FlattenTensors(root);
  if (sd == nullptr && !all.empty()) sd = root;
  if (sd == nullptr) return in;
  in.state_dict_found = true;

  std::vector<NamedTensor> tensors = sd == root ? all : FlattenTensors(sd);
  in.other_tensors = all.size() > tensors.size() ? all.size() - tensors.size() : 0;
  std::map<int, std::vector<std::string>> by_storage;
  for (const NamedTensor& nt : tensors) {
    const TensorRecord& t = *nt.tensor;
    InspectedTensor it;
    it.name = nt.name;
    it.dtype = t.dtype;
    it.shape = t.shape;
    it.strides = t.strides;
    it.storage_offset = t.storage_offset;
    it.nbytes = t.nbytes();
    it.storage_index = t.storage_index;
    it.contiguous = t.is_contiguous();
    in.total_tensor_bytes += it.nbytes;
    if (!it.contiguous) in.non_contiguous.push_back(it.name);
    if (t.storage_index >= 0) by_storage[t.storage_index].push_back(it.name);
    in.tensors.push_back(std::move(it));
  }
  for (auto& [index, names] : by_storage) {
    if (names.size() > 1) in.shared_storages.push_back({index, std::move(names)});
  }
  in.wrappers = DetectWrappers(in.tensors);
  return in;
}

std::string RenderInspectionText(const Inspection& in) {
  std::string out;
  auto row = [&](std::string_view label, const std::string& value) {
    out += Cat(label, std::string(label.size() < 16 ? 16 - label.size() : 1, ' '), value, "\n");
  };
  if (!in.file.empty()) row("file", Cat(Printable(in.file), " (", HumanBytes(in.file_size), ")"));
  std::string format(FormatName(in.format));
  if (!in.archive_prefix.empty())
    format += Cat(", archive prefix '", Printable(in.archive_prefix), "'");
  row("format", format);
  std::vector<std::string> read_as;  // checkpoint sets and module pickles (checkpoint_set.h)
  for (const std::string& m : in.metadata) {
    if (m.rfind("set_", 0) == 0 || m.rfind("module_pickle=", 0) == 0)
      read_as.push_back(Printable(m));
  }
  if (!read_as.empty()) row("read as", JoinNames(read_as, kMaxListedNames));
  if (!in.top_level_keys.empty()) {
    std::vector<std::string> keys;
    for (const std::string& k : in.top_level_keys) keys.push_back(Printable(k));
    row("top-level keys", JoinNames(keys, kMaxListedNames));
  }
  if (!in.state_dict_found) {
    row("state_dict", "not found (no tensors)");
  } else {
    row("state_dict",
        Cat(in.state_dict_path.empty() ? "top level" : Cat("'", Printable(in.state_dict_path), "'"),
            ": ", in.tensors.size(), in.tensors.size() == 1 ? " tensor, " : " tensors, ",
            HumanBytes(in.total_tensor_bytes),
            in.other_tensors > 0 ? Cat(" (", in.other_tensors, " more elsewhere)") : ""));
  }
  row("wrappers", in.wrappers.empty() ? "none" : JoinNames(in.wrappers, kMaxListedNames));
  for (const SharedStorage& s : in.shared_storages) {
    std::vector<std::string> names;
    for (const std::string& n : s.tensors) names.push_back(Printable(n));
    row("shared storage", JoinNames(names, kMaxListedNames));
  }
  if (!in.non_contiguous.empty()) {
    std::vector<std::string> names;
    for (const std::string& n : in.non_contiguous) names.push_back(Printable(n));
    row("non-contiguous", JoinNames(names, kMaxListedNames));
  }
  std::vector<std::string> opaque, unsafe;
  for (const std::string& g : in.opaque_globals) opaque.push_back(Printable(g));
  for (const std::string& g : in.unsafe_globals) unsafe.push_back(Printable(g));
  row("opaque globals", opaque.empty() ? "none" : JoinNames(opaque, kMaxListedNames));
  row("unsafe globals",
      unsafe.empty() ? "none" : JoinNames(unsafe, kMaxListedNames) + "  <- UNSAFE");
  std::vector<std::string> calls, blockers;
  for (const std::string& g : in.called_globals) calls.push_back(Printable(g));
  for (const std::string& g : in.weights_only_blockers) blockers.push_back(Printable(g));
  row("calls", calls.empty() ? "none" : JoinNames(calls, kMaxListedNames));
  switch (in.weights_only) {
    case Inspection::WeightsOnly::kLoads:
      row("weights_only", "loads under torch.load(weights_only=True) (torch 1.13)");
      break;
    case Inspection::WeightsOnly::kRefused:
      row("weights_only", Cat("refused by torch.load(weights_only=True) (torch 1.13): ",
                              JoinNames(blockers, kMaxListedNames)));
      break;
    case Inspection::WeightsOnly::kNotApplicable: row("weights_only", "n/a"); break;
  }
  if (in.budget_limit > 0) {
    row("read budget",
        Cat(HumanBytes(in.budget_used), " of ", HumanBytes(in.budget_limit), " used"));
  }
  if (in.tensors.empty()) return out;

  size_t name_width = 4;
  size_t shape_width = 5;
  std::vector<std::string> names, shapes;
  for (const InspectedTensor& t : in.tensors) {
    names.push_back(Printable(t.name));
    shapes.push_back(ShapeText(t.shape));
    name_width = std::max(name_width, std::min<size_t>(names.back().size(), 80));
    shape_width = std::max(shape_width, std::min<size_t>(shapes.back().size(), 40));
  }
  auto pad = [](const std::string& s, size_t w) {
    return s.size() >= w ? s : s + std::string(w - s.size(), ' ');
  };
  out += "\n";
  out += Cat(pad("NAME", name_width), "  ", pad("DTYPE", 5), "  ", pad("SHAPE", shape_width),
             "  BYTES\n");
  for (size_t k = 0; k < in.tensors.size(); ++k) {
    const InspectedTensor& t = in.tensors[k];
    out += Cat(pad(names[k], name_width), "  ", pad(std::string(DTypeName(t.dtype)), 5), "  ",
               pad(shapes[k], shape_width), "  ", t.nbytes,
               t.contiguous ? "" : "  (non-contiguous)", "\n");
  }
  return out;
}

std::string RenderInspectionJson(const Inspection& in) {
  std::string o = "{";
  o += Cat("\"file\":", QuoteJson(in.file), ",\"file_size\":", in.file_size);
  o += Cat(",\"format\":", QuoteJson(FormatName(in.format)));
  o += Cat(",\"archive_prefix\":", QuoteJson(in.archive_prefix));
  o += ",\"top_level_keys\":";
  JsonStrings(&o, in.top_level_keys);
  o +=
      Cat(",\"state_dict\":{\"found\":", in.state_dict_found ? "true" : "false",
          ",\"path\":", QuoteJson(in.state_dict_path), ",\"tensor_count\":", in.tensors.size(),
          ",\"total_bytes\":", in.total_tensor_bytes, ",\"other_tensors\":", in.other_tensors, "}");
  o += ",\"wrappers\":";
  JsonStrings(&o, in.wrappers);
  o += ",\"tensors\":[";
  for (size_t k = 0; k < in.tensors.size(); ++k) {
    const InspectedTensor& t = in.tensors[k];
    if (k > 0) o += ",";
    o += Cat("{\"name\":", QuoteJson(t.name), ",\"dtype\":", QuoteJson(DTypeName(t.dtype)),
             ",\"shape\":");
    JsonInts(&o, t.shape);
    o += ",\"strides\":";
    JsonInts(&o, t.strides);
    o += Cat(",\"storage_offset\":", t.storage_offset, ",\"bytes\":", t.nbytes,
             ",\"storage\":", t.storage_index, ",\"contiguous\":", t.contiguous ? "true" : "false",
             "}");
  }
  o += "],\"shared_storages\":[";
  for (size_t k = 0; k < in.shared_storages.size(); ++k) {
    if (k > 0) o += ",";
    o += Cat("{\"storage\":", in.shared_storages[k].storage_index, ",\"tensors\":");
    JsonStrings(&o, in.shared_storages[k].tensors);
    o += "}";
  }
  o += "],\"non_contiguous\":";
  JsonStrings(&o, in.non_contiguous);
  o += ",\"opaque_globals\":";
  JsonStrings(&o, in.opaque_globals);
  o += ",\"unsafe_globals\":";
  JsonStrings(&o, in.unsafe_globals);
  o += ",\"called_globals\":";
  JsonStrings(&o, in.called_globals);
  o += Cat(",\"weights_only\":\"",
           in.weights_only == Inspection::WeightsOnly::kLoads     ? "loads"
           : in.weights_only == Inspection::WeightsOnly::kRefused ? "refused"
                                                                  : "n/a",
           "\",\"weights_only_blockers\":");
  JsonStrings(&o, in.weights_only_blockers);
  o += Cat(",\"read_budget\":{\"used\":", in.budget_used, ",\"limit\":", in.budget_limit, "}");
  o += Cat(",\"unsafe\":", in.unsafe() ? "true" : "false");
  o += ",\"metadata\":";
  JsonStrings(&o, in.metadata);
  o += "}\n";
  return o;
}

}  // namespace weightgate::checkpoint
