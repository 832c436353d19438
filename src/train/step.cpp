// One optimizer step: LR schedule, AdamW, micro-batch accumulation, clipping.
#include <chrono>
#include <cmath>

#include "train/train.h"

namespace frugal {

double lr_at(const TrainSettings& t, int step) {
  if (step < t.warmup_steps) return t.lr * double(step + 1) / double(t.warmup_steps);
  double p = double(step - t.warmup_steps) / double(std::max(1, t.steps - t.warmup_steps));
  p = std::min(p, 1.0);
  return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1.0 + std::cos(M_PI * p));
}

AdamW::AdamW(Gpt& model, Comm& comm, bool sharded) : comm_(comm), sharded_(sharded && comm.size() > 1) {
  const int64_t world = sharded_ ? comm.size() : 1, rank = sharded_ ? comm.rank() : 0;
  for (auto& u : model.units()) {
    int64_t len = (u.numel + world - 1) / world;
    int64_t lo = std::min(u.numel, rank * len), hi = std::min(u.numel, lo + len);
    slices_.push_back({lo, hi, len});
    m_.emplace_back(hi - lo, Mem::optimizer);
    v_.emplace_back(hi - lo, Mem::optimizer);
  }
}

AdamW::Shard AdamW::shard(Gpt& model, size_t unit) {
  const Slice& sl = slices_[unit];
  return {sl.lo, sl.hi, model.units()[unit].params.data() + sl.lo, m_[unit].data(), v_[unit].data()};
}

void AdamW::update(Gpt& model, Backend& be, const TrainSettings& t, double lr, int step_1based) {
  auto& units = model.units();
  for (size_t i = 0; i < units.size(); i++) {
    Unit& u = units[i];
    const Slice& sl = slices_[i];
    for (auto& s : u.specs) {  // the part of each tensor inside this rank's slice
      int64_t lo = std::max(sl.lo, s.offset), hi = std::min(sl.hi, s.offset + s.numel);
      if (lo >= hi) continue;
      AdamWArgs a{float(lr), float(t.beta1), float(t.beta2), float(t.eps),
                  s.decay ? float(t.weight_decay) : 0.0f, step_1based};
      be.adamw(u.params.data() + lo, u.grads.data() + lo, m_[i].data() + (lo - sl.lo),
               v_[i].data() + (lo - sl.lo), hi - lo, a);
    }
    // every rank's updated slice, in place into the whole unit
    if (sharded_) comm_.all_gather_inplace(u.params.data(), u.numel, sl.len)->wait();
  }
}

LossScaler::LossScaler(const PrecisionSettings& p)
    : enabled(p.compute == DType::f16), scale(enabled ? p.loss_scale : 1.0),
      min_scale(p.loss_scale_min), window(p.loss_scale_window) {}

void LossScaler::update(bool overflow) {
  if (!overflow) {
    consecutive_skips = 0;
    if (enabled && ++clean_steps >= window) {
      scale *= 2.0;
      clean_steps = 0;
    }
    return;
  }
  skipped_total++;
  consecutive_skips++;
  clean_steps = 0;
  if (!enabled || scale / 2.0 < min_scale)
    user_error("gradients are not finite {}after {} skipped step(s) in a row{}: the run diverged "
               "(lower train.lr, or use precision.compute = \"bf16\")",
               enabled ? fmt::format("at the loss-scale floor precision.loss_scale_min = {} ", min_scale) : "",
               consecutive_skips, enabled ? "" : " in fp32/bf16");
  scale /= 2.0;
}

Stepper::Stepper(Gpt& model, Backend& be, Comm& comm, const TrainSettings& t, int accum_steps,
                 const PrecisionSettings& p, const std::vector<Recompute>& plan, bool zero1)
    : model_(model), be_(be), comm_(comm), t_(t), accum_(accum_steps), opt_(model, comm, zero1), scaler_(p),
      inputs_(size_t(t.micro_batch) * t.seq_len), targets_(inputs_.size()) {
  FRUGAL_CHECK(p.compute == model.compute_dtype(), "model computes in {}, policy says {}",
               dtype_name(model.compute_dtype()), dtype_name(p.compute));
  model_.allocate(t.micro_batch, t.seq_len, plan);
}

