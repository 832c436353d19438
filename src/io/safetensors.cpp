// safetensors: 8-byte little-endian header length, JSON header, raw little-endian data.
#include <nlohmann/json.hpp>

#include <cstring>
#include <fstream>

#include "io/io.h"

namespace frugal {

using nlohmann::json;

static size_t dtype_size(const std::string& d) { return d == "F32" || d == "I32" ? 4 : 0; }

void save_safetensors(const std::string& path, const std::vector<StTensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  size_t offset = 0;
  for (auto& t : tensors) {
    size_t n = dtype_size(t.dtype);
    FRUGAL_CHECK(n > 0, "unsupported dtype {}", t.dtype);
    for (int64_t d : t.shape) n *= size_t(d);
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // align the data to 8 bytes
  uint64_t len = h.size();
  AtomicFile f(path);
  f.write(&len, 8);
  f.write(h.data(), h.size());
  for (auto& t : tensors) {
    size_t n = dtype_size(t.dtype);
    for (int64_t d : t.shape) n *= size_t(d);
    f.write(t.data, n);
  }
  f.commit();
}

SafeTensors::SafeTensors(const std::string& path) : path_(path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) user_error("{}: cannot open", path);
  bytes_.resize(size_t(in.tellg()));
  in.seekg(0);
  in.read(bytes_.data(), std::streamsize(bytes_.size()));
  uint64_t len = 0;
  if (bytes_.size() >= 8) std::memcpy(&len, bytes_.data(), 8);
  if (bytes_.size() < 8 || len > bytes_.size() - 8)
    user_error("{}: not a safetensors file (header length {} for a {}-byte file)", path, len, bytes_.size());
  data_start_ = 8 + len;
  json header;
  try {
    header = json::parse(bytes_.begin() + 8, bytes_.begin() + 8 + std::ptrdiff_t(len));
    for (auto& [name, v] : header.items()) {
      if (name == "__metadata__") {
        for (auto& [k, mv] : v.items()) metadata_[k] = mv.get<std::string>();
        continue;
      }
      Entry e{v.at("dtype").get<std::string>(), v.at("shape").get<std::vector<int64_t>>(),
              v.at("data_offsets").at(0).get<size_t>(), v.at("data_offsets").at(1).get<size_t>()};
      if (e.end < e.begin || e.end > bytes_.size() - data_start_)
        user_error("{}: tensor '{}' lies outside the file (offsets {}..{}, {} bytes of data)", path,
                   name, e.begin, e.end, bytes_.size() - data_start_);
      index_[name] = std::move(e);
    }
  } catch (const json::exception& e) {
    user_error("{}: bad safetensors header: {}", path, e.what());
  }
}

std::vector<int64_t> SafeTensors::shape(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) user_error("{}: tensor '{}' is missing", path_, name);
  return it->second.shape;
}

void SafeTensors::read(const std::string& name, const std::string& dtype,
                       const std::vector<int64_t>& shape, void* out) const {
  auto it = index_.find(name);
  if (it == index_.end()) user_error("{}: tensor '{}' is missing", path_, name);
  const Entry& e = it->second;
  if (e.dtype != dtype || e.shape != shape)
    user_error("{}: tensor '{}' is {} [{}], expected {} [{}]", path_, name, e.dtype,
               fmt::join(e.shape, ", "), dtype, fmt::join(shape, ", "));
  size_t n = dtype_size(dtype);
  for (int64_t d : shape) n *= size_t(d);
  if (e.end - e.begin != n)
    user_error("{}: tensor '{}' has {} bytes, expected {}", path_, name, e.end - e.begin, n);
  std::memcpy(out, bytes_.data() + data_start_ + e.begin, n);
}

static std::map<std::string, std::string> model_metadata(const GptConfig& c) {
  return {{"format", "frugal"},
          {"n_layer", std::to_string(c.n_layer)},
          {"n_head", std::to_string(c.n_head)},
          {"n_embd", std::to_string(c.n_embd)},
          {"vocab_size", std::to_string(c.vocab_size)},
          {"context", std::to_string(c.context)}};
}

void save_model(const std::string& path, Gpt& model) {
  std::vector<StTensor> ts;
  for (auto& n : model.named_params()) ts.push_back({n.spec->name, "F32", n.spec->shape, n.data});
  save_safetensors(path, ts, model_metadata(model.config()));
}

GptConfig read_model_config(const std::string& path) {
  SafeTensors st(path);
  GptConfig c;
  auto get = [&](const char* key) {
    auto it = st.metadata().find(key);
    if (it == st.metadata().end()) user_error("{}: metadata '{}' is missing (not a frugal model?)", path, key);
    return std::stoi(it->second);
  };
  c.n_layer = get("n_layer");
  c.n_head = get("n_head");
  c.n_embd = get("n_embd");
  c.vocab_size = get("vocab_size");
  c.context = get("context");
  c.validate(path);
  return c;
}

void load_model(const std::string& path, Gpt& model) {
  SafeTensors st(path);
  for (auto& n : model.named_params()) st.read(n.spec->name, "F32", n.spec->shape, n.data);
  model.sync_compute_weights();
}

}  // namespace frugal
