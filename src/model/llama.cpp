// The Llama family's parameter table, in transformers' LlamaForCausalLM names (also Qwen2's and
// Mistral's), and its rotary angles.
#include <cmath>

#include "model/model.h"

namespace frugal {

std::vector<UnitSpec> llama_table(const ModelConfig& cfg) {
  const int64_t C = cfg.n_embd, Vp = cfg.padded_vocab(), F = cfg.ffn(), HS = cfg.head_size();
  const int64_t NQ = int64_t(cfg.n_head) * HS, NKV = int64_t(cfg.kv_heads()) * HS, W = cfg.qkv_width();
  using T = Tensors;
  using P = std::vector<HfPart>;
  std::vector<UnitSpec> units;
  units.push_back(make_unit_spec(UnitKind::embedding, -1, "embedding", {
      {"wte", {Vp, C}, true, Init::normal, &T::wte, P{{"model.embed_tokens.weight", Vp}}},  // V rows in files
  }));
  for (int l = 0; l < cfg.n_layer; l++) {
    auto n = [l](const char* s) { return fmt::format("blocks.{}.{}", l, s); };
    auto h = [l](const char* s) { return fmt::format("model.layers.{}.{}", l, s); };
    std::vector<ParamSpec> specs = {
        {n("attn_norm.weight"), {C}, false, Init::ones, &T::ln1_w, P{{h("input_layernorm.weight"), C}}},
        {n("attn.qkv.weight"), {W, C}, true, Init::normal, &T::qkv_w,
         P{{h("self_attn.q_proj.weight"), NQ}, {h("self_attn.k_proj.weight"), NKV}, {h("self_attn.v_proj.weight"), NKV}}},
        {n("attn.o.weight"), {C, C}, true, Init::normal, &T::proj_w, P{{h("self_attn.o_proj.weight"), C}}},
        {n("mlp_norm.weight"), {C}, false, Init::ones, &T::ln2_w, P{{h("post_attention_layernorm.weight"), C}}},
        {n("mlp.gate_up.weight"), {2 * F, C}, true, Init::normal, &T::fc_w,
         P{{h("mlp.gate_proj.weight"), F}, {h("mlp.up_proj.weight"), F}}},
        {n("mlp.down.weight"), {C, F}, true, Init::normal, &T::fcproj_w, P{{h("mlp.down_proj.weight"), C}}},
    };
    if (cfg.attention_bias)
      specs.push_back({n("attn.qkv.bias"), {W}, false, Init::zeros, &T::qkv_b,
                       P{{h("self_attn.q_proj.bias"), NQ}, {h("self_attn.k_proj.bias"), NKV}, {h("self_attn.v_proj.bias"), NKV}}});
    units.push_back(make_unit_spec(UnitKind::block, l, fmt::format("block{}", l), std::move(specs)));
  }
  units.push_back(make_unit_spec(UnitKind::final, -1, "final", {
      {"norm.weight", {C}, false, Init::ones, &T::lnf_w, P{{"model.norm.weight", C}}},
  }));
  if (!cfg.tied_head)
    units.push_back(make_unit_spec(UnitKind::head, -1, "head", {
        {"lm_head.weight", {Vp, C}, true, Init::normal, &T::wte, P{{"lm_head.weight", Vp}}},
    }));
  return units;
}

// transformers' _compute_default_rope_parameters (inv_freq in fp32, as there) and
// _compute_llama3_parameters.
void rope_tables(const ModelConfig& cfg, int T, std::vector<float>& cos, std::vector<float>& sin) {
  const int half = cfg.head_size() / 2;
  std::vector<double> inv(static_cast<size_t>(half));
  for (int i = 0; i < half; i++)
    inv[i] = 1.0f / std::pow(float(cfg.rope_theta), float(2 * i) / float(cfg.head_size()));
  const RopeScaling& r = cfg.rope_scaling;
  if (r.factor > 0) {
    const double low = r.original_context / r.low_freq_factor, high = r.original_context / r.high_freq_factor;
    for (double& f : inv) {
      const double wavelen = 2 * M_PI / f;
      if (wavelen > low) {
        f /= r.factor;
      } else if (wavelen >= high) {  // between: a smooth mix of scaled and unscaled
        const double smooth = (r.original_context / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
        f = (1 - smooth) * f / r.factor + smooth * f;
      }
    }
  }
  cos.resize(size_t(T) * half);
  sin.resize(cos.size());
  for (int t = 0; t < T; t++)
    for (int i = 0; i < half; i++) {
      const float angle = float(t) * float(inv[i]);  // as transformers: fp32 product
      cos[size_t(t) * half + i] = std::cos(angle);
      sin[size_t(t) * half + i] = std::sin(angle);
    }
}

}  // namespace frugal