float Stepper::forward_backward(const NextBatch& next) {
  const int B = t_.micro_batch, T = t_.seq_len, L = model_.config().n_layer;
  const int64_t micro_tokens = int64_t(B) * T;
  const int64_t global_tokens = micro_tokens * accum_ * comm_.size();
  // Each token's loss enters the gradient with weight 1/global_tokens, so micro-batches count
  // by their token counts and the gradient is that of the mean over the global batch.
  const float grad_scale = float(scaler_.scale / double(global_tokens));
  model_.zero_grads();
  double loss_sum = 0.0;
  auto& units = model_.units();
  // ddp: on the last micro-batch, each unit's gradients are summed across ranks as soon as its
  // backward is done, while backward goes on with the next block (no-ops in a world of one).
  pending_.clear();
  auto reduce = [&](Unit& u) {
    if (comm_.size() > 1) pending_.push_back(comm_.all_reduce(u.grads.data(), u.numel, ReduceOp::sum));
  };
  for (int k = 0; k < accum_; k++) {
    const bool last = k == accum_ - 1;
    next(inputs_.data(), targets_.data());
    model_.embed_forward(inputs_.data(), B, T);
    for (int l = 0; l < L; l++) model_.block_forward(l, B, T);
    loss_sum += double(model_.head(targets_.data(), B, T, grad_scale)) * double(micro_tokens);
    if (last) reduce(units.back());
    for (int l = L - 1; l >= 0; l--) {
      // full recompute: re-run the block's forward from its kept input, then its backward
      if (model_.recompute(l) == Recompute::full) model_.block_forward(l, B, T, true);
      model_.block_backward(l, B, T);
      if (last) reduce(model_.block_unit(l));
    }
    model_.embed_backward(inputs_.data(), B, T);
    if (last) reduce(units.front());
  }
  auto t0 = std::chrono::steady_clock::now();
  for (auto& w : pending_) w->wait();
  comm_wait_s_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  float loss_buf[1] = {float(loss_sum)};
  comm_.all_reduce(loss_buf, 1, ReduceOp::sum)->wait();
  return float(double(loss_buf[0]) / double(global_tokens));
}

StepStats Stepper::step(int step, const NextBatch& next) {
  StepStats st;
  st.loss_scale = scaler_.scale;
  st.loss = forward_backward(next);
  st.comm_wait_s = comm_wait_s_;
  st.tokens = int64_t(t_.micro_batch) * t_.seq_len * accum_ * comm_.size();
  st.lr = lr_at(t_, step);
  // One pass gives the norm and the overflow check: a non-finite sum means inf/NaN somewhere.
  double sq = 0.0;
  for (auto& u : model_.units()) sq += be_.sum_squares(u.grads.data(), u.numel);
  bool overflow = !std::isfinite(sq);
  scaler_.update(overflow);
  if (overflow) {
    st.skipped = true;
    st.grad_norm = INFINITY;
    return st;  // weights and optimizer state untouched
  }
  st.grad_norm = std::sqrt(sq) / st.loss_scale;
  // Unscale and clip in one pass (clipping as torch.nn.utils.clip_grad_norm_: by
  // clip / (norm + 1e-6) when that is below 1).
  double coef = 1.0 / st.loss_scale;
  if (t_.grad_clip > 0.0) coef *= std::min(1.0, t_.grad_clip / (st.grad_norm + 1e-6));
  if (coef != 1.0)
    for (auto& u : model_.units()) be_.scale(u.grads.data(), u.numel, float(coef));
  opt_.update(model_, be_, t_, st.lr, ++updates_);
  model_.sync_compute_weights();
  return st;
}

}  // namespace frugal
