// GPT-2 presets and derived sizes.
#include <map>

#include "model/model.h"

namespace frugal {

static const std::map<std::string, GptConfig>& presets() {
  // name, L, NH, C, V, maxT. Byte-level models use V = 257 (256 bytes + end of text).
  static const std::map<std::string, GptConfig> p = {
      {"tiny", {"tiny", 2, 4, 64, 257, 128}},
      {"mini", {"mini", 4, 4, 256, 257, 256}},
      {"gpt2", {"gpt2", 12, 12, 768, 50257, 1024}},
      {"gpt2-medium", {"gpt2-medium", 24, 16, 1024, 50257, 1024}},
      {"gpt2-large", {"gpt2-large", 36, 20, 1280, 50257, 1024}},
      {"gpt2-xl", {"gpt2-xl", 48, 25, 1600, 50257, 1024}},
  };
  return p;
}

std::vector<std::string> gpt_preset_names() {
  std::vector<std::string> names;
  for (auto& [k, v] : presets()) names.push_back(k);
  return names;
}

GptConfig gpt_preset(const std::string& name, const std::string& where) {
  auto it = presets().find(name);
  if (it == presets().end())
    user_error("{}: unknown model preset '{}' (expected one of: {})", where, name,
               fmt::join(gpt_preset_names(), ", "));
  return it->second;
}

void GptConfig::validate(const std::string& where) const {
  auto positive = [&](const char* key, int v) {
    if (v <= 0) user_error("{}: model.{} must be a positive integer, got {}", where, key, v);
  };
  positive("n_layer", n_layer);
  positive("n_head", n_head);
  positive("n_embd", n_embd);
  positive("vocab_size", vocab_size);
  positive("context", context);
  if (n_embd % n_head != 0)
    user_error("{}: model.n_embd ({}) must be divisible by model.n_head ({})", where, n_embd,
               n_head);
}

int64_t GptConfig::num_params() const {
  int64_t n = 0;
  for (const UnitSpec& u : param_table(*this)) n += u.numel;
  return n;
}

int64_t GptConfig::num_params_no_wpe() const {
  int64_t n = 0;
  for (const UnitSpec& u : param_table(*this))
    for (const ParamSpec& s : u.specs)
      n += s.field == &Tensors::wpe ? 0 : s.field == &Tensors::wte ? int64_t(vocab_size) * s.shape[1] : s.numel;
  return n;
}

double GptConfig::flops_per_token(int T) const {
  return 6.0 * double(num_params_no_wpe()) + 12.0 * n_layer * double(T) * n_embd;
}

Strategy parse_strategy(const std::string& text, const std::string& where) {
  for (Strategy s : {Strategy::ddp, Strategy::zero1, Strategy::zero2, Strategy::zero3, Strategy::yafsdp})
    if (text == strategy_name(s)) return s;
  if (text == "fsdp") return Strategy::zero3;
  user_error("{}: dist.strategy: expected ddp, zero1, zero2, zero3 (or fsdp) or yafsdp, got '{}'", where, text);
}

const char* strategy_name(Strategy s) {
  static const char* names[] = {"ddp", "zero1", "zero2", "zero3", "yafsdp"};
  return names[int(s)];
}

}  // namespace frugal
