// Model weights <-> safetensors files (the format itself is safetensors_file.cpp).
#include <charconv>

#include "io/io.h"

namespace frugal {

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
  for (auto& n : model.named_params()) st.read(n.spec->name, "F32", n.spec->shape, n.data);
  model.sync_compute_weights();
}

}  // namespace frugal
