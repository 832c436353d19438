// Model weights <-> safetensors files in the Hugging Face GPT-2 layout, and its config.json (the
// format itself is safetensors_file.cpp).
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "io/io.h"

namespace frugal {

using nlohmann::json;

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

void save_model(const std::string& path, Gpt& model, int step) {
  std::vector<StTensor> ts;
  std::vector<std::vector<float>> host;
  for (auto& n : model.named_params())
    ts.push_back({n.spec->hf_name, "F32", hf_shape(*n.spec, model.config()),
                  host_view(model.backend(), n.data, n.spec->numel, host), n.spec->hf_conv1d});
  auto meta = model_metadata(model.config());
  if (step >= 0) meta["step"] = std::to_string(step);
  save_safetensors(path, ts, meta);
}

GptConfig read_model_config(const std::string& path) {
  SafeTensors st(path);
  GptConfig c;
  auto get = [&](const char* key) {
    auto it = st.metadata().find(key);
    if (it == st.metadata().end()) user_error("{}: metadata '{}' is missing (not a frugal model?)", path, key);
    int v = 0;
    const std::string& t = it->second;
    auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
    if (ec != std::errc() || end != t.data() + t.size())
      user_error("{}: metadata '{}' is '{}', expected an integer", path, key, t);
    return v;
  };
  c.n_layer = get("n_layer");
  c.n_head = get("n_head");
  c.n_embd = get("n_embd");
  c.vocab_size = get("vocab_size");
  c.context = get("context");
  c.validate(path);
  return c;
}

namespace {

// The safetensors files of a model: one file, or a directory with model.safetensors or with
// model.safetensors.index.json and the shards its weight_map names. Knows which file holds each
// tensor, and which tensors were taken.
class WeightFiles {
 public:
  explicit WeightFiles(const std::string& path) {
    namespace fs = std::filesystem;
    if (!fs::is_directory(path)) { add(path); return; }
    const std::string index = path + "/model.safetensors.index.json", single = path + "/model.safetensors";
    if (!fs::exists(index)) {
      if (!fs::exists(single))
        user_error("{}: no model.safetensors or model.safetensors.index.json in this directory", path);
      add(single);
      return;
    }
    json j;
    try {
      j = json::parse(read_file(index));
    } catch (const json::exception& e) {
      user_error("{}: not valid JSON: {}", index, e.what());
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object() || j["weight_map"].empty())
      user_error("{}: expected {{\"weight_map\": {{tensor: shard file, ...}}}}", index);
    std::map<std::string, size_t> file_of_shard;
    for (auto& [name, shard] : j["weight_map"].items()) {
      if (!shard.is_string() || shard.get<std::string>().find('/') != std::string::npos)
        user_error("{}: weight_map[\"{}\"] is {}, expected a shard's file name", index, name, shard.dump());
      auto [it, fresh] = file_of_shard.emplace(shard.get<std::string>(), files_.size());
      if (fresh) add(path + "/" + it->first);
      if (where_.count(name) == 0 || where_[name] != it->second)
        user_error("{}: weight_map names tensor '{}' in {}, which does not hold it", index, name, it->first);
    }
  }

  bool has(const std::string& name) const { return where_.count(name) > 0; }
  const SafeTensors& file(const std::string& name) const { return *files_[where_.at(name)]; }
  const std::string& path(const std::string& name) const { return paths_[where_.at(name)]; }
  // Reads `name` (of this shape, any float dtype) as fp32 and marks it taken.
  void take(const std::string& name, const std::vector<int64_t>& shape, float* out) {
    file(name).read_f32(name, shape, out);
    taken_.insert(name);
  }
  std::vector<std::string> not_taken() const {
    std::vector<std::string> out;
    for (auto& [name, f] : where_)
      if (!taken_.count(name)) out.push_back(name);
    return out;
  }

