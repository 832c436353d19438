// The GPT-2 family's parameter table, in transformers' GPT2LMHeadModel names.
#include "model/model.h"

namespace frugal {

std::vector<UnitSpec> gpt2_table(const ModelConfig& cfg) {
  const int64_t C = cfg.n_embd, Vp = cfg.padded_vocab(), maxT = cfg.context, F = cfg.ffn();
  using T = Tensors;
  using P = std::vector<HfPart>;
  std::vector<UnitSpec> units;
  units.push_back(make_unit_spec(UnitKind::embedding, -1, "embedding", {
      {"wte", {Vp, C}, true, Init::normal, &T::wte, P{{"transformer.wte.weight", Vp}}},  // V rows in files
      {"wpe", {maxT, C}, true, Init::normal, &T::wpe, P{{"transformer.wpe.weight", maxT}}},
  }));
  for (int l = 0; l < cfg.n_layer; l++) {
    auto n = [l](const char* s) { return fmt::format("blocks.{}.{}", l, s); };
    auto h = [l](const char* s, int64_t rows) { return P{{fmt::format("transformer.h.{}.{}", l, s), rows}}; };
    units.push_back(make_unit_spec(UnitKind::block, l, fmt::format("block{}", l), {
        {n("ln1.weight"), {C}, false, Init::ones, &T::ln1_w, h("ln_1.weight", C)},
        {n("ln1.bias"), {C}, false, Init::zeros, &T::ln1_b, h("ln_1.bias", C)},
        {n("attn.qkv.weight"), {3 * C, C}, true, Init::normal, &T::qkv_w, h("attn.c_attn.weight", 3 * C), true},
        {n("attn.qkv.bias"), {3 * C}, false, Init::zeros, &T::qkv_b, h("attn.c_attn.bias", 3 * C)},
        {n("attn.proj.weight"), {C, C}, true, Init::normal_residual, &T::proj_w, h("attn.c_proj.weight", C), true},
        {n("attn.proj.bias"), {C}, false, Init::zeros, &T::proj_b, h("attn.c_proj.bias", C)},
        {n("ln2.weight"), {C}, false, Init::ones, &T::ln2_w, h("ln_2.weight", C)},
        {n("ln2.bias"), {C}, false, Init::zeros, &T::ln2_b, h("ln_2.bias", C)},
        {n("mlp.fc.weight"), {F, C}, true, Init::normal, &T::fc_w, h("mlp.c_fc.weight", F), true},
        {n("mlp.fc.bias"), {F}, false, Init::zeros, &T::fc_b, h("mlp.c_fc.bias", F)},
        {n("mlp.proj.weight"), {C, F}, true, Init::normal_residual, &T::fcproj_w, h("mlp.c_proj.weight", C), true},
        {n("mlp.proj.bias"), {C}, false, Init::zeros, &T::fcproj_b, h("mlp.c_proj.bias", C)},
    }));
  }
  units.push_back(make_unit_spec(UnitKind::final, -1, "final", {
      {"ln_f.weight", {C}, false, Init::ones, &T::lnf_w, P{{"transformer.ln_f.weight", C}}},
      {"ln_f.bias", {C}, false, Init::zeros, &T::lnf_b, P{{"transformer.ln_f.bias", C}}},
  }));
  return units;
}

}  // namespace frugal
