// train: one optimizer step (micro-batches, gradient accumulation weighted by token counts,
// global-norm clipping, LR schedule, AdamW with fp32 moments) and the Trainer loop around it
// (data, evaluation, metrics.jsonl, progress, the final model file).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "dist/comm.h"
#include "io/io.h"
#include "model/model.h"

namespace frugal {

class DataLoader;

// Linear warmup over warmup_steps, then cosine decay from lr to min_lr at the last step.
// `step` is 0-based.
double lr_at(const TrainSettings& t, int step);

// AdamW state: fp32 moments m and v for each of the segments this rank updates (category
// optimizer), weight decay on the specs that ask for it.
class AdamW {
 public:
  explicit AdamW(const Shards& shards);
  // grad_scale multiplies the gradients as they are read (loss unscaling and clipping).
  void update(Model& model, Backend& be, const TrainSettings& t, double lr, int step_1based, float grad_scale);
  // Moments of segment k of shards.segments()
  PoolArray<float>& m(size_t seg) { return m_[seg]; }
  PoolArray<float>& v(size_t seg) { return v_[seg]; }

 private:
  const Shards& shards_;
  std::vector<PoolArray<float>> m_, v_;
  std::vector<AdamWSpan> spans_;  // every step's, rebuilt in place
};

struct StepStats {
  float loss = 0;        // mean over the global batch's targets trained on
  // Targets trained on (a loss mask leaves out prompts). 0: the batch trains nothing, no loss and
  // no update (weights, AdamW state and loss scale untouched).
  int64_t targets = 0;
  double grad_norm = 0;  // before clipping (unscaled)
  double lr = 0;
  int64_t tokens = 0;
  double loss_scale = 1; // the scale this step ran with
  bool skipped = false;  // fp16: gradients overflowed, no update
  double comm_wait_s = 0;  // time backward's end waited for gradient reductions (not hidden)
};

// Dynamic loss scaling for fp16 (disabled otherwise: scale 1). The loss is multiplied by
// `scale` before backward; a step whose gradients are not finite is skipped and halves the
// scale; `window` clean steps in a row double it. Part of the training state.
struct LossScaler {
  bool enabled = false;
  double scale = 1.0, min_scale = 1.0;
  int window = 1000;
  int clean_steps = 0;        // since the last change of scale
  int64_t skipped_total = 0;
  int consecutive_skips = 0;
  explicit LossScaler(const PrecisionSettings& p);
  // Records one step's outcome; throws UserError when the scale would fall below its floor.
  void update(bool overflow);
};

// Fills inputs(B,T) and targets(B,T) with the next micro-batch.
using NextBatch = std::function<void(int32_t* inputs, int32_t* targets)>;

class Stepper {
 public:
  // plan: what each block keeps for backward (empty: everything). The model must have been
  // built with Own = model_owns(strategy).
  Stepper(Model& model, Backend& be, Comm& comm, const TrainSettings& t, int accum_steps,
          const PrecisionSettings& p = {}, const std::vector<Recompute>& plan = {},
          Strategy strategy = Strategy::ddp);
  const LossScaler& scaler() const { return scaler_; }
  const AdamW& optimizer() const { return opt_; }
  Shards& shards() { return shards_; }
  // The family's init of the model's weights, whichever strategy holds them.
  void init_weights(uint64_t seed);
  // The training state beyond the weights, for checkpoints.
  LossScaler& scaler() { return scaler_; }
  AdamW& optimizer() { return opt_; }
  int updates() const { return updates_; }
  void set_updates(int n) { updates_ = n; }
  // Zeroes the gradients and accumulates those of the mean loss over the global batch
  // (accum_steps micro-batches on every rank), times the loss scale; returns the mean loss.
  float forward_backward(const NextBatch& next);
  // forward_backward, global-norm clipping, LR schedule and AdamW; step is 0-based.
  StepStats step(int step, const NextBatch& next);
  // Mean loss of one micro-batch (B, T as configured), no gradients.
  float loss(const int32_t* tokens, const int32_t* targets);

