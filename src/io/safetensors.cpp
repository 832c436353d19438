// safetensors: 8-byte little-endian header length, JSON header, raw little-endian data.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
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
  std::vector<float> rows;  // one transposed tensor at a time
  for (auto& t : tensors) {
    size_t n = dtype_size(t.dtype);
    for (int64_t d : t.shape) n *= size_t(d);
    if (!t.transposed) {
      f.write(t.data, n);
      continue;
    }
    FRUGAL_CHECK(t.dtype == "F32" && t.shape.size() == 2, "{}: transposed needs a 2-D F32 tensor", t.name);
    const int64_t R = t.shape[0], C = t.shape[1];  // written (R, C) from data (C, R)
    const float* src = static_cast<const float*>(t.data);
    rows.resize(size_t(R * C));
    const int64_t tile = 64;  // cache-sized tiles: both sides stay sequential within a tile
    for (int64_t c0 = 0; c0 < C; c0 += tile)
      for (int64_t r0 = 0; r0 < R; r0 += tile)
        for (int64_t c = c0; c < std::min(C, c0 + tile); c++)
          for (int64_t r = r0; r < std::min(R, r0 + tile); r++) rows[size_t(r * C + c)] = src[c * R + r];
    f.write(rows.data(), n);
  }
  f.commit();
}

SafeTensors::SafeTensors(const std::string& path) : path_(path) {
  // Mapped, not read: a reader pages in only the tensors (or ranges of them) it copies.
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) user_error("{}: cannot open", path);
  struct stat sb;
  size_t size = ::fstat(fd, &sb) == 0 ? size_t(sb.st_size) : 0;
  void* p = size ? ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0) : nullptr;
  ::close(fd);
  if (p == MAP_FAILED) user_error("{}: cannot map: {}", path, std::strerror(errno));
  if (p) map_ = std::shared_ptr<void>(p, [size](void* q) { ::munmap(q, size); });
  bytes_ = std::string_view(static_cast<const char*>(p), size);
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

const float* SafeTensors::f32(const std::string& name, int64_t numel) const {
  auto it = index_.find(name);
  if (it == index_.end()) user_error("{}: tensor '{}' is missing", path_, name);
  const Entry& e = it->second;
  if (e.dtype != "F32" || e.end - e.begin != size_t(numel) * 4)
    user_error("{}: tensor '{}' is {} of {} bytes, expected F32 of {} elements", path_, name, e.dtype,
               e.end - e.begin, numel);
  return reinterpret_cast<const float*>(bytes_.data() + data_start_ + e.begin);
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
  return {{"format", "pt"},  // what transformers expects of a PyTorch model's safetensors
          {"n_layer", std::to_string(c.n_layer)},
          {"n_head", std::to_string(c.n_head)},
          {"n_embd", std::to_string(c.n_embd)},
          {"vocab_size", std::to_string(c.vocab_size)},
          {"context", std::to_string(c.context)}};
}

// A parameter's shape in the Hugging Face layout: Conv1D weights [in, out], wte V rows.
static std::vector<int64_t> hf_shape(const ParamSpec& s, const GptConfig& c) {
  if (s.field == &Tensors::wte) return {c.vocab_size, s.shape[1]};
  if (s.hf_conv1d) return {s.shape[1], s.shape[0]};
  return s.shape;
}

void save_model(const std::string& path, Gpt& model) {
  std::vector<StTensor> ts;
  for (auto& n : model.named_params())
    ts.push_back({n.spec->hf_name, "F32", hf_shape(*n.spec, model.config()), n.data, n.spec->hf_conv1d});
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
  const std::string prefix = "transformer.";
  std::vector<float> staged;
  for (auto& n : model.named_params()) {
    const ParamSpec& s = *n.spec;
    std::string name = s.hf_name;
    if (!st.has(name) && name.rfind(prefix, 0) == 0 && st.has(name.substr(prefix.size())))
      name = name.substr(prefix.size());  // GPT2Model's names
    std::vector<int64_t> shape = hf_shape(s, model.config());
    if (!s.hf_conv1d) {
      st.read(name, "F32", shape, n.data);
      // wte: the padding rows beyond V are zero
      if (s.field == &Tensors::wte) std::fill(n.data + shape[0] * shape[1], n.data + s.numel, 0.0f);
      continue;
    }
    staged.resize(size_t(s.numel));
    st.read(name, "F32", shape, staged.data());
    const int64_t R = s.shape[0], C = s.shape[1];  // ours (R, C) from the file's (C, R)
    for (int64_t r = 0; r < R; r++)
      for (int64_t c = 0; c < C; c++) n.data[r * C + c] = staged[size_t(c * R + r)];
  }
  model.sync_compute_weights();
}

void save_hf_config(const std::string& path, const GptConfig& c) {
  json j = {{"architectures", {"GPT2LMHeadModel"}},
            {"model_type", "gpt2"},
            {"vocab_size", c.vocab_size},
            {"n_positions", c.context},
            {"n_ctx", c.context},
            {"n_embd", c.n_embd},
            {"n_layer", c.n_layer},
            {"n_head", c.n_head},
            {"n_inner", nullptr},  // 4 * n_embd
            {"activation_function", "gelu_new"},
            {"layer_norm_epsilon", 1e-5},
            {"initializer_range", 0.02},
            {"resid_pdrop", 0.0},
            {"embd_pdrop", 0.0},
            {"attn_pdrop", 0.0},
            {"scale_attn_weights", true},
            {"tie_word_embeddings", true},
            {"use_cache", true},
            {"bos_token_id", c.vocab_size - 1},
            {"eos_token_id", c.vocab_size - 1},
            {"torch_dtype", "float32"}};
  std::string text = j.dump(2) + "\n";
  write_file_atomic(path, text.data(), text.size());
}

}  // namespace frugal
