// Model presets (both families), validation and derived sizes.
#include <map>

#include "model/model.h"

namespace frugal {

static ModelConfig llama(const char* name, int L, int NH, int NKV, int C, int F, int V, int maxT, bool tied,
                         double theta, RopeScaling scaling = {}) {
  return {name, L, NH, C, V, maxT, Family::llama, NKV, F, false, tied, 1e-5, theta, scaling};
}

static const std::map<std::string, ModelConfig>& presets() {
  // name, L, NH, C, V, maxT. Byte-level models use V = 257 (256 bytes + end of text).
  // Llama shapes as published in each model's config.json on the Hugging Face hub.
  static const std::map<std::string, ModelConfig> p = {
      {"tiny", {"tiny", 2, 4, 64, 257, 128}},
      {"mini", {"mini", 4, 4, 256, 257, 256}},
      {"gpt2", {"gpt2", 12, 12, 768, 50257, 1024}},
      {"gpt2-medium", {"gpt2-medium", 24, 16, 1024, 50257, 1024}},
      {"gpt2-large", {"gpt2-large", 36, 20, 1280, 50257, 1024}},
      {"gpt2-xl", {"gpt2-xl", 48, 25, 1600, 50257, 1024}},
      // name, L, NH, NKV, C, F, V, maxT, tied head, rope_theta
      {"llama-tiny", llama("llama-tiny", 2, 4, 2, 64, 176, 257, 128, false, 10000)},
      {"smollm-135m", llama("smollm-135m", 30, 9, 3, 576, 1536, 49152, 2048, true, 10000)},
      {"smollm-360m", llama("smollm-360m", 32, 15, 5, 960, 2560, 49152, 2048, true, 10000)},
      {"tinyllama-1.1b", llama("tinyllama-1.1b", 22, 32, 4, 2048, 5632, 32000, 2048, false, 10000)},
      {"llama-3.2-1b", llama("llama-3.2-1b", 16, 32, 8, 2048, 8192, 128256, 131072, true, 500000, {32, 1, 4, 8192})},
      {"llama-2-7b", llama("llama-2-7b", 32, 32, 32, 4096, 11008, 32000, 4096, false, 10000)},
      {"llama-2-13b", llama("llama-2-13b", 40, 40, 40, 5120, 13824, 32000, 4096, false, 10000)},
      {"llama-3-8b", llama("llama-3-8b", 32, 32, 8, 4096, 14336, 128256, 8192, false, 500000)},
      {"llama-2-70b", llama("llama-2-70b", 80, 64, 8, 8192, 28672, 32000, 4096, false, 10000)},
  };
  return p;
}

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (auto& [k, v] : presets()) names.push_back(k);
  return names;
}

ModelConfig model_preset(const std::string& name, const std::string& where) {
  auto it = presets().find(name);
  if (it == presets().end())
    user_error("{}: unknown model preset '{}' (expected one of: {})", where, name,
               fmt::join(preset_names(), ", "));
  return it->second;
}

