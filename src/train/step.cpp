// One optimizer step: LR schedule, AdamW, micro-batch accumulation, clipping.
#include <cmath>

#include "train/train.h"

namespace frugal {

double lr_at(const TrainSettings& t, int step) {
  if (step < t.warmup_steps) return t.lr * double(step + 1) / double(t.warmup_steps);
  double p = double(step - t.warmup_steps) / double(std::max(1, t.steps - t.warmup_steps));
  p = std::min(p, 1.0);
  return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1.0 + std::cos(M_PI * p));
}

AdamW::AdamW(Gpt& model) {
  for (auto& u : model.units()) {
    m_.emplace_back(u.numel, Mem::optimizer);
    v_.emplace_back(u.numel, Mem::optimizer);
  }
}

void AdamW::update(Gpt& model, Backend& be, const TrainSettings& t, double lr, int step_1based) {
  auto& units = model.units();
  for (size_t i = 0; i < units.size(); i++) {
    Unit& u = units[i];
    for (auto& s : u.specs) {
      AdamWArgs a{float(lr), float(t.beta1), float(t.beta2), float(t.eps),
                  s.decay ? float(t.weight_decay) : 0.0f, step_1based};
      be.adamw(u.params.data() + s.offset, u.grads.data() + s.offset, m_[i].data() + s.offset,
               v_[i].data() + s.offset, s.numel, a);
    }
  }
}

Stepper::Stepper(Gpt& model, Backend& be, Comm& comm, const TrainSettings& t, int accum_steps)
    : model_(model), be_(be), comm_(comm), t_(t), accum_(accum_steps), opt_(model),
      inputs_(size_t(t.micro_batch) * t.seq_len), targets_(inputs_.size()) {
  model_.allocate(t.micro_batch, t.seq_len);
}

float Stepper::forward_backward(const NextBatch& next) {
  const int B = t_.micro_batch, T = t_.seq_len, L = model_.config().n_layer;
  const int64_t micro_tokens = int64_t(B) * T;
  const int64_t global_tokens = micro_tokens * accum_ * comm_.size();
  // Each token's loss enters the gradient with weight 1/global_tokens, so micro-batches count
  // by their token counts and the gradient is that of the mean over the global batch.
  const float grad_scale = 1.0f / float(global_tokens);
  model_.zero_grads();
  double loss_sum = 0.0;
  for (int k = 0; k < accum_; k++) {
    next(inputs_.data(), targets_.data());
    model_.embed_forward(inputs_.data(), B, T);
    for (int l = 0; l < L; l++) model_.block_forward(l, B, T);
    loss_sum += double(model_.head(targets_.data(), B, T, grad_scale)) * double(micro_tokens);
    for (int l = L - 1; l >= 0; l--) model_.block_backward(l, B, T);
    model_.embed_backward(inputs_.data(), B, T);
  }
  float loss_buf[1] = {float(loss_sum)};
  comm_.all_reduce(loss_buf, 1, ReduceOp::sum)->wait();
  for (auto& u : model_.units()) comm_.all_reduce(u.grads.data(), u.numel, ReduceOp::sum)->wait();
  return float(double(loss_buf[0]) / double(global_tokens));
}

StepStats Stepper::step(int step, const NextBatch& next) {
  StepStats st;
  st.loss = forward_backward(next);
  st.tokens = int64_t(t_.micro_batch) * t_.seq_len * accum_ * comm_.size();
  double sq = 0.0;
  for (auto& u : model_.units()) sq += be_.sum_squares(u.grads.data(), u.numel);
  st.grad_norm = std::sqrt(sq);
  if (t_.grad_clip > 0.0) {
    // as torch.nn.utils.clip_grad_norm_: scale by clip / (norm + 1e-6) when that is below 1
    double coef = t_.grad_clip / (st.grad_norm + 1e-6);
    if (coef < 1.0)
      for (auto& u : model_.units()) be_.scale(u.grads.data(), u.numel, float(coef));
  }
  st.lr = lr_at(t_, step);
  opt_.update(model_, be_, t_, st.lr, step + 1);
  return st;
}

}  // namespace frugal
