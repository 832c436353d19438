// Model weights <-> safetensors files in the Hugging Face GPT-2 layout, and its config.json (the
// format itself is safetensors_file.cpp).
#include <charconv>

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

void save_model(const std::string& path, Gpt& model) {
  std::vector<StTensor> ts;
  std::vector<std::vector<float>> host;
  for (auto& n : model.named_params())
    ts.push_back({n.spec->hf_name, "F32", hf_shape(*n.spec, model.config()),
                  host_view(model.backend(), n.data, n.spec->numel, host), n.spec->hf_conv1d});
  save_safetensors(path, ts, model_metadata(model.config()));
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

void load_model(const std::string& path, Gpt& model) {
  SafeTensors st(path);
  const std::string prefix = "transformer.";
  std::vector<float> staged, ours;
  for (auto& n : model.named_params()) {
    const ParamSpec& s = *n.spec;
    std::string name = s.hf_name;
    if (!st.has(name) && name.rfind(prefix, 0) == 0 && st.has(name.substr(prefix.size())))
      name = name.substr(prefix.size());  // GPT2Model's names
    staged.assign(size_t(s.numel), 0.0f);  // wte: the padding rows beyond V are zero
    st.read(name, "F32", hf_shape(s, model.config()), staged.data());
    const float* src = staged.data();
    if (s.hf_conv1d) {
      ours.resize(size_t(s.numel));
      const int64_t R = s.shape[0], C = s.shape[1];  // ours (R, C) from the file's (C, R)
      for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < C; c++) ours[size_t(r * C + c)] = staged[size_t(c * R + r)];
      src = ours.data();
    }
    model.backend().copy(n.data, src, size_t(s.numel) * sizeof(float));
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