void ModelConfig::validate(const std::string& where) const {
  auto positive = [&](const char* key, int v) {
    if (v <= 0) user_error("{}: model.{} must be a positive integer, got {}", where, key, v);
  };
  positive("n_layer", n_layer);
  positive("n_head", n_head);
  positive("n_embd", n_embd);
  positive("vocab_size", vocab_size);
  positive("context", context);
  if (n_kv_head < 0 || ffn_hidden < 0)
    user_error("{}: model.{} must be positive (or 0: the default), got {}", where, n_kv_head < 0 ? "n_kv_head" : "ffn_hidden",
               std::min(n_kv_head, ffn_hidden));
  if (n_embd % n_head != 0)
    user_error("{}: model.n_embd ({}) must be divisible by model.n_head ({})", where, n_embd,
               n_head);
  if (lora.on()) {
    if (!(lora.alpha > 0)) user_error("{}: lora.alpha must be > 0, got {}", where, lora.alpha);
    if (!(lora.dropout >= 0 && lora.dropout < 1)) user_error("{}: lora.dropout must be in [0, 1), got {}", where, lora.dropout);
    // every target names a module of the family, and the rank is below each one's width (above it
    // the adapters hold more than the weight, and B·A can be no more than full rank)
    for (const LoraSite& site : lora_sites(*this, 0, where + ": lora.targets"))
      if (lora.rank > std::min(site.rows, site.in))
        user_error("{}: lora.rank = {} is above the width of {} ({} x {}): expected at most {}", where, lora.rank,
                   site.module, site.rows, site.in, std::min(site.rows, site.in));
  }
  if (family == Family::gpt2) {  // what GPT-2's blocks compute
    if (n_kv_head != 0 && n_kv_head != n_head)
      user_error("{}: model.n_kv_head = {}: grouped-query attention is the llama family's (gpt2 has n_head)", where, n_kv_head);
    if (!tied_head) user_error("{}: model.tied_head = false: gpt2's output head is tied to the embedding", where);
    if (attention_bias) user_error("{}: model.attention_bias: gpt2 has biases on every linear layer already", where);
    if (norm_eps != 1e-5) user_error("{}: model.norm_eps = {}: gpt2's LayerNorm uses 1e-5", where, norm_eps);
    if (sliding_window != 0) user_error("{}: model.sliding_window = {}: a sliding window is Mistral's (llama family)", where, sliding_window);
    return;
  }
  if (n_head % kv_heads() != 0)
    user_error("{}: model.n_head ({}) must be a multiple of model.n_kv_head ({})", where, n_head, kv_heads());
  if (head_size() % 2 != 0) user_error("{}: model.n_embd / model.n_head = {}: rotary embeddings need an even head size", where, head_size());
  if (!(norm_eps > 0 && norm_eps < 1)) user_error("{}: model.norm_eps must be in (0, 1), got {}", where, norm_eps);
  if (!(rope_theta > 1)) user_error("{}: model.rope_theta must be > 1, got {}", where, rope_theta);
  if (sliding_window < 0) user_error("{}: model.sliding_window must be >= 0 (0: none), got {}", where, sliding_window);
  if (sliding_window > 0 && attention_bias)
    user_error("{}: model.sliding_window with model.attention_bias (Qwen2's sliding window) is not supported", where);
  const RopeScaling& r = rope_scaling;
  if (r.factor != 0 && !(r.factor >= 1 && r.low_freq_factor > 0 && r.high_freq_factor > r.low_freq_factor && r.original_context > 0))
    user_error("{}: model.rope_scaling: expected factor >= 1, 0 < low_freq_factor < high_freq_factor, "
               "original_context > 0 (llama3), got factor {}, low {}, high {}, original {}",
               where, r.factor, r.low_freq_factor, r.high_freq_factor, r.original_context);
}

int64_t ModelConfig::num_params() const {
  int64_t n = 0;
  for (const UnitSpec& u : param_table(*this)) n += u.numel;
  return n;
}

int64_t trainable_params(const std::vector<UnitSpec>& table) {
  int64_t n = 0;
  for (const UnitSpec& u : table) n += u.frozen ? 0 : u.numel;
  return n;
}

int64_t params_no_wpe(const std::vector<UnitSpec>& table, int64_t vocab_size) {
  int64_t n = 0;
  for (const UnitSpec& u : table)
    for (const ParamSpec& s : u.specs)
      n += s.site >= 0 || s.field == &Tensors::wpe ? 0 : s.vocab_rows() ? vocab_size * s.shape[1] : s.numel;
  return n;
}

int64_t ModelConfig::num_trainable_params() const { return trainable_params(param_table(*this)); }
int64_t ModelConfig::num_params_no_wpe() const { return params_no_wpe(param_table(*this), vocab_size); }
double ModelConfig::flops_per_token(double S) const { return flops_per_token(S, num_params_no_wpe()); }

double ModelConfig::flops_per_token(double S, int64_t num_no_wpe) const {
  const double attention = 12.0 * n_layer * S * n_embd, N = double(num_no_wpe);
  if (!lora.on()) return 6.0 * N + attention;
  // LoRA: the frozen base's forward and input gradients, no weight gradients (4N); per adapter
  // site 2r(in + rows) forward and 2r(4 in + 3 rows) backward (h recomputed, dB, dh, dA, dx)
  double adapters = 0;  // one block's: every block has the same sites
  for (const LoraSite& s : lora_sites(*this, 0)) adapters += 2.0 * lora.rank * (5.0 * double(s.in) + 4.0 * double(s.rows));
  return 4.0 * N + n_layer * adapters + attention;
}

}  // namespace frugal
