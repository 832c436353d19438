// One optimizer step: LR schedule, AdamW, micro-batch accumulation, clipping.
#include <chrono>
#include <cmath>
#include <numeric>

#include "train/train.h"

namespace frugal {

double lr_at(const TrainSettings& t, int step) {
  if (step < t.warmup_steps) return t.lr * double(step + 1) / double(t.warmup_steps);
  double p = double(step - t.warmup_steps) / double(std::max(1, t.steps - t.warmup_steps));
  p = std::min(p, 1.0);
  return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1.0 + std::cos(M_PI * p));
}

AdamW::AdamW(const Shards& shards) : shards_(shards) {
  for (const auto& seg : shards.segments()) {
    m_.emplace_back(size_t(seg.end - seg.begin), Mem::optimizer);
    v_.emplace_back(size_t(seg.end - seg.begin), Mem::optimizer);
  }
}

void AdamW::update(Model& model, Backend& be, const TrainSettings& t, double lr, int step_1based,
                   float grad_scale) {
  const auto& segs = shards_.segments();
  spans_.clear();
  for (size_t i = 0; i < segs.size(); i++) {
    const auto& sg = segs[i];
    for (auto& s : model.units()[sg.unit].specs) {  // the part of each tensor inside the segment
      int64_t lo = std::max(sg.begin, s.offset), hi = std::min(sg.end, s.offset + s.numel);
      if (lo >= hi) continue;
      int64_t k = lo - sg.begin;
      spans_.push_back({sg.w + k, sg.g + k, m_[i].data() + k, v_[i].data() + k, hi - lo, s.decay,
                        sg.copy ? sg.copy + sg.begin + k : nullptr});
    }
  }
  be.adamw(spans_, {float(lr), float(t.beta1), float(t.beta2), float(t.eps), float(t.weight_decay), step_1based, grad_scale},
           model.compute_dtype());
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
    user_error("gradients are not finite {}after {} skipped step(s) in a row{}: the run diverged ({})",
               enabled ? fmt::format("at the loss-scale floor precision.loss_scale_min = {} ", min_scale) : "",
               consecutive_skips, enabled ? "" : " in fp32/bf16",
               enabled ? "lower train.lr, or use precision.compute = \"bf16\", whose range is fp32's"
                       : "lower train.lr or train.grad_clip");
  scale /= 2.0;
}

Stepper::Stepper(Model& model, Backend& be, Comm& comm, const TrainSettings& t, int accum_steps,
                 const PrecisionSettings& p, const std::vector<Recompute>& plan, Strategy strategy)
    : model_(model), be_(be), comm_(comm), t_(t), accum_(accum_steps),
      shards_(model, be, comm, strategy, p.reduce), opt_(shards_), scaler_(p),
      inputs_(size_t(t.micro_batch) * t.seq_len * accum_steps), targets_(inputs_.size()) {
  FRUGAL_CHECK(p.compute == model.compute_dtype(), "model computes in {}, policy says {}",
               dtype_name(model.compute_dtype()), dtype_name(p.compute));
  model_.allocate(t.micro_batch, t.seq_len, plan);
}

void Stepper::init_weights(uint64_t seed) {
  model_.init(seed, [this](size_t unit, const float* full) { shards_.set(unit, full); });
}

// Each unit's weights are acquired right before use with the next one's gather already posted
// (no-ops unless zero3 or yafsdp); after the last block, the head's.
void Stepper::forward(const int32_t* tokens) {
  const int B = t_.micro_batch, T = t_.seq_len, L = model_.config().n_layer;
  const size_t emb = model_.embedding_unit(), head = model_.head_unit();
  shards_.acquire(emb);
  if (L > 0) on_block(0, &Shards::prefetch);
  else shards_.prefetch(head);
  model_.embed_forward(tokens, B, T);
  shards_.release(emb);
  for (int l = 0; l < L; l++) {
    on_block(l, &Shards::acquire);
    if (l + 1 < L) on_block(l + 1, &Shards::prefetch);
    else shards_.prefetch(head);
    model_.block_forward(l, B, T);
    on_block(l, &Shards::release);
  }
  shards_.acquire(head);
}

void Stepper::on_block(int l, void (Shards::*op)(size_t)) {
  (shards_.*op)(model_.block_index(l));
  if (const size_t a = model_.adapter_unit(l); a != Model::npos) (shards_.*op)(a);
}

float Stepper::loss(const int32_t* tokens, const int32_t* targets) {
  forward(tokens);
  float loss = model_.head(targets, t_.micro_batch, t_.seq_len, 0.0f);
  shards_.release(model_.head_unit());
  return loss;
}

