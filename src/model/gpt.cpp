// The GPT-2 model: parameter tables, init, and the explicit forward/backward of each stage.
#include <cmath>
#include <cstring>

#include "model/model.h"

namespace frugal {

static Unit make_unit(std::string name, std::vector<ParamSpec> specs, DType dt) {
  Unit u;
  u.name = std::move(name);
  u.specs = std::move(specs);
  for (auto& s : u.specs) {
    s.numel = 1;
    for (int64_t d : s.shape) s.numel *= d;
    s.offset = u.numel;
    u.numel += s.numel;
  }
  u.params = PoolArray<float>(u.numel, Mem::params);
  u.grads = PoolArray<float>(u.numel, Mem::grads);
  if (dt != DType::f32) u.compute = PoolArray<uint16_t>(u.numel, Mem::params);
  for (auto& s : u.specs) {
    u.p.*s.field = u.params.data() + s.offset;
    u.g.*s.field = u.grads.data() + s.offset;
  }
  return u;
}

Gpt::Gpt(const GptConfig& cfg, Backend& be, DType compute) : cfg_(cfg), be_(be), dt_(compute) {
  const int64_t C = cfg.n_embd, Vp = cfg.padded_vocab(), maxT = cfg.context;
  using T = Tensors;
  units_.push_back(make_unit("embedding", {
      {"wte", {Vp, C}, true, Init::normal, &T::wte},
      {"wpe", {maxT, C}, true, Init::normal, &T::wpe},
  }, dt_));
  for (int l = 0; l < cfg.n_layer; l++) {
    auto n = [l](const char* s) { return fmt::format("blocks.{}.{}", l, s); };
    units_.push_back(make_unit(fmt::format("block{}", l), {
        {n("ln1.weight"), {C}, false, Init::ones, &T::ln1_w},
        {n("ln1.bias"), {C}, false, Init::zeros, &T::ln1_b},
        {n("attn.qkv.weight"), {3 * C, C}, true, Init::normal, &T::qkv_w},
        {n("attn.qkv.bias"), {3 * C}, false, Init::zeros, &T::qkv_b},
        {n("attn.proj.weight"), {C, C}, true, Init::normal_residual, &T::proj_w},
        {n("attn.proj.bias"), {C}, false, Init::zeros, &T::proj_b},
        {n("ln2.weight"), {C}, false, Init::ones, &T::ln2_w},
        {n("ln2.bias"), {C}, false, Init::zeros, &T::ln2_b},
        {n("mlp.fc.weight"), {4 * C, C}, true, Init::normal, &T::fc_w},
        {n("mlp.fc.bias"), {4 * C}, false, Init::zeros, &T::fc_b},
        {n("mlp.proj.weight"), {C, 4 * C}, true, Init::normal_residual, &T::fcproj_w},
        {n("mlp.proj.bias"), {C}, false, Init::zeros, &T::fcproj_b},
    }, dt_));
  }
  units_.push_back(make_unit("final", {
      {"ln_f.weight", {C}, false, Init::ones, &T::lnf_w},
      {"ln_f.bias", {C}, false, Init::zeros, &T::lnf_b},
  }, dt_));
}

void Gpt::init(uint64_t seed) {
  Rng rng(seed);
  const double std_resid = 0.02 / std::sqrt(2.0 * cfg_.n_layer);
  for (auto& u : units_) {
    for (auto& s : u.specs) {
      float* d = u.params.data() + s.offset;
      int64_t n = s.numel;
      if (s.field == &Tensors::wte) n = int64_t(cfg_.vocab_size) * cfg_.n_embd;  // padding rows 0
      switch (s.init) {
        case Init::normal: for (int64_t i = 0; i < n; i++) d[i] = float(0.02 * rng.normal()); break;
        case Init::normal_residual:
          for (int64_t i = 0; i < n; i++) d[i] = float(std_resid * rng.normal());
          break;
        case Init::ones: for (int64_t i = 0; i < n; i++) d[i] = 1.0f; break;
        case Init::zeros: std::memset(d, 0, n * sizeof(float)); break;
      }
      std::memset(d + n, 0, (s.numel - n) * sizeof(float));
    }
  }
  sync_compute_weights();
}

void Gpt::sync_compute_weights() {
  if (dt_ == DType::f32) return;
  for (auto& u : units_) be_.cast(u.compute.data(), u.params.data(), u.numel, dt_);
}

const void* Gpt::cw(const Unit& u, float* Tensors::*field) const {
  const float* master = u.p.*field;
  if (dt_ == DType::f32) return master;
  return u.compute.data() + (master - u.params.data());
}

void Gpt::zero_grads() {
  for (auto& u : units_) std::memset(u.grads.data(), 0, u.numel * sizeof(float));
}

std::vector<Gpt::Named> Gpt::named_params() {
  std::vector<Named> out;
  for (auto& u : units_)
    for (auto& s : u.specs) out.push_back({&s, u.params.data() + s.offset, u.grads.data() + s.offset});
  return out;
}

void Gpt::allocate(int B, int T, int64_t head_rows) {
  FRUGAL_CHECK(B > 0 && T > 0 && T <= cfg_.context, "allocate(B={}, T={})", B, T);
  if (B == B_ && T == T_ && (head_rows == 0 || head_rows == head_rows_)) return;
  B_ = B;
  T_ = T;
  const int64_t BT = int64_t(B) * T, C = cfg_.n_embd, NH = cfg_.n_head, Vp = cfg_.padded_vocab();
  const Mem A = Mem::activations, W = Mem::workspace;
  const size_t es = dtype_size(dt_);
  auto act = [&](int64_t n, Mem m) { return Bytes(size_t(n) * es, m); };
  res_.clear();
  acts_.clear();
  for (int l = 0; l <= cfg_.n_layer; l++) res_.emplace_back(BT * C, A);
  for (int l = 0; l < cfg_.n_layer; l++) {
    BlockActs a;
    a.ln1 = act(BT * C, A);
    a.ln1_mean = {size_t(BT), A};
    a.ln1_rstd = {size_t(BT), A};
    a.qkv = act(3 * BT * C, A);
    a.lse = {size_t(B * NH * T), A};
    a.atty = act(BT * C, A);
    a.proj = act(BT * C, A);
    a.ln2 = act(BT * C, A);
    a.ln2_mean = {size_t(BT), A};
    a.ln2_rstd = {size_t(BT), A};
    a.fch = act(4 * BT * C, A);
    a.fch_gelu = act(4 * BT * C, A);
    acts_.push_back(std::move(a));
  }
  lnf_ = act(BT * C, A);
  lnf_mean_ = {size_t(BT), A};
  lnf_rstd_ = {size_t(BT), A};
  losses_ = {size_t(BT), A};
  // lm-head chunk: at most 8 Mi floats (32 MiB) of logits at a time, never the full (BT, Vp).
  head_rows_ = head_rows > 0 ? head_rows : std::max<int64_t>(1, std::min<int64_t>(BT, (int64_t(1) << 23) / Vp));
  logits_ = {size_t(head_rows_ * Vp), W};
  dres_ = {size_t(BT * C), W};
  res_mid_ = {size_t(BT * C), W};
  if (dt_ != DType::f32) {
    dlogits_ = act(head_rows_ * Vp, W);
    dres_c_ = act(BT * C, W);
  }
  dbig_ = act(4 * BT * C, W);
  dsmall_ = act(BT * C, W);
}

const void* Gpt::dres_compute(int64_t n) {
  if (dt_ == DType::f32) return dres_.data();
  be_.cast(dres_c_.data(), dres_.data(), n, dt_);
  return dres_c_.data();
}

void Gpt::embed_forward(const int32_t* tokens, int B, int T) {
  const Tensors& p = units_[0].p;
  be_.embedding_forward(res_[0].data(), tokens, p.wte, p.wpe, B, T, cfg_.n_embd);
}

void Gpt::block_forward(int l, int B, int T) {
  const Unit& u = block_unit(l);
  const Tensors& p = u.p;
  BlockActs& a = acts_[l];
  const int64_t BT = int64_t(B) * T, C = cfg_.n_embd;
  const DType dt = dt_;
  const float* x = res_[l].data();
  be_.layernorm_forward(a.ln1.data(), a.ln1_mean.data(), a.ln1_rstd.data(), x, p.ln1_w, p.ln1_b, BT, C, dt);
  be_.linear_forward(a.qkv.data(), a.ln1.data(), cw(u, &Tensors::qkv_w), p.qkv_b, BT, C, 3 * C, dt);
  be_.attention_forward(a.atty.data(), a.lse.data(), a.qkv.data(), B, T, C, cfg_.n_head, dt);
  be_.linear_forward(a.proj.data(), a.atty.data(), cw(u, &Tensors::proj_w), p.proj_b, BT, C, C, dt);
  float* res_mid = res_mid_.data();
  be_.add(res_mid, x, a.proj.data(), BT * C, dt);
  be_.layernorm_forward(a.ln2.data(), a.ln2_mean.data(), a.ln2_rstd.data(), res_mid, p.ln2_w, p.ln2_b, BT, C, dt);
  be_.linear_forward(a.fch.data(), a.ln2.data(), cw(u, &Tensors::fc_w), p.fc_b, BT, C, 4 * C, dt);
  be_.gelu_forward(a.fch_gelu.data(), a.fch.data(), 4 * BT * C, dt);
  void* mlp_out = dsmall_.data();
  be_.linear_forward(mlp_out, a.fch_gelu.data(), cw(u, &Tensors::fcproj_w), p.fcproj_b, BT, 4 * C, C, dt);
  be_.add(res_[l + 1].data(), res_mid, mlp_out, BT * C, dt);
}

void Gpt::final_forward(int B, int T) {
  const Tensors& p = units_.back().p;
  be_.layernorm_forward(lnf_.data(), lnf_mean_.data(), lnf_rstd_.data(), res_[cfg_.n_layer].data(),
                        p.lnf_w, p.lnf_b, int64_t(B) * T, cfg_.n_embd, dt_);
}

float Gpt::head(const int32_t* targets, int B, int T, float grad_scale) {
  final_forward(B, T);
  const int64_t BT = int64_t(B) * T, C = cfg_.n_embd, V = cfg_.vocab_size, Vp = cfg_.padded_vocab();
  const DType dt = dt_;
  const size_t es = dtype_size(dt);
  const void* wte = cw(units_[0], &Tensors::wte);
  float* dwte = units_[0].g.wte;
  std::byte* lnf = lnf_.data();
  std::byte* dlnf = dsmall_.data();
  // lm head (tied to wte) + softmax cross-entropy, chunk by chunk of rows: logits (fp32), loss
  // and dlogits for one chunk, then its contribution to dlnf and dwte, before the next chunk.
  for (int64_t r0 = 0; r0 < BT; r0 += head_rows_) {
    int64_t rows = std::min(head_rows_, BT - r0);
    const std::byte* x = lnf + r0 * C * es;
    be_.matmul(false, true, rows, Vp, C, x, C, wte, C, logits_.data(), Vp, dt, DType::f32, nullptr, false);
    be_.softmax_xent(logits_.data(), losses_.data() + r0, targets + r0, rows, V, Vp, grad_scale);
    if (grad_scale != 0.0f) {
      const void* dlogits = logits_.data();
      if (dt != DType::f32) {
        be_.cast(dlogits_.data(), logits_.data(), rows * Vp, dt);
        dlogits = dlogits_.data();
      }
      be_.matmul(false, false, rows, C, Vp, dlogits, Vp, wte, C, dlnf + r0 * C * es, C, dt, dt, nullptr, false);
      be_.matmul(true, false, Vp, C, rows, dlogits, Vp, x, C, dwte, C, dt, DType::f32, nullptr, true);
    }
  }
  if (grad_scale != 0.0f) {
    const Tensors& p = units_.back().p;
    const Tensors& g = units_.back().g;
    std::memset(dres_.data(), 0, BT * C * sizeof(float));
    be_.layernorm_backward(dres_.data(), g.lnf_w, g.lnf_b, dlnf, res_[cfg_.n_layer].data(), p.lnf_w,
                           lnf_mean_.data(), lnf_rstd_.data(), BT, C, dt);
  }
  double sum = 0.0;
  for (int64_t i = 0; i < BT; i++) sum += losses_[i];
  return float(sum / double(BT));
}

void Gpt::block_backward(int l, int B, int T) {
  const Unit& u = block_unit(l);
  const Tensors& p = u.p;
  const Tensors& g = u.g;
  BlockActs& a = acts_[l];
  const int64_t BT = int64_t(B) * T, C = cfg_.n_embd;
  const DType dt = dt_;
  float* dres = dres_.data();  // fp32; in: d(block output); out: d(block input)
  void* dbig = dbig_.data();
  void* dsmall = dsmall_.data();
  // MLP: y = res_mid + fcproj(gelu(fc(ln2(res_mid))))
  be_.linear_backward(dbig, g.fcproj_w, g.fcproj_b, dres_compute(BT * C), a.fch_gelu.data(),
                      cw(u, &Tensors::fcproj_w), BT, 4 * C, C, dt);
  be_.gelu_backward(dbig, a.fch.data(), dbig, 4 * BT * C, dt);
  be_.linear_backward(dsmall, g.fc_w, g.fc_b, dbig, a.ln2.data(), cw(u, &Tensors::fc_w), BT, C, 4 * C, dt);
  float* res_mid = res_mid_.data();
  be_.add(res_mid, res_[l].data(), a.proj.data(), BT * C, dt);  // bit-identical to the forward's
  be_.layernorm_backward(dres, g.ln2_w, g.ln2_b, dsmall, res_mid, p.ln2_w,
                         a.ln2_mean.data(), a.ln2_rstd.data(), BT, C, dt);
  // attention: res_mid = x + proj(attention(qkv(ln1(x))))
  be_.linear_backward(dsmall, g.proj_w, g.proj_b, dres_compute(BT * C), a.atty.data(),
                      cw(u, &Tensors::proj_w), BT, C, C, dt);
  void* dqkv = dbig;
  be_.attention_backward(dqkv, dsmall, a.qkv.data(), a.atty.data(), a.lse.data(), B, T, C, cfg_.n_head, dt);
  be_.linear_backward(dsmall, g.qkv_w, g.qkv_b, dqkv, a.ln1.data(), cw(u, &Tensors::qkv_w), BT, C, 3 * C, dt);
  be_.layernorm_backward(dres, g.ln1_w, g.ln1_b, dsmall, res_[l].data(), p.ln1_w,
                         a.ln1_mean.data(), a.ln1_rstd.data(), BT, C, dt);
}

void Gpt::embed_backward(const int32_t* tokens, int B, int T) {
  be_.embedding_backward(units_[0].g.wte, units_[0].g.wpe, dres_.data(), tokens, B, T, cfg_.n_embd);
}

float Gpt::forward_loss(const int32_t* tokens, const int32_t* targets, int B, int T) {
  embed_forward(tokens, B, T);
  for (int l = 0; l < cfg_.n_layer; l++) block_forward(l, B, T);
  return head(targets, B, T, 0.0f);
}

void Gpt::logits(const int32_t* tokens, int B, int T, bool last_only, std::vector<float>& out) {
  embed_forward(tokens, B, T);
  for (int l = 0; l < cfg_.n_layer; l++) block_forward(l, B, T);
  final_forward(B, T);
  const int64_t C = cfg_.n_embd, V = cfg_.vocab_size;
  const size_t es = dtype_size(dt_);
  const int64_t rows = last_only ? B : int64_t(B) * T;
  out.resize(size_t(rows * V));
  // all rows at once, or row T-1 of each sequence
  for (int b = 0; b < (last_only ? B : 1); b++) {
    const std::byte* x = lnf_.data() + (last_only ? (int64_t(b) * T + T - 1) * C * es : 0);
    be_.matmul(false, true, last_only ? 1 : rows, V, C, x, C, cw(units_[0], &Tensors::wte), C,
               out.data() + (last_only ? b * V : 0), V, dt_, DType::f32, nullptr, false);
  }
}

}  // namespace frugal
