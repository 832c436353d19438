// Model weights <-> safetensors files in the Hugging Face GPT-2 layout, and its config.json (the
// format itself is safetensors_file.cpp).
#include <charconv>
#include <cmath>
#include <filesystem>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "io/io.h"

namespace frugal {

using nlohmann::json;

static bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

static std::map<std::string, std::string> model_metadata(const ModelConfig& c) {
  std::map<std::string, std::string> m = {
      {"format", "pt"},  // what transformers expects of a PyTorch model's safetensors
      {"n_layer", std::to_string(c.n_layer)},
      {"n_head", std::to_string(c.n_head)},
      {"n_embd", std::to_string(c.n_embd)},
      {"vocab_size", std::to_string(c.vocab_size)},
      {"context", std::to_string(c.context)}};
  if (c.family == Family::llama) {  // absent: gpt2 (files written before the llama family)
    const RopeScaling& r = c.rope_scaling;
    m.insert({{"family", "llama"},
              {"n_kv_head", std::to_string(c.kv_heads())},
              {"ffn_hidden", std::to_string(c.ffn())},
              {"attention_bias", c.attention_bias ? "1" : "0"},
              {"tied_head", c.tied_head ? "1" : "0"},
              {"norm_eps", fmt::format("{}", c.norm_eps)},
              {"rope_theta", fmt::format("{}", c.rope_theta)},
              {"rope_scaling", fmt::format("{} {} {} {}", r.factor, r.low_freq_factor, r.high_freq_factor, r.original_context)}});
    if (c.sliding_window > 0) m["sliding_window"] = std::to_string(c.sliding_window);  // absent: none
  }
  return m;
}

// One tensor of transformers' files that holds rows [row0, row0 + part.rows) of a parameter.
struct HfTensor {
  const HfPart* part;
  int64_t row0;
  std::vector<int64_t> shape;  // in the file: Conv1D weights [in, out]; vocabulary rows: V
};
static std::vector<HfTensor> hf_tensors(const ParamSpec& s, const ModelConfig& c) {
  std::vector<HfTensor> out;
  int64_t row0 = 0;
  for (const HfPart& part : s.hf) {
    std::vector<int64_t> shape = s.shape;
    shape[0] = s.vocab_rows() ? c.vocab_size : part.rows;
    if (s.hf_conv1d) std::swap(shape[0], shape[1]);
    out.push_back({&part, row0, shape});
    row0 += part.rows;
  }
  return out;
}

// The model's tensors as transformers names them (data in `host` where the backend is a GPU).
static std::vector<StTensor> hf_model_tensors(Model& model, std::vector<std::vector<float>>& host) {
  std::vector<StTensor> ts;
  for (auto& n : model.named_params()) {
    if (n.spec->site >= 0) continue;  // LoRA's adapters: save_adapters
    FRUGAL_CHECK(n.data, "{}: a frozen 16-bit weight has no fp32 values to write", n.spec->name);
    const float* data = host_view(model.backend(), n.data, n.spec->numel, host);
    const int64_t cols = n.spec->shape.size() == 2 ? n.spec->shape[1] : 1;
    for (const HfTensor& t : hf_tensors(*n.spec, model.config()))
      ts.push_back({t.part->name, "F32", t.shape, data + t.row0 * cols, n.spec->hf_conv1d});
  }
  return ts;
}

void save_model(const std::string& path, Model& model, int step) {
  std::vector<std::vector<float>> host;
  auto meta = model_metadata(model.config());
  if (step >= 0) meta["step"] = std::to_string(step);
  save_safetensors(path, hf_model_tensors(model, host), meta);
}

int save_model_dir(const std::string& dir, Model& model, int64_t max_shard_bytes) {
  std::vector<std::vector<float>> host;
  const std::vector<StTensor> ts = hf_model_tensors(model, host);
  const auto meta = model_metadata(model.config());
  auto bytes = [](const StTensor& t) {
    int64_t n = 4;
    for (int64_t d : t.shape) n *= d;
    return n;
  };
  // tensors in order into shards of at most max_shard_bytes (a larger tensor alone), as
  // save_pretrained packs them
  std::vector<std::vector<StTensor>> shards(1);
  int64_t in_shard = 0, total = 0;
  for (const StTensor& t : ts) {
    if (in_shard > 0 && in_shard + bytes(t) > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(t);
    in_shard += bytes(t);
    total += bytes(t);
  }
  namespace fs = std::filesystem;
  for (const auto& e : fs::directory_iterator(dir)) {  // an earlier export's weights would mix in
    const std::string f = e.path().filename().string();
    if (f == "model.safetensors" || f == "model.safetensors.index.json" ||
        (f.rfind("model-", 0) == 0 && ends_with(f, ".safetensors")))
      fs::remove(e.path());
  }
  if (shards.size() == 1) {
    save_safetensors(dir + "/model.safetensors", ts, meta);
    return 1;
  }
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", json::object()}};
  for (size_t k = 0; k < shards.size(); k++) {
    const std::string name = fmt::format("model-{:05d}-of-{:05d}.safetensors", k + 1, shards.size());
    save_safetensors(dir + "/" + name, shards[k], meta);
    for (const StTensor& t : shards[k]) index["weight_map"][t.name] = name;
  }
  const std::string text = index.dump(2) + "\n";
  write_file_atomic(dir + "/model.safetensors.index.json", text.data(), text.size());
  return int(shards.size());
}

// The model shape in the metadata of the frugal model file at path.
static ModelConfig config_from_metadata(const std::map<std::string, std::string>& meta, const std::string& path) {
  ModelConfig c;
  auto text = [&](const char* key) -> const std::string& {
    auto it = meta.find(key);
    if (it == meta.end()) user_error("{}: metadata '{}' is missing (not a frugal model?)", path, key);
    return it->second;
  };
  auto get = [&](const char* key) { return metadata_integer<int>(text(key), key, path); };
  auto number = [&](const char* key) {
    try {
      size_t used = 0;
      double v = std::stod(text(key), &used);
      if (used == text(key).size()) return v;
    } catch (const std::exception&) {
    }
    user_error("{}: metadata '{}' is '{}', expected a number", path, key, text(key));
  };
  c.n_layer = get("n_layer");
  c.n_head = get("n_head");
  c.n_embd = get("n_embd");
  c.vocab_size = get("vocab_size");
  c.context = get("context");
  if (meta.count("family")) {
    if (text("family") != "llama") user_error("{}: metadata 'family' is '{}', expected llama (or none: gpt2)", path, text("family"));
    c.family = Family::llama;
    c.n_kv_head = get("n_kv_head");
    c.ffn_hidden = get("ffn_hidden");
    c.attention_bias = get("attention_bias") != 0;
    c.tied_head = get("tied_head") != 0;
    c.norm_eps = number("norm_eps");
    c.rope_theta = number("rope_theta");
    RopeScaling& r = c.rope_scaling;
    std::istringstream in(text("rope_scaling"));
    if (!(in >> r.factor >> r.low_freq_factor >> r.high_freq_factor >> r.original_context))
      user_error("{}: metadata 'rope_scaling' is '{}', expected four numbers", path, text("rope_scaling"));
    if (meta.count("sliding_window")) c.sliding_window = get("sliding_window");
  }
  c.validate(path);
  return c;
}

ModelConfig read_model_config(const std::string& path) { return config_from_metadata(SafeTensors(path).metadata(), path); }

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
      j = json::parse(read_whole_file(index));
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
  // A weight transformers saved from a bitsandbytes 4-bit model (load_in_4bit): `name` holds the
  // packed codes, beside it name.absmax, .nested_absmax, .quant_map, .nested_quant_map and
  // .quant_state.bitsandbytes__nf4 (JSON). 8-bit and fp4 files are refused here.
  bool nf4(const std::string& name) const {
    if (has(name + ".SCB"))
      user_error("{}: tensor '{}' is bitsandbytes' 8-bit (LLM.int8) form, which frugal does not read: give the "
                 "unquantized weights (lora.base = \"int8\" or \"nf4\" quantizes them on load)", path(name), name);
    if (has(name + ".quant_state.bitsandbytes__fp4"))
      user_error("{}: tensor '{}' is bitsandbytes' fp4, expected nf4 (bnb_4bit_quant_type = \"nf4\")", path(name), name);
    return has(name + ".quant_state.bitsandbytes__nf4");
  }
  // Reads it, (rows, cols), as it is stored: the same bytes as frugal's nf4 (core/quant.h).
  QuantTensor take_nf4(const std::string& name, int64_t rows, int64_t cols) {
    auto bad = [&](const std::string& what) {
      user_error("{}: tensor '{}': {} (frugal reads bitsandbytes' nf4 with blocks of 64 and double-quantized absmax, "
                 "bnb_4bit_use_double_quant = true)", path(name), name, what);
    };
    auto raw = [&](const std::string& piece, const char* dtype, std::vector<int64_t> shape, void* out) {
      if (!has(piece)) bad(fmt::format("'{}' is missing", piece));
      file(piece).read(piece, dtype, shape, out);
      taken_.insert(piece);
    };
    const std::string state = name + ".quant_state.bitsandbytes__nf4";
    std::string text(size_t(file(state).shape(state).at(0)), '\0');
    raw(state, "U8", {int64_t(text.size())}, text.data());
    const json j = json::parse(text, nullptr, false);
    auto is = [&](const char* key, const json& want) { return j.contains(key) && j[key] == want; };
    if (!j.is_object() || !is("quant_type", "nf4") || !is("blocksize", kQuantBlock) || !is("nested_blocksize", kNf4Block2) ||
        !j.contains("nested_offset") || !j["nested_offset"].is_number())
      bad(fmt::format("its quant_state is {}", text.substr(0, 200)));
    if (j.value("shape", json()) != json{rows, cols})
      bad(fmt::format("its quant_state's shape is {}, expected [{}, {}]", j.value("shape", json()).dump(), rows, cols));
    const int64_t n = rows * cols, nb = (n + kQuantBlock - 1) / kQuantBlock;
    QuantTensor t{QuantFormat::nf4, rows, cols, std::vector<uint8_t>(size_t((n + 1) / 2)), std::vector<uint8_t>(size_t(nb)),
                  std::vector<float>(size_t((nb + kNf4Block2 - 1) / kNf4Block2)), j["nested_offset"].get<float>()};
    raw(name, "U8", {int64_t(t.q.size()), 1}, t.q.data());
    raw(name + ".absmax", "U8", {nb}, t.absmax.data());
    raw(name + ".nested_absmax", "F32", {int64_t(t.scale.size())}, t.scale.data());
    if (!std::isfinite(t.offset) || !std::all_of(t.scale.begin(), t.scale.end(), [](float x) { return std::isfinite(x); }))
      bad("its nested_absmax or nested_offset is not finite: the weights are corrupt");
    float code[16], dynamic[256];
    raw(name + ".quant_map", "F32", {16}, code);
    raw(name + ".nested_quant_map", "F32", {256}, dynamic);
    if (!std::equal(code, code + 16, kNf4Code) || !std::equal(dynamic, dynamic + 256, kDynamicCode))
      bad("its quant_map or nested_quant_map is not NF4's code and bitsandbytes' 8-bit dynamic map");
    return t;
  }
  std::vector<std::string> not_taken() const {
    std::vector<std::string> out;
    for (auto& [name, f] : where_)
      if (!taken_.count(name)) out.push_back(name);
    return out;
  }

 private:
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

}  // namespace

void load_model(const std::string& path, Model& model, const std::function<void(size_t unit, bool done)>& each) {
  WeightFiles w(path);
  const ModelConfig& c = model.config();
  std::vector<float> staged, ours, wte;
  size_t open = Model::npos;  // the unit being written
  auto next_unit = [&](size_t unit) {
    if (unit == open || !each) return;
    if (open != Model::npos) each(open, true);
    if (unit != Model::npos) each(unit, false);
    open = unit;
  };
  for (auto& n : model.named_params()) {
    const ParamSpec& s = *n.spec;
    if (s.site >= 0) continue;  // LoRA's adapters: load_adapters
    next_unit(n.unit);
    const Model::Named m{&s, view_of(model.units()[n.unit].p, s), nullptr, n.unit};  // as bound now
    staged.assign(size_t(s.numel), 0.0f);  // vocabulary rows beyond V: zero
    const int64_t cols = s.shape.size() == 2 ? s.shape[1] : 1;
    // bitsandbytes' nf4 weights go into an nf4 base as they are (the same bytes), else dequantized
    const Unit& unit = model.units()[n.unit];
    const bool nf4_base = !unit.qv.empty() && unit.base == BaseFormat::nf4;
    std::vector<std::pair<int64_t, QuantTensor>> kept;  // (row0, parts)
    for (const HfTensor& t : hf_tensors(s, c)) {
      std::string name = t.part->name;
      // a base model's names (GPT2Model's, LlamaModel's): without "transformer." or "model."
      const size_t dot = name.find('.');
      if (!w.has(name) && dot != std::string::npos && name != "lm_head.weight" && w.has(name.substr(dot + 1)))
        name = name.substr(dot + 1);
      if (!w.has(name)) user_error("{}: tensor '{}' is missing", path, name);
      if (w.nf4(name)) {
        if (s.hf_conv1d) user_error("{}: tensor '{}': a bitsandbytes-quantized Conv1D weight is not read", w.path(name), name);
        kept.emplace_back(t.row0, w.take_nf4(name, t.shape[0], t.shape[1]));
        continue;
      }
      w.take(name, t.shape, staged.data() + t.row0 * cols);
      for (int64_t i = t.row0 * cols; i < (t.row0 + t.part->rows) * cols && i < s.numel; i++)
        if (!std::isfinite(staged[size_t(i)]))
          user_error("{}: tensor '{}' holds {}: the weights are corrupt (not finite numbers)", w.path(name), name, staged[size_t(i)]);
    }
    if (nf4_base && !kept.empty() && kept.size() == s.hf.size()) {
      for (size_t j = 0; j < kept.size(); j++) model.write_quant(m, j, kept[j].second);
      continue;
    }
    for (auto& [row0, q] : kept) dequantize_ref(staged.data() + row0 * cols, q.view(), 0, q.rows * q.cols);
    if (s.vocab_rows() && c.tied_head && n.unit == model.embedding_unit())
      wte.assign(staged.begin(), staged.begin() + int64_t(c.vocab_size) * s.shape[1]);
    const float* src = staged.data();
    if (s.hf_conv1d) {
      ours.resize(size_t(s.numel));
      const int64_t R = s.shape[0], C = s.shape[1];  // ours (R, C) from the file's (C, R)
      for (int64_t r = 0; r < R; r++)
        for (int64_t k = 0; k < C; k++) ours[size_t(r * C + k)] = staged[size_t(k * R + r)];
      src = ours.data();
    }
    model.write_param(m, src);
  }
  next_unit(Model::npos);
  // A tied output head is the embedding: a stored lm_head.weight must be that same matrix.
  if (c.tied_head && w.has("lm_head.weight")) {
    staged.assign(wte.size(), 0.0f);
    w.take("lm_head.weight", {c.vocab_size, c.n_embd}, staged.data());
    if (staged != wte)
      user_error("{}: tensor 'lm_head.weight' differs from the embedding, but this model ties its output head "
                 "to the embedding (an untied head has no place{})", w.path("lm_head.weight"),
                 c.family == Family::llama ? ": set model.tied_head = false" : "");
  }
  for (auto& name : w.not_taken()) {
    if (ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias")) continue;  // GPT-2's causal masks
    if (ends_with(name, "rotary_emb.inv_freq")) continue;  // older Llama files' rotary frequencies (recomputed)
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

std::optional<ModelConfig> frugal_model_config(const std::string& weights) {
  namespace fs = std::filesystem;
  const fs::path f = fs::is_directory(weights) ? fs::path(weights) / "model.safetensors" : fs::path(weights);
  if (f.extension() != ".safetensors" || !fs::is_regular_file(f)) return std::nullopt;
  const SafeTensors st(f.string());
  if (!st.metadata().count("n_layer")) return std::nullopt;
  return config_from_metadata(st.metadata(), f.string());
}

// A config.json's string `key` of object o (shown as `name`), or `fallback` where absent or null.
static std::string text_field(const json& o, const char* key, const std::string& fallback, const std::string& path,
                              const std::string& name) {
  if (!o.contains(key) || o[key].is_null()) return fallback;
  if (!o[key].is_string()) user_error("{}: {}: expected a string, got {}", path, name, o[key].dump());
  return o[key].get<std::string>();
}

// transformers' Llama-family configs (LlamaConfig, Qwen2Config, MistralConfig) as frugal's llama.
static ModelConfig read_llama_config(const json& j, const std::string& path, const std::string& type) {
  ModelConfig c;
  c.family = Family::llama;
  auto integer = [&](const char* key, int* field, bool required) {
    if (!j.contains(key) || j[key].is_null()) {
      if (required) user_error("{}: {}: expected a positive integer (missing)", path, key);
      return;
    }
    if (!j[key].is_number_integer() || j[key].get<int64_t>() < 1 || j[key].get<int64_t>() > (1 << 30))
      user_error("{}: {}: expected a positive integer, got {}", path, key, j[key].dump());
    *field = j[key].get<int>();
  };
  auto number = [&](const char* key, double* field) {
    if (!j.contains(key) || j[key].is_null()) return;
    if (!j[key].is_number() || !(j[key].get<double>() > 0))
      user_error("{}: {}: expected a positive number, got {}", path, key, j[key].dump());
    *field = j[key].get<double>();
  };
  auto boolean = [&](const char* key, bool* field) {
    if (!j.contains(key) || j[key].is_null()) return;
    if (!j[key].is_boolean()) user_error("{}: {}: expected true or false, got {}", path, key, j[key].dump());
    *field = j[key].get<bool>();
  };
  integer("num_hidden_layers", &c.n_layer, true);
  integer("num_attention_heads", &c.n_head, true);
  integer("hidden_size", &c.n_embd, true);
  integer("vocab_size", &c.vocab_size, true);
  integer("max_position_embeddings", &c.context, true);
  integer("intermediate_size", &c.ffn_hidden, true);
  c.n_kv_head = c.n_head;
  integer("num_key_value_heads", &c.n_kv_head, false);
  c.tied_head = false;  // transformers' default for all three
  boolean("tie_word_embeddings", &c.tied_head);
  number("rms_norm_eps", &c.norm_eps);
  number("rope_theta", &c.rope_theta);
  c.attention_bias = type == "qwen2";  // Qwen2's q, k, v always have biases
  if (type == "llama") boolean("attention_bias", &c.attention_bias);
  // what frugal's llama computes; anything else would load and compute another function
  auto refuse = [&](const char* key, const std::string& why) {
    user_error("{}: {}: {} is not supported ({}), got {}", path, key, why, type, j[key].dump());
  };
  if (text_field(j, "hidden_act", "silu", path, "hidden_act") != "silu") refuse("hidden_act", "an activation other than silu");
  if (j.contains("mlp_bias") && j["mlp_bias"] != false) refuse("mlp_bias", "a biased MLP");
  if (j.contains("head_dim") && !j["head_dim"].is_null() && c.n_head > 0 &&
      j["head_dim"] != c.n_embd / c.n_head)
    refuse("head_dim", fmt::format("a head size other than hidden_size / num_attention_heads = {}", c.n_embd / c.n_head));
  if (j.contains("pretraining_tp") && !j["pretraining_tp"].is_null() && j["pretraining_tp"] != 1)
    refuse("pretraining_tp", "a tensor-parallel split of the linear layers");
  bool sliding = false;
  if (type == "qwen2") boolean("use_sliding_window", &sliding);
  if (sliding) refuse("use_sliding_window", "sliding-window attention");
  // Mistral v0.1's window (4096 of 32768 positions): kept, and runs stay within it
  if (type == "mistral" && j.contains("sliding_window") && !j["sliding_window"].is_null()) {
    if (!j["sliding_window"].is_number_integer() || j["sliding_window"].get<int64_t>() <= 0)
      user_error("{}: sliding_window: expected a positive integer or null, got {}", path, j["sliding_window"].dump());
    if (j["sliding_window"].get<int64_t>() < c.context) c.sliding_window = j["sliding_window"].get<int>();
  }
  for (const char* moe : {"num_local_experts", "num_experts", "n_routed_experts", "num_experts_per_tok"})
    if (j.contains(moe) && !j[moe].is_null()) refuse(moe, "a mixture of experts");
  if (type == "qwen2" && j.contains("layer_types") && j["layer_types"].is_array())
    for (const json& t : j["layer_types"])
      if (t != "full_attention") refuse("layer_types", "a layer other than full_attention");
  // transformers 5 writes rope_parameters (rope_theta and the scaling), earlier versions
  // rope_theta and rope_scaling
  const char* rope_key = j.contains("rope_parameters") && j["rope_parameters"].is_object() ? "rope_parameters" : "rope_scaling";
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object() && j["rope_parameters"].contains("rope_theta")) {
    const json& theta = j["rope_parameters"]["rope_theta"];
    if (!theta.is_number() || !(theta.get<double>() > 1))
      user_error("{}: rope_parameters.rope_theta: expected a number > 1, got {}", path, theta.dump());
    c.rope_theta = theta.get<double>();
  }
  if (j.contains(rope_key) && !j[rope_key].is_null()) {
    const json& r = j[rope_key];
    if (!r.is_object()) user_error("{}: {}: expected an object, got {}", path, rope_key, r.dump());
    const std::string rt = text_field(r, "rope_type", text_field(r, "type", "", path, std::string(rope_key) + ".type"),
                                      path, std::string(rope_key) + ".rope_type");
    if (rt == "default" || rt.empty()) {
    } else if (rt == "llama3") {
      RopeScaling& s = c.rope_scaling;
      for (auto [key, field] : {std::pair{"factor", &s.factor}, {"low_freq_factor", &s.low_freq_factor},
                                {"high_freq_factor", &s.high_freq_factor}}) {
        if (!r.contains(key) || !r[key].is_number())
          user_error("{}: {}.{}: expected a number{}", path, rope_key, key, r.contains(key) ? ", got " + r[key].dump() : " (missing)");
        *field = r[key].get<double>();
      }
      if (!r.contains("original_max_position_embeddings") || !r["original_max_position_embeddings"].is_number_integer())
        user_error("{}: {}.original_max_position_embeddings: expected an integer", path, rope_key);
      s.original_context = r["original_max_position_embeddings"].get<int>();
    } else {
      refuse(rope_key, "a rope type other than default and llama3");
    }
  }
  return c;
}

ModelConfig read_hf_config(const std::string& path) {
  if (!std::ifstream(path)) user_error("{}: cannot open the model config", path);
  json j = json::parse(read_whole_file(path), nullptr, false);
  if (j.is_discarded() || !j.is_object()) user_error("{}: expected a JSON object (a Hugging Face config.json)", path);
  const std::string type = j.contains("model_type") && j["model_type"].is_string() ? j["model_type"].get<std::string>() : "gpt2";
  if (type != "gpt2" && type != "llama" && type != "qwen2" && type != "mistral") {
    std::string arch = j.contains("architectures") ? " (" + j["architectures"].dump() + ")" : "";
    user_error("{}: model_type: expected gpt2, llama, qwen2 or mistral (GPT2LMHeadModel, LlamaForCausalLM, "
               "Qwen2ForCausalLM, MistralForCausalLM), got \"{}\"{}", path, type, arch);
  }
  ModelConfig c = type == "gpt2" ? ModelConfig{} : read_llama_config(j, path, type);
  c.preset = std::filesystem::path(path).parent_path().filename().string();
  if (c.preset.empty()) c.preset = "config.json";
  if (type != "gpt2") {
    try {
      c.validate(path);
    } catch (const UserError& e) {  // named as the file names them
      std::string m = e.what();
      for (auto [ours, theirs] : {std::pair{"model.n_embd", "hidden_size"}, {"model.n_head", "num_attention_heads"},
                                  {"model.n_kv_head", "num_key_value_heads"}, {"model.n_layer", "num_hidden_layers"},
                                  {"model.ffn_hidden", "intermediate_size"}, {"model.context", "max_position_embeddings"},
                                  {"model.norm_eps", "rms_norm_eps"}, {"model.rope_theta", "rope_theta"},
                                  {"model.rope_scaling", "rope_scaling"}, {"model.vocab_size", "vocab_size"}})
        for (size_t at; (at = m.find(ours)) != std::string::npos;) m.replace(at, std::strlen(ours), theirs);
      throw UserError(m);
    }
    return c;
  }
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
  if (text_field(j, "activation_function", "gelu_new", path, "activation_function") != "gelu_pytorch_tanh")
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

static json llama_hf_config(const ModelConfig& c, bool mistral) {
  const RopeScaling& r = c.rope_scaling;
  json rope = {{"rope_type", "default"}, {"rope_theta", c.rope_theta}};  // transformers 5's form
  if (r.factor > 0)
    rope = {{"rope_type", "llama3"}, {"rope_theta", c.rope_theta}, {"factor", r.factor}, {"low_freq_factor", r.low_freq_factor},
            {"high_freq_factor", r.high_freq_factor}, {"original_max_position_embeddings", r.original_context}};
  mistral = c.sliding_window > 0 || (mistral && !c.attention_bias);  // LlamaForCausalLM has no window
  json j = {{"architectures", {mistral ? "MistralForCausalLM" : "LlamaForCausalLM"}},
            {"model_type", mistral ? "mistral" : "llama"},
            {"vocab_size", c.vocab_size},
            {"hidden_size", c.n_embd},
            {"intermediate_size", c.ffn()},
            {"num_hidden_layers", c.n_layer},
            {"num_attention_heads", c.n_head},
            {"num_key_value_heads", c.kv_heads()},
            {"head_dim", c.head_size()},
            {"max_position_embeddings", c.context},
            {"hidden_act", "silu"},
            {"rms_norm_eps", c.norm_eps},
            {"rope_parameters", rope},
            {"attention_bias", c.attention_bias},
            {"mlp_bias", false},
            {"tie_word_embeddings", c.tied_head},
            {"initializer_range", 0.02},
            {"attention_dropout", 0.0},
            {"use_cache", true},
            {"torch_dtype", "float32"}};
  if (mistral) {
    j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json();
    for (const char* k : {"attention_bias", "mlp_bias"}) j.erase(k);  // Mistral has neither
  }
  return j;
}

void save_hf_config(const std::string& path, const ModelConfig& c, const SpecialIds& ids, bool mistral) {
  json j = c.family == Family::llama ? llama_hf_config(c, mistral) : json{
            {"architectures", {"GPT2LMHeadModel"}},
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
            {"torch_dtype", "float32"}};
  auto id = [](const std::vector<int64_t>& v) { return v.empty() ? json(nullptr) : v.size() == 1 ? json(v[0]) : json(v); };
  j["bos_token_id"] = id(ids.bos);
  j["eos_token_id"] = id(ids.eos);
  std::string text = j.dump(2) + "\n";
  write_file_atomic(path, text.data(), text.size());
}

}  // namespace frugal

namespace frugal {

// ---- LoRA adapters in PEFT's format ----------------------------------------------------------

void save_adapters(const std::string& dir, Model& model, const std::string& base_name, int step) {
  const ModelConfig& c = model.config();
  FRUGAL_CHECK(c.lora.on(), "save_adapters without LoRA");
  std::vector<std::vector<float>> host;
  std::vector<StTensor> ts;
  std::vector<std::string> modules;
  for (auto& n : model.named_params()) {
    if (n.spec->site < 0) continue;
    ts.push_back({n.spec->hf[0].name, "F32", n.spec->shape, host_view(model.backend(), n.data, n.spec->numel, host)});
    const std::string m = n.spec->name.substr(0, n.spec->name.rfind(".lora_"));
    const std::string last = m.substr(m.rfind('.') + 1);
    if (std::find(modules.begin(), modules.end(), last) == modules.end()) modules.push_back(last);
  }
  std::filesystem::create_directories(dir);
  std::map<std::string, std::string> meta = {{"format", "pt"}};
  if (step >= 0) meta["step"] = std::to_string(step);
  save_safetensors(dir + "/adapter_model.safetensors", ts, meta);
  json cfg = {{"peft_type", "LORA"},
              {"task_type", "CAUSAL_LM"},
              {"r", c.lora.rank},
              {"lora_alpha", c.lora.alpha},
              {"lora_dropout", c.lora.dropout},
              {"target_modules", modules},
              {"bias", "none"},
              {"fan_in_fan_out", c.family == Family::gpt2},  // GPT-2's Conv1D layers
              {"use_rslora", false},
              {"use_dora", false},
              {"inference_mode", true},
              {"modules_to_save", nullptr},
              {"base_model_name_or_path", base_name.empty() ? json(nullptr) : json(base_name)}};
  std::string text = cfg.dump(2) + "\n";
  write_file_atomic(dir + "/adapter_config.json", text.data(), text.size());
}

LoraConfig read_adapter_config(const std::string& dir, std::string* base_name) {
  const std::string path = dir + "/adapter_config.json";
  json j;
  try {
    if (!std::ifstream(path)) user_error("{}: cannot read (an adapter directory holds adapter_config.json)", path);
    j = json::parse(read_whole_file(path));
  } catch (const json::exception& e) {
    user_error("{}: not valid JSON: {}", path, e.what());
  }
  if (!j.is_object()) user_error("{}: expected a JSON object (PEFT's adapter_config.json)", path);
  auto field = [&](const char* key) -> const json* { return j.contains(key) && !j[key].is_null() ? &j[key] : nullptr; };
  if (!field("peft_type") || *field("peft_type") != "LORA")
    user_error("{}: peft_type: expected \"LORA\", got {}", path, field("peft_type") ? field("peft_type")->dump() : "nothing");
  LoraConfig l;
  if (!field("r") || !field("r")->is_number_integer() || field("r")->get<int64_t>() < 1)
    user_error("{}: r: expected a positive integer, got {}", path, field("r") ? field("r")->dump() : "nothing");
  l.rank = field("r")->get<int>();
  if (!field("lora_alpha") || !field("lora_alpha")->is_number() || !(field("lora_alpha")->get<double>() > 0))
    user_error("{}: lora_alpha: expected a positive number, got {}", path, field("lora_alpha") ? field("lora_alpha")->dump() : "nothing");
  l.alpha = field("lora_alpha")->get<double>();
  if (const json* d = field("lora_dropout")) {
    if (!d->is_number() || d->get<double>() < 0 || d->get<double>() >= 1)
      user_error("{}: lora_dropout: expected a number in [0, 1), got {}", path, d->dump());
    l.dropout = d->get<double>();
  }
  const json* t = field("target_modules");
  if (!t || !(t->is_array() || t->is_string()))
    user_error("{}: target_modules: expected a list of module names, got {}", path, t ? t->dump() : "nothing");
  if (t->is_string()) {
    l.targets = {t->get<std::string>()};
  } else {
    for (const json& m : *t) {
      if (!m.is_string()) user_error("{}: target_modules: expected module names, got {}", path, m.dump());
      l.targets.push_back(m.get<std::string>());
    }
  }
  // what frugal does not compute
  for (const char* key : {"use_rslora", "use_dora"})
    if (field(key) && *field(key) != false) user_error("{}: {}: frugal computes plain LoRA (expected false)", path, key);
  if (field("bias") && *field("bias") != "none") user_error("{}: bias: expected \"none\" (no trained biases), got {}", path, field("bias")->dump());
  for (const char* key : {"modules_to_save", "layers_to_transform", "rank_pattern", "alpha_pattern"})
    if (field(key) && !field(key)->empty())
      user_error("{}: {}: expected none (every targeted module of every layer, one rank), got {}", path, key, field(key)->dump());
  if (base_name) *base_name = field("base_model_name_or_path") && field("base_model_name_or_path")->is_string()
                                  ? field("base_model_name_or_path")->get<std::string>() : "";
  return l;
}

void load_adapters(const std::string& dir, Model& model) {
  const std::string path = dir + "/adapter_model.safetensors";
  SafeTensors st(path);
  std::set<std::string> taken;
  for (auto& n : model.named_params()) {
    const ParamSpec& s = *n.spec;
    if (s.site < 0) continue;
    std::string name = s.hf[0].name;
    if (!st.has(name)) {  // written with the adapter's name in it ("...lora_A.default.weight")
      const std::string alt = name.substr(0, name.size() - 7) + ".default.weight";
      if (!st.has(alt))
        user_error("{}: tensor '{}' is missing (the adapter targets other modules or layers than lora.targets = {})", path,
                   name, fmt::join(model.config().lora.targets, " "));
      name = alt;
    }
    if (st.shape(name) != s.shape)
      user_error("{}: tensor '{}' has shape [{}], this model's is [{}]: an adapter for another base model or rank", path,
                 name, fmt::join(st.shape(name), ", "), fmt::join(s.shape, ", "));
    std::vector<float> v(size_t(s.numel));
    st.read_f32(name, s.shape, v.data());
    for (float x : v)
      if (!std::isfinite(x)) user_error("{}: tensor '{}' holds {}: not finite", path, name, x);
    model.write_param(n, v.data());
    taken.insert(name);
  }
  for (const std::string& name : st.names())
    if (!taken.count(name))
      user_error("{}: tensor '{}' has no place in this model's adapters ({} layers, targets {})", path, name,
                 model.config().n_layer, fmt::join(model.config().lora.targets, " "));
  model.sync_compute_weights();
}

}  // namespace frugal