float Stepper::forward_backward(const NextBatch& next) {
  const int B = t_.micro_batch, T = t_.seq_len, L = model_.config().n_layer;
  const int64_t micro_tokens = int64_t(B) * T;
  // Every micro-batch first: the targets counted (-1: a prompt token of instruction data, not
  // trained on) over all of them and every rank give the mean the gradient is of. Each counted
  // target's loss enters the gradient with weight 1/counted, so micro-batches count by their
  // targets and the gradient is that of the mean over the global batch.
  std::vector<int64_t> counted(size_t(accum_), 0);
  for (int k = 0; k < accum_; k++) {
    int32_t* tg = targets_.data() + k * micro_tokens;
    next(inputs_.data() + k * micro_tokens, tg);
    counted[size_t(k)] = std::count_if(tg, tg + micro_tokens, [](int32_t t) { return t >= 0; });
  }
  float count_buf[1] = {float(std::accumulate(counted.begin(), counted.end(), int64_t(0)))};
  if (comm_.size() > 1) comm_.all_reduce(count_buf, 1, ReduceOp::sum)->wait();
  counted_ = int64_t(count_buf[0]);
  const double global_tokens = std::max(1.0, double(count_buf[0]));
  const float grad_scale = float(scaler_.scale / global_tokens);
  shards_.zero_grads();
  double loss_sum = 0.0, wait = 0.0;
  const size_t emb = model_.embedding_unit(), head = model_.head_unit(), final_unit = model_.final_unit();
  for (int k = 0; k < accum_; k++) {
    const bool last = k == accum_ - 1;
    const int32_t* in = inputs_.data() + k * micro_tokens;
    // LoRA's dropout masks: a function of the seed, the micro-batch and the rank (resume draws the same)
    model_.set_dropout(true, (uint64_t(t_.seed) * 0x9e3779b97f4a7c15ULL) ^ (uint64_t(updates_) * accum_ + k) ^
                                 (uint64_t(comm_.rank()) << 48));
    comm_.mark("forward", -1);
    forward(in);
    comm_.mark("head", -1);
    shards_.grads_begin(head);
    shards_.grads_begin(final_unit);
    if (L > 0) on_block(L - 1, &Shards::prefetch);  // the last block, for its backward
    loss_sum += double(model_.head(targets_.data() + k * micro_tokens, B, T, grad_scale)) * double(counted[size_t(k)]);
    shards_.release(head);
    shards_.grads_end(final_unit, last);
    if (head != emb) shards_.grads_end(head, last);
    // Each unit's gradients leave as soon as its backward is done, while backward goes on.
    for (int l = L - 1; l >= 0; l--) {
      const size_t u = model_.block_index(l), adapter = model_.adapter_unit(l);
      on_block(l, &Shards::acquire);
      if (l > 0) on_block(l - 1, &Shards::prefetch);
      shards_.grads_begin(u);
      if (adapter != Model::npos) shards_.grads_begin(adapter);
      // full recompute: re-run the block's forward from its kept input, then its backward
      if (model_.recompute(l) == Recompute::full) model_.block_forward(l, B, T, true);
      comm_.mark("backward begin", l);
      model_.block_backward(l, B, T);
      comm_.mark("backward end", l);
      shards_.grads_end(u, last);
      if (adapter != Model::npos) shards_.grads_end(adapter, last);
      on_block(l, &Shards::release);
    }
    if (head != emb) shards_.grads_begin(emb);
    model_.embed_backward(in, B, T);
    comm_.mark("embed backward end", -1);
    shards_.grads_end(emb, last);
    // zero3 frees its gradient buffers before the next micro-batch (their peak stays that of
    // one backward); zero2 and yafsdp keep theirs and fold them on reuse
    if (!last && shards_.policy().shard_grads && !shards_.policy().persistent) wait += shards_.finish();
  }
  model_.set_dropout(false);
  comm_wait_s_ = wait + shards_.finish();
  comm_.mark("finished", -1);
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
  st.targets = counted_;
  if (st.targets == 0) return st;
  // One pass gives the norm and the overflow check: a non-finite sum means inf/NaN somewhere.
  double sq = shards_.grad_sum_squares();
  bool overflow = !std::isfinite(sq);
  scaler_.update(overflow);
  if (overflow) {
    st.skipped = true;
    st.grad_norm = INFINITY;
    return st;  // weights and optimizer state untouched
  }
  st.grad_norm = std::sqrt(sq) / st.loss_scale;
  // Unscale and clip inside AdamW's pass (clipping as torch.nn.utils.clip_grad_norm_: by
  // clip / (norm + 1e-6) when that is below 1).
  double coef = 1.0 / st.loss_scale;
  if (t_.grad_clip > 0.0) coef *= std::min(1.0, t_.grad_clip / (st.grad_norm + 1e-6));
  comm_.mark("optimizer", -1);
  opt_.update(model_, be_, t_, st.lr, ++updates_, float(coef));
  comm_.mark("after update", -1);
  shards_.after_update();
  comm_.mark("updated", -1);
  return st;
}

}  // namespace frugal
