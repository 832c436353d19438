// LoRA: where adapters sit in a family's blocks (their sites, from the table's transformers
// names), the adapter units' table rows, and the adapters' forward and backward around a block's
// frozen linear layers.
//
// Per site, with x(BT, in) the layer's input (under lora.dropout, x·mask/(1-p), the mask redrawn
// from the micro-batch's seed), dy(BT, rows) its output gradient, s = alpha/rank:
//   forward   h = s (x A^T)                  y[:, row0:row0+rows] += h B^T
//   backward  h as above, dB += dy^T h,      dh = s (dy B),  dA += dh^T x,  dx += dh A (·mask/(1-p))
// h is recomputed in backward (BT x rank: a GEMM of rank/rows the layer's cost) instead of kept.
#include <algorithm>

#include "model/model.h"

namespace frugal {

const char* base_format_name(BaseFormat b) {
  static const char* names[] = {"compute", "nf4", "int8"};
  return names[int(b)];
}

static const std::vector<std::string>& peft_default_targets(Family f) {
  static const std::vector<std::string> llama = {"q_proj", "v_proj"}, gpt2 = {"c_attn"};
  return f == Family::llama ? llama : gpt2;
}

// The sites of one block's spec: every transformers module of its linear weights whose last name
// is a target.
static std::vector<LoraSite> sites_of(const ModelConfig& cfg, const UnitSpec& block, const std::string& where) {
  const std::vector<std::string>& targets = cfg.lora.targets.empty() ? peft_default_targets(cfg.family) : cfg.lora.targets;
  std::vector<LoraSite> sites;
  std::vector<std::string> modules;  // every module's last name, for the error
  std::vector<bool> matched(targets.size(), false);
  for (const ParamSpec& s : block.specs) {
    if (s.shape.size() != 2) continue;
    int64_t row0 = 0;
    for (const HfPart& part : s.hf) {
      std::string module = part.name.substr(0, part.name.rfind('.'));  // without ".weight"
      std::string last = module.substr(module.rfind('.') + 1);
      if (std::find(modules.begin(), modules.end(), last) == modules.end()) modules.push_back(last);
      auto t = std::find(targets.begin(), targets.end(), last);
      if (t != targets.end()) {
        matched[size_t(t - targets.begin())] = true;
        sites.push_back({s.field, row0, part.rows, s.shape[1], module});
      }
      row0 += part.rows;
    }
  }
  for (size_t i = 0; i < targets.size(); i++)
    if (!matched[i])
      user_error("{}: '{}' is not a module of a {} block: expected some of {}", where, targets[i],
                 family_name(cfg.family), fmt::join(modules, " "));
  FRUGAL_CHECK(int(sites.size()) <= Tensors::kMaxSites, "{} LoRA sites in a block", sites.size());
  return sites;
}

std::vector<LoraSite> lora_sites(const ModelConfig& cfg, int l, const std::string& where) {
  if (!cfg.lora.on()) return {};
  ModelConfig base = cfg;
  base.lora = {};
  for (const UnitSpec& u : param_table(base))
    if (u.kind == UnitKind::block && u.layer == l) return sites_of(cfg, u, where);
  FRUGAL_CHECK(false, "no block {}", l);
}

int64_t lora_width(const ModelConfig& cfg) {
  if (!cfg.lora.on()) return 0;
  int most = 0;
  const std::vector<LoraSite> sites = lora_sites(cfg, 0);
  for (const LoraSite& s : sites)
    most = std::max(most, int(std::count_if(sites.begin(), sites.end(), [&](const LoraSite& o) { return o.weight == s.weight; })));
  return int64_t(cfg.lora.rank) * (1 + most);
}

// The base table, frozen, then one adapter unit per block: A (r, in) and B (rows, r) of each
// site, in PEFT's names ("base_model.model.<module>.lora_A.weight").
std::vector<UnitSpec> param_table(const ModelConfig& cfg) {
  std::vector<UnitSpec> units = cfg.family == Family::llama ? llama_table(cfg) : gpt2_table(cfg);
  if (!cfg.lora.on()) return units;
  const int64_t r = cfg.lora.rank;
  const size_t num_base = units.size();
  for (size_t i = 0; i < num_base; i++) {
    units[i].frozen = true;
    if (units[i].kind != UnitKind::block) continue;
    units[i].base = cfg.lora.base;  // QLoRA quantizes the blocks' linear weights, not the embedding or head
    std::vector<ParamSpec> specs;
    const std::vector<LoraSite> sites = sites_of(cfg, units[i], "lora.targets");
    for (size_t k = 0; k < sites.size(); k++)
      for (bool b : {false, true}) {
        ParamSpec s;
        s.name = sites[k].module + (b ? ".lora_B.weight" : ".lora_A.weight");
        s.shape = b ? std::vector<int64_t>{sites[k].rows, r} : std::vector<int64_t>{r, sites[k].in};
        s.decay = true;
        s.init = b ? Init::zeros : Init::kaiming_uniform;
        s.field = nullptr;
        s.hf = {{"base_model.model." + s.name, s.shape[0]}};
        s.site = int(k);
        s.lora_b = b;
        specs.push_back(std::move(s));
      }
    const int l = units[i].layer;
    units.push_back(make_unit_spec(UnitKind::adapter, l, fmt::format("adapter{}", l), std::move(specs)));
  }
  return units;
}

// The rows of a block's linear weight: its output's width.
static int64_t out_width(const ModelConfig& c, float* Tensors::*weight) {
  if (weight == &Tensors::qkv_w) return c.qkv_width();
  if (weight == &Tensors::fc_w) return c.gated_mlp() ? 2 * c.ffn() : c.ffn();
  return c.n_embd;  // proj, fcproj
}

bool Model::has_lora(float* Tensors::*weight) const {
  return std::any_of(sites_.begin(), sites_.end(), [&](const LoraSite& s) { return s.weight == weight; });
}

const void* Model::lw(const Unit& u, const ParamSpec& s) const {
  if (dt_ == DType::f32) return view_of(const_cast<Tensors&>(u.p), s);
  return u.wc + s.offset;
}

// Each site's dropout mask from the micro-batch's seed, the block and the site.
static uint64_t site_seed(uint64_t seed, int l, size_t k) { return seed ^ ((uint64_t(l) * 16 + k + 1) * 0xd1b54a32d192ed03ULL); }

const void* Model::lora_input(int l, size_t k, const void* x, int64_t BT) {
  if (!dropout_on_) return x;
  const int64_t n = BT * sites_[k].in;
  be_.dropout(dropout_ws_.data(), x, n, float(cfg_.lora.dropout), site_seed(dropout_seed_, l, k), false, dt_);
  return dropout_ws_.data();
}

void Model::lora_forward(int l, float* Tensors::*weight, const void* x, void* y, int64_t BT) {
  if (sites_.empty()) return;
  const Unit& a = units_[adapters_[size_t(l)]];
  const int64_t r = cfg_.lora.rank, width = out_width(cfg_, weight);
  const size_t es = dtype_size(dt_);
  void* h = lora_ws_.data();
  for (size_t k = 0; k < sites_.size(); k++) {
    const LoraSite& s = sites_[k];
    if (s.weight != weight) continue;
    be_.matmul(false, true, BT, r, s.in, lora_input(l, k, x, BT), s.in, lw(a, a.specs[2 * k]), s.in, h, r, dt_, dt_,
               nullptr, false);
    be_.scale(h, cfg_.lora.scale(), BT * r, dt_);
    be_.matmul(false, true, BT, s.rows, r, h, r, lw(a, a.specs[2 * k + 1]), r,
               static_cast<std::byte*>(y) + s.row0 * int64_t(es), width, dt_, dt_, nullptr, true);
  }
}

void Model::lora_backward(int l, float* Tensors::*weight, const void* x, const void* dy, int64_t BT) {
  if (sites_.empty()) return;
  Unit& a = units_[adapters_[size_t(l)]];
  const int64_t r = cfg_.lora.rank, width = out_width(cfg_, weight);
  const size_t es = dtype_size(dt_);
  std::byte* h = lora_ws_.data();
  std::byte* dh = h + BT * r * int64_t(es);  // one (BT, r) per site of this layer, kept for backward_input
  for (size_t k = 0; k < sites_.size(); k++) {
    const LoraSite& s = sites_[k];
    if (s.weight != weight) continue;
    const ParamSpec &A = a.specs[2 * k], &B = a.specs[2 * k + 1];
    const std::byte* dys = static_cast<const std::byte*>(dy) + s.row0 * int64_t(es);
    const void* xd = lora_input(l, k, x, BT);
    be_.matmul(false, true, BT, r, s.in, xd, s.in, lw(a, A), s.in, h, r, dt_, dt_, nullptr, false);
    be_.scale(h, cfg_.lora.scale(), BT * r, dt_);
    be_.matmul(true, false, s.rows, r, BT, dys, width, h, r, view_of(a.g, B), r, dt_, DType::f32, nullptr, true);
    be_.matmul(false, false, BT, r, s.rows, dys, width, lw(a, B), r, dh, r, dt_, dt_, nullptr, false);
    be_.scale(dh, cfg_.lora.scale(), BT * r, dt_);
    be_.matmul(true, false, r, s.in, BT, dh, r, xd, s.in, view_of(a.g, A), s.in, dt_, DType::f32, nullptr, true);
    dh += BT * r * int64_t(es);
  }
}

void Model::lora_backward_input(int l, float* Tensors::*weight, void* dx, int64_t BT) {
  if (sites_.empty()) return;
  const Unit& a = units_[adapters_[size_t(l)]];
  const int64_t r = cfg_.lora.rank;
  const size_t es = dtype_size(dt_);
  const std::byte* dh = lora_ws_.data() + BT * r * int64_t(es);
  for (size_t k = 0; k < sites_.size(); k++) {
    const LoraSite& s = sites_[k];
    if (s.weight != weight) continue;
    if (dropout_on_) {  // dx += mask (dh A) / (1 - p)
      be_.matmul(false, false, BT, s.in, r, dh, r, lw(a, a.specs[2 * k]), s.in, dropout_ws_.data(), s.in, dt_, dt_, nullptr, false);
      be_.dropout(dx, dropout_ws_.data(), BT * s.in, float(cfg_.lora.dropout), site_seed(dropout_seed_, l, k), true, dt_);
    } else {
      be_.matmul(false, false, BT, s.in, r, dh, r, lw(a, a.specs[2 * k]), s.in, dx, s.in, dt_, dt_, nullptr, true);
    }
    dh += BT * r * int64_t(es);
  }
}

void Model::merge_lora() {
  FRUGAL_CHECK(dt_ == DType::f32 && !sites_.empty() && cfg_.lora.base == BaseFormat::compute,
               "merge_lora: an fp32 model with adapters on an fp32 base");
  const int64_t r = cfg_.lora.rank;
  for (int l = 0; l < cfg_.n_layer; l++) {
    Unit& base = block_unit(l);
    const Unit& a = units_[adapters_[size_t(l)]];
    for (size_t k = 0; k < sites_.size(); k++) {
      const LoraSite& s = sites_[k];
      PoolArray<float> delta(size_t(s.rows * s.in), Mem::workspace);  // B A (rows, in)
      be_.matmul(false, false, s.rows, s.in, r, view_of(const_cast<Tensors&>(a.p), a.specs[2 * k + 1]), r,
                 view_of(const_cast<Tensors&>(a.p), a.specs[2 * k]), s.in, delta.data(), s.in, dt_, dt_, nullptr, false);
      std::vector<float> w(size_t(s.rows * s.in)), d(w.size());
      float* rows = base.p.*s.weight + s.row0 * s.in;
      be_.copy(w.data(), rows, w.size() * sizeof(float));
      be_.copy(d.data(), delta.data(), d.size() * sizeof(float));
      for (size_t i = 0; i < w.size(); i++) w[i] += cfg_.lora.scale() * d[i];
      be_.copy(rows, w.data(), w.size() * sizeof(float));
    }
  }
}

}  // namespace frugal