 private:
  void forward(const int32_t* tokens);  // embedding and blocks; leaves the head acquired
  // A Shards operation on block l's units: the block and, under LoRA, its adapters.
  void on_block(int l, void (Shards::*op)(size_t));
  Model& model_;
  Backend& be_;
  Comm& comm_;
  TrainSettings t_;
  int accum_;
  Shards shards_;
  AdamW opt_;
  LossScaler scaler_;
  int updates_ = 0;  // optimizer updates taken (skipped steps do not count)
  std::vector<int32_t> inputs_, targets_;
  double comm_wait_s_ = 0;
  int64_t counted_ = 0;  // targets trained on in the last forward_backward, over every rank
};

// The recompute policy a run uses: memory.recompute, or with memory.budget the least recompute
// whose predicted peak per rank fits under the run's strategy on `world` ranks (UserError when
// none does, naming the smallest).
RecomputePolicy choose_recompute(const RunConfig& cfg, int world = 1);

// Mean loss over `batches` micro-batches of the loader (0, or more than it holds: one pass over every window),
// averaged over the ranks of comm (each reading its part of every batch) when given; `loss`
// computes one micro-batch's mean loss (Model::forward_loss, or Stepper::loss when sharded).
// NaN when the batches hold no target trained on (loss masks of 0: prompts only).
using LossFn = std::function<float(const int32_t* tokens, const int32_t* targets)>;
double evaluate(const LossFn& loss, class DataLoader& loader, int batches, Comm* comm = nullptr);
// The micro-batches evaluate() takes: `batches` (0: all), at most one pass over the split, so that
// no window counts twice.
int64_t eval_batch_count(const class DataLoader& loader, int batches);

// data.document_mask: the keys a token attends to on average (sum n^2 / T over each window's
// documents of n; what ModelConfig::flops_per_token counts) in the first `batches` micro-batches
// of the loader, documents cut at `cut`; the loader is then back at its first batch.
double attention_span(class DataLoader& loader, const struct DocumentCut& cut, int64_t batches);
// The same sum of n^2 for one micro-batch tokens(B,T).
double attended_pairs(const int32_t* tokens, int B, int T, const struct DocumentCut& cut);

// Runs a whole training as configured: prepares nothing, writes the run directory. resume:
// continue from the newest complete checkpoint in cfg.run.dir (the losses that follow equal
// the uninterrupted run's); otherwise a fresh start, which removes the directory's checkpoints.
void train(const RunConfig& cfg, Comm& comm, bool resume = false);

// ---- a run's weights -------------------------------------------------------------------------
// What a run directory (or checkpoint) keeps of the model: DIR/model.safetensors (Hugging Face
// layout, the step in its metadata), or under LoRA DIR/adapter/ (PEFT's format; the frozen base
// is train.init_from, or the seed's init when none). Returns the path written.
std::string save_run_weights(const std::string& dir, const RunConfig& cfg, Model& model, int step);
// The newest weights of a run directory (its final ones, or a newer checkpoint's while it
// trains) or of a checkpoint directory: the directory that holds them and its resolved config.
struct RunWeights {
  std::string dir;  // holds model.safetensors or adapter/
  RunConfig cfg;    // the run's (config.toml); cfg.model from the weights
  bool lora() const { return cfg.model.lora.on(); }
};
RunWeights find_run_weights(const std::string& run_or_ckpt);
// Loads them into a model made with w.cfg.model: the weights, or the base and the adapters.
void load_run_weights(const RunWeights& w, Model& model);

// ---- checkpoints (checkpoint.cpp) ----------------------------------------------------------
// RUN_DIR/ckpt-STEP/ holds model.safetensors (Hugging Face layout), config.toml (resolved),
// state.json (format version, step, optimizer updates, loss scaler, data position, the seed,
// which with the data position is the whole RNG state: every random draw of training follows
// from them) and rank-R.safetensors: for each range [lo, hi) of unit i's flat buffer that rank
// R's optimizer updates (Shards::segments), the master weights, m and v as "u{i}.params.{lo}",
// "u{i}.m.{lo}", "u{i}.v.{lo}", with the ranges ("lo-hi,...") and the unit's numel in the
// metadata. Under ddp rank 0 alone writes (whole units); under the sharded strategies every rank
// its slices, and rank 0 the replicated 1-D tails. A checkpoint is written into ckpt-STEP.tmp/, every file fsynced, then
// renamed: a ckpt-STEP directory is complete. Loading reads each rank's range from whichever
// rank files cover it, so any world size or strategy resumes any checkpoint.
inline constexpr int kCheckpointVersion = 1;

// Writes ckpt-STEP in cfg.run.dir (every rank calls it), then keeps the newest
// run.keep_checkpoints. Returns the seconds it took.
double save_checkpoint(const RunConfig& cfg, int step, Model& model, Stepper& st,
                       const DataLoader& data, Comm& comm);
// The newest complete checkpoint directory of run_dir; "" when there is none.
std::string latest_checkpoint(const std::string& run_dir);
// Checks that checkpoint `dir` resumes under cfg on `world` ranks (format version, model shape,
// every rank file present, the same global batch) and returns its step; UserError naming the
// file and what differs otherwise. Reads no tensors.
int check_checkpoint(const std::string& dir, const RunConfig& cfg, int world);
// Reads every tensor of the checkpoint's rank files against the checksum written with it (the
// metadata's "sum.NAME"); UserError naming the file and the tensor when one fails, or when a file
// or the state cannot be read.
void verify_checkpoint(const std::string& dir);
// Restores the weights, this rank's optimizer range, the update count, the loss scaler and the
// data position from checkpoint `dir` (checked by check_checkpoint).
void load_checkpoint(const std::string& dir, Model& model, Stepper& st, DataLoader& data);
// Removes the checkpoints of run_dir (complete and partial); returns how many were complete.
int remove_checkpoints(const std::string& run_dir);

}  // namespace frugal