 private:
  static std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) user_error("{}: cannot read", path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  void add(const std::string& path) {
    files_.push_back(std::make_unique<SafeTensors>(path));
    paths_.push_back(path);
    for (auto& name : files_.back()->names())
      if (!where_.emplace(name, files_.size() - 1).second)
        user_error("{}: tensor '{}' is also in {}", path, name, paths_[where_[name]]);
  }
  std::vector<std::unique_ptr<SafeTensors>> files_;
  std::vector<std::string> paths_;
  std::map<std::string, size_t> where_;  // tensor -> index into files_
  std::set<std::string> taken_;
};

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

}  // namespace

void load_model(const std::string& path, Gpt& model) {
  WeightFiles w(path);
  const std::string prefix = "transformer.";
  const GptConfig& c = model.config();
  std::vector<float> staged, ours, wte;
  for (auto& n : model.named_params()) {
    const ParamSpec& s = *n.spec;
    std::string name = s.hf_name;
    if (!w.has(name) && name.rfind(prefix, 0) == 0 && w.has(name.substr(prefix.size())))
      name = name.substr(prefix.size());  // GPT2Model's names
    if (!w.has(name)) user_error("{}: tensor '{}' is missing", path, name);
    staged.assign(size_t(s.numel), 0.0f);  // wte: the padding rows beyond V are zero
    w.take(name, hf_shape(s, c), staged.data());
    for (float v : staged)
      if (!std::isfinite(v))
        user_error("{}: tensor '{}' holds {}: the weights are corrupt (not finite numbers)", w.path(name), name, v);
    if (s.field == &Tensors::wte) wte.assign(staged.begin(), staged.begin() + int64_t(c.vocab_size) * s.shape[1]);
    const float* src = staged.data();
    if (s.hf_conv1d) {
      ours.resize(size_t(s.numel));
      const int64_t R = s.shape[0], C = s.shape[1];  // ours (R, C) from the file's (C, R)
      for (int64_t r = 0; r < R; r++)
        for (int64_t k = 0; k < C; k++) ours[size_t(r * C + k)] = staged[size_t(k * R + r)];
      src = ours.data();
    }
    model.backend().copy(n.data, src, size_t(s.numel) * sizeof(float));
  }
  // The output head is wte (tied): a stored lm_head.weight must be that same matrix.
  if (w.has("lm_head.weight")) {
    staged.assign(wte.size(), 0.0f);
    w.take("lm_head.weight", {c.vocab_size, c.n_embd}, staged.data());
    if (staged != wte)
      user_error("{}: tensor 'lm_head.weight' differs from the embedding, but frugal's GPT-2 ties its "
                 "output head to the embedding (an untied head has no place)", w.path("lm_head.weight"));
  }
  for (auto& name : w.not_taken()) {
    if (ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias")) continue;  // causal masks
    user_error("{}: tensor '{}' has no place in this model ({} layers, n_embd {}, vocab {})",
               w.path(name), name, c.n_layer, c.n_embd, c.vocab_size);
  }
  model.sync_compute_weights();
}

std::string hf_config_path(const std::string& weights) {
  namespace fs = std::filesystem;
  fs::path dir = fs::is_directory(weights) ? fs::path(weights) : fs::path(weights).parent_path();
  fs::path p = (dir.empty() ? fs::path(".") : dir) / "config.json";
  return fs::exists(p) ? p.string() : "";
}

GptConfig read_hf_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) user_error("{}: cannot open the model config", path);
  json j = json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object()) user_error("{}: expected a JSON object (a Hugging Face config.json)", path);
  if (j.contains("model_type") && j["model_type"] != "gpt2")
    user_error("{}: model_type: expected gpt2, got {}", path, j["model_type"].dump());
  GptConfig c;
  c.preset = std::filesystem::path(path).parent_path().filename().string();
  if (c.preset.empty()) c.preset = "config.json";
  for (auto [key, field] : {std::pair{"n_layer", &c.n_layer}, {"n_head", &c.n_head}, {"n_embd", &c.n_embd},
                            {"vocab_size", &c.vocab_size}, {"n_positions", &c.context}}) {
    if (!j.contains(key) || !j[key].is_number_integer() || j[key].get<int64_t>() < 1 || j[key].get<int64_t>() > (1 << 30))
      user_error("{}: {}: expected a positive integer{}", path, key, j.contains(key) ? ", got " + j[key].dump() : " (missing)");
    *field = j[key].get<int>();
  }
  // what frugal's GPT-2 computes; anything else would load and compute another function
  auto expect = [&](const char* key, const json& want, const std::string& what) {
    if (j.contains(key) && !j[key].is_null() && j[key] != want)
      user_error("{}: {}: expected {} ({}), got {}", path, key, want.dump(), what, j[key].dump());
  };
  expect("tie_word_embeddings", true, "frugal's GPT-2 ties the output head to the embedding");
  if (j.value("activation_function", "gelu_new") != "gelu_pytorch_tanh")
    expect("activation_function", "gelu_new", "the tanh GELU");
  expect("n_inner", 4 * c.n_embd, "4 * n_embd");
  expect("scale_attn_weights", true, "attention scaled by 1/sqrt(head size)");
  expect("scale_attn_by_inverse_layer_idx", false, "no per-layer attention scaling");
  if (j.contains("layer_norm_epsilon") && (!j["layer_norm_epsilon"].is_number() ||
                                           std::abs(j["layer_norm_epsilon"].get<double>() - 1e-5) > 1e-12))
    user_error("{}: layer_norm_epsilon: expected 1e-05, got {}", path, j["layer_norm_epsilon"].dump());
  c.validate(path);
  return c;
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
