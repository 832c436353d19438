// model: GPT-2 configuration and presets, the parameter table, and the model with explicit
// forward/backward per stage (embedding, each block, head). The trainer sequences the stages,
// so precision, recompute and sharding can be applied at block boundaries from outside.
//
// Shapes: B batch, T time, C = n_embd, NH = n_head, HS = C/NH, L = n_layer, V = vocab_size,
// Vp = V padded to a multiple of 128, maxT = context.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/core.h"

namespace frugal {

struct GptConfig {
  std::string preset = "custom";
  int n_layer = 0, n_head = 0, n_embd = 0;
  int vocab_size = 0;  // V
  int context = 0;     // maxT, the number of learned positions
  int64_t padded_vocab() const { return (int64_t(vocab_size) + 127) / 128 * 128; }
  int64_t num_params() const;            // all parameters, padding rows of wte included
  int64_t num_params_no_wpe() const;     // N for the 6N FLOPs rule (tied wte counted once, V rows)
  double flops_per_token(int T) const;   // training: 6N + 12 L T C (attention as full T)
  void validate(const std::string& where) const;  // throws UserError naming `where`
};

// Known presets: tiny (tests), mini (the default model), gpt2, gpt2-medium, gpt2-large, gpt2-xl.
// Throws UserError for an unknown name.
GptConfig gpt_preset(const std::string& name, const std::string& where);
std::vector<std::string> gpt_preset_names();

// Views into one unit's flat buffer; only the fields of the unit's kind are set.
struct Tensors {
  float *wte = nullptr, *wpe = nullptr;                                     // (Vp,C), (maxT,C)
  float *ln1_w = nullptr, *ln1_b = nullptr;                                 // (C)
  float *qkv_w = nullptr, *qkv_b = nullptr;                                 // (3C,C), (3C)
  float *proj_w = nullptr, *proj_b = nullptr;                               // (C,C), (C)
  float *ln2_w = nullptr, *ln2_b = nullptr;                                 // (C)
  float *fc_w = nullptr, *fc_b = nullptr;                                   // (4C,C), (4C)
  float *fcproj_w = nullptr, *fcproj_b = nullptr;                           // (C,4C), (C)
  float *lnf_w = nullptr, *lnf_b = nullptr;                                 // (C)
};

enum class Init { normal, normal_residual, ones, zeros };

// One row per parameter tensor: allocation, init, weight decay and file names iterate this.
struct ParamSpec {
  std::string name;              // e.g. "h.3.attn.c_attn.weight"
  std::vector<int64_t> shape;
  bool decay;                    // AdamW weight decay (2-D weights only)
  Init init;
  float* Tensors::*field;
  int64_t offset = 0, numel = 0; // within the unit's flat buffer
};

// A unit is the embedding, one transformer block, or the final LayerNorm. Each owns one flat
// fp32 parameter buffer and one flat gradient buffer; Tensors are views into them.
struct Unit {
  std::string name;
  std::vector<ParamSpec> specs;
  int64_t numel = 0;
  PoolArray<float> params, grads;
  Tensors p, g;
};

// Saved activations of one block for backward (category activations).
struct BlockActs {
  PoolArray<float> ln1, ln1_mean, ln1_rstd;  // (B,T,C), (B,T), (B,T)
  PoolArray<float> qkv;                      // (B,T,3C)
  PoolArray<float> probs;                    // (B,NH,T,T)
  PoolArray<float> atty;                     // (B,T,C)
  PoolArray<float> res_mid;                  // (B,T,C) = x + attention branch
  PoolArray<float> ln2, ln2_mean, ln2_rstd;  // (B,T,C), (B,T), (B,T)
  PoolArray<float> fch, fch_gelu;            // (B,T,4C)
};

class Gpt {
 public:
  Gpt(const GptConfig& cfg, Backend& be);
  const GptConfig& config() const { return cfg_; }
  std::vector<Unit>& units() { return units_; }  // [embedding, block 0..L-1, final]
  Unit& block_unit(int l) { return units_[1 + l]; }

  // GPT-2 init: N(0, 0.02), residual projections N(0, 0.02/sqrt(2L)), LN weights 1, biases 0,
  // padding rows of wte 0. Sequential in table order: the same weights for any thread count.
  void init(uint64_t seed);
  void zero_grads();

  // Allocates the activations for micro-batches up to (B, T); allocates nothing afterwards.
  // head_rows: rows of logits per lm-head chunk (0: as many as fit in 32 MiB).
  void allocate(int B, int T, int64_t head_rows = 0);
  int max_batch() const { return B_; }

  // The stages of one micro-batch, in order. tokens/targets are (B,T) with B, T up to the
  // allocated sizes. head() returns the mean loss over the B*T targets; with grad_scale != 0 it
  // also runs the head's backward, seeding d(loss_sum * grad_scale).
  void embed_forward(const int32_t* tokens, int B, int T);
  void block_forward(int l, int B, int T);
  float head(const int32_t* targets, int B, int T, float grad_scale);
  void block_backward(int l, int B, int T);
  void embed_backward(const int32_t* tokens, int B, int T);

  // Whole forward + loss (no gradients); mean loss.
  float forward_loss(const int32_t* tokens, const int32_t* targets, int B, int T);
  // Logits (B,T,V) of tokens(B,T); with last_only, only those of position T-1: (B,V).
  void logits(const int32_t* tokens, int B, int T, bool last_only, std::vector<float>& out);

  // All parameter specs with a pointer to their data, in order (for files and tests).
  struct Named { const ParamSpec* spec; float* data; float* grad; };
  std::vector<Named> named_params();

 private:
  void final_forward(int B, int T);

  GptConfig cfg_;
  Backend& be_;
  std::vector<Unit> units_;
  int B_ = 0, T_ = 0;
  int64_t head_rows_ = 0;                      // rows per lm-head chunk
  std::vector<PoolArray<float>> res_;          // L+1 x (B,T,C): input of block l is res_[l]
  std::vector<BlockActs> acts_;
  PoolArray<float> lnf_, lnf_mean_, lnf_rstd_, losses_;  // (B,T,C), (B,T), (B,T), (B,T)
  PoolArray<float> logits_;                    // workspace (head_rows, Vp)
  PoolArray<float> dres_, dbig_, dsmall_;      // workspace (B,T,C), (B,T,4C), (B,T,C)
};

}  // namespace frugal
