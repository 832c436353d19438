// model: the model families (GPT-2, Llama) behind one interface: a configuration with presets,
// the parameter table, and the model with explicit forward/backward per stage (embedding, each
// block, head). The trainer sequences the stages, so precision, recompute and sharding can be
// applied at block boundaries from outside.
//
// Shapes: B batch, T time, C = n_embd, NH = n_head query heads, NKV = key/value heads, HS = C/NH,
// W = (NH + 2 NKV) HS the width of q|k|v, F the MLP's hidden width, L = n_layer, V = vocab_size,
// Vp = V padded to a multiple of 128, maxT = context.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/core.h"
#include "core/dtype.h"

namespace frugal {

// A family is what its blocks compute; everything else about a model is its table.
//  gpt2   LayerNorm (with biases), learned positions, MLP fc(4C) -> GELU -> proj, biases on every
//         linear layer, the output head tied to the token embedding
//  llama  RMSNorm, rotary positions (rope_theta, optionally llama3's scaling), grouped-query
//         attention, SwiGLU MLP down(silu(gate(x)) * up(x)), no biases (q/k/v biases with
//         attention_bias: Qwen2), tied or untied output head
enum class Family : uint8_t { gpt2, llama };
const char* family_name(Family f);

// Llama 3.1's rope_scaling (rope_type "llama3"); factor 0: none.
struct RopeScaling {
  double factor = 0, low_freq_factor = 1, high_freq_factor = 4;
  int original_context = 8192;
};

// LoRA (Hu et al. 2021, as PEFT computes it): on each targeted linear layer of every block,
// y = x W^T + (alpha / rank) (x A^T) B^T with A (rank, in) and B (out, rank) trained; every
// weight of the base model is frozen. The targets are transformers' module names: llama's
// q_proj k_proj v_proj o_proj gate_proj up_proj down_proj, gpt2's c_attn c_proj (the attention's
// and the MLP's, as PEFT matches them) c_fc; none given: PEFT's default for the family (llama
// q_proj v_proj, gpt2 c_attn). The frozen base is kept in the compute dtype, or quantized (nf4:
// QLoRA's 4-bit NormalFloat with double-quantized absmax; int8), then only its blocks' linear
// weights.
enum class BaseFormat : uint8_t { compute, nf4, int8 };
const char* base_format_name(BaseFormat b);
struct LoraConfig {
  int rank = 0;  // 0: no adapters, every parameter trained
  double alpha = 16, dropout = 0;
  std::vector<std::string> targets;
  BaseFormat base = BaseFormat::compute;
  bool on() const { return rank > 0; }
  float scale() const { return float(alpha / rank); }
};

struct ModelConfig {
  std::string preset = "custom";
  int n_layer = 0, n_head = 0, n_embd = 0;
  int vocab_size = 0;  // V
  int context = 0;     // maxT: the positions learned (gpt2) or the longest sequence (llama)
  Family family = Family::gpt2;
  int n_kv_head = 0;        // NKV (0: n_head); llama only
  int ffn_hidden = 0;       // F (0: 4 n_embd, gpt2's)
  bool attention_bias = false;  // llama: biases on q, k, v (Qwen2)
  bool tied_head = true;    // the output head reads the token embedding
  double norm_eps = 1e-5;
  double rope_theta = 10000;
  RopeScaling rope_scaling;
  // llama: Mistral's sliding window (0: none): a token attends to the last sliding_window keys.
  // Runs take train.seq_len <= it, where it cuts nothing: attention over the whole sequence is
  // the same function, and export names it again (MistralForCausalLM).
  int sliding_window = 0;
  LoraConfig lora;
  // What the family's blocks compute: the switches of Model's one block code.
  bool rms_norm() const { return family == Family::llama; }   // RMSNorm (else LayerNorm with bias)
  bool rotary() const { return family == Family::llama; }     // rotary positions (else a learned table)
  bool gated_mlp() const { return family == Family::llama; }  // SwiGLU on gate|up (else GELU)
  int kv_heads() const { return n_kv_head > 0 ? n_kv_head : n_head; }
  // The longest sequence a run takes: the context, or Mistral's sliding window below it
  int longest_sequence() const { return sliding_window > 0 ? std::min(context, sliding_window) : context; }
  int head_size() const { return n_embd / n_head; }
  int64_t qkv_width() const { return int64_t(n_head + 2 * kv_heads()) * head_size(); }  // W
  int64_t ffn() const { return ffn_hidden > 0 ? ffn_hidden : 4 * int64_t(n_embd); }      // F
  int64_t padded_vocab() const { return (int64_t(vocab_size) + 127) / 128 * 128; }
  // From param_table():
  int64_t num_params() const;            // all parameters, padding rows of the vocabulary included
  int64_t num_trainable_params() const;  // all but LoRA's frozen base
  int64_t num_params_no_wpe() const;     // N for the 6N FLOPs rule (V rows; no position table; no adapters)
  // training: 6N + 12 L S C, S the keys a token attends to on average (counted as PaLM counts
  // them: a window of T as T, so S = T where each row is one document, and sum n^2 / T over its
  // documents of n under data.document_mask); under LoRA 4N (no weight gradients of the base) +
  // the adapters' GEMMs + 12 L S C
  double flops_per_token(double S) const;
  double flops_per_token(double S, int64_t N) const;  // N: num_params_no_wpe(), where known
  void validate(const std::string& where) const;  // throws UserError naming `where`
};

// Known presets: tiny (tests), mini (the default model), gpt2, gpt2-medium, gpt2-large, gpt2-xl;
// llama-tiny (tests), smollm-135m, smollm-360m, tinyllama-1.1b, llama-3.2-1b, llama-2-7b, llama-2-13b,
// llama-3-8b, llama-2-70b. Throws UserError for an unknown name.
ModelConfig model_preset(const std::string& name, const std::string& where);
std::vector<std::string> preset_names();

// Views into one unit's flat buffer, by role; only the fields a unit has are set (a family
// without biases leaves the *_b null). The head unit's weight is its wte.
struct Tensors {
  float *wte = nullptr, *wpe = nullptr;      // (Vp,C) token embedding or output head, (maxT,C)
  float *ln1_w = nullptr, *ln1_b = nullptr;  // (C) the attention's norm
  float *qkv_w = nullptr, *qkv_b = nullptr;  // (W,C), (W): q, k, v stacked
  float *proj_w = nullptr, *proj_b = nullptr;  // (C,C), (C): attention output
  float *ln2_w = nullptr, *ln2_b = nullptr;  // (C) the MLP's norm
  float *fc_w = nullptr, *fc_b = nullptr;    // MLP in: gpt2 (F,C), (F); llama gate|up (2F,C)
  float *fcproj_w = nullptr, *fcproj_b = nullptr;  // MLP out (C,F), (C)
  float *lnf_w = nullptr, *lnf_b = nullptr;  // (C) the final norm
  // An adapter unit's LoRA matrices, one pair per site (a targeted part of a block's linear
  // layers, in the block table's order): A (r, in), B (rows, r)
  static constexpr int kMaxSites = 7;
  float* lora_a[kMaxSites] = {};
  float* lora_b[kMaxSites] = {};
};

enum class Init { normal, normal_residual, ones, zeros, kaiming_uniform };  // the last: U(+-1/sqrt(in)), LoRA's A

// A part of a parameter that transformers stores as a tensor of its own: `rows` rows of it, in
// order (Llama's q_proj, k_proj, v_proj make frugal's qkv; gate_proj, up_proj its fc).
struct HfPart {
  std::string name;
  int64_t rows;
};
// One row per parameter tensor: allocation, init, weight decay and file names iterate this.
struct ParamSpec {
  std::string name;              // e.g. "blocks.3.attn.qkv.weight"
  std::vector<int64_t> shape;    // weights [out, in]
  bool decay;                    // AdamW weight decay (2-D weights only)
  Init init;
  float* Tensors::*field;
  // transformers' names (GPT2LMHeadModel's "transformer.h.3.attn.c_attn.weight", LlamaForCausalLM's
  // "model.layers.3.self_attn.q_proj.weight", ...): one tensor, or rows stacked from several
  std::vector<HfPart> hf;
  bool hf_conv1d = false;        // stored [in, out] there (Conv1D): transposed in files
  int64_t offset = 0, numel = 0; // within the unit's flat buffer
  int site = -1;                 // an adapter's: its site (field unused), and whether B (else A)
  bool lora_b = false;
  bool vocab_rows() const { return site < 0 && field == &Tensors::wte; }  // rows past V are padding, not in files
};
// The view a spec binds in a unit's Tensors.
inline float*& view_of(Tensors& t, const ParamSpec& s) {
  return s.site >= 0 ? (s.lora_b ? t.lora_b : t.lora_a)[s.site] : t.*s.field;
}

// Where a LoRA adapter sits: rows [row0, row0 + rows) of a block's linear weight `weight` (in
// columns), the module transformers names `module` ("model.layers.3.self_attn.q_proj").
struct LoraSite {
  float* Tensors::*weight;
  int64_t row0, rows, in;
  std::string module;
};
// The sites of block l under cfg.lora (none without LoRA); UserError naming `where` for a target
// that is no module of the family.
std::vector<LoraSite> lora_sites(const ModelConfig& cfg, int l, const std::string& where = "lora.targets");
// Columns of the LoRA workspace per row of B·T: h, and a dh for each site of the layer with most.
int64_t lora_width(const ModelConfig& cfg);

// What a unit is: the token (and position) embedding, one transformer block, the final norm, or
// an output head with weights of its own (a tied head has none: it reads the embedding's wte).
// Under LoRA each block's adapters are a unit of their own (after every base unit).
enum class UnitKind : uint8_t { embedding, block, final, head, adapter };

// One unit of the parameter table, without storage: its rows and the layout of its flat buffer
// (the 2-D weights first, then the 1-D tail). Sizes, FLOPs, the memory estimate, sharding and
// files derive from this table, built once by param_table().
struct UnitSpec {
  UnitKind kind;
  int layer = -1;                        // blocks: 0..L-1
  std::string name;
  std::vector<ParamSpec> specs;
  int64_t numel = 0;
  int64_t nbig = 0;                      // [0, nbig): 2-D weights; [nbig, numel): the 1-D tail
  bool frozen = false;                   // LoRA's base: no master, gradient or optimizer state
  BaseFormat base = BaseFormat::compute; // a frozen block's 2-D weights: compute dtype, nf4 or int8
};
// The family's table: the embedding, n_layer blocks, the final norm, the head when untied; under
// LoRA these frozen, then an adapter unit per block.
std::vector<UnitSpec> param_table(const ModelConfig& cfg);
// ModelConfig's counts over a table already built: all but LoRA's frozen base; N of the 6N rule.
int64_t trainable_params(const std::vector<UnitSpec>& table);
int64_t params_no_wpe(const std::vector<UnitSpec>& table, int64_t vocab_size);
// Each family's (gpt2.cpp, llama.cpp), and the layout they share: a unit's 2-D weights first.
std::vector<UnitSpec> gpt2_table(const ModelConfig& cfg);
std::vector<UnitSpec> llama_table(const ModelConfig& cfg);
UnitSpec make_unit_spec(UnitKind kind, int layer, std::string name, std::vector<ParamSpec> specs);
// Rotary angles of positions 0..T-1: cos, sin (T, HS/2), Hugging Face's inv_freq with
// rope_theta and the llama3 scaling.
void rope_tables(const ModelConfig& cfg, int T, std::vector<float>& cos, std::vector<float>& sin);

// A frozen unit (LoRA's base) has no masters and no gradients: its 2-D weights are only their
// compute-dtype copy (in fp32: the fp32 weights) or quantized, its 1-D tail stays fp32.
//
// A unit is the embedding, one transformer block, or the final LayerNorm. Its parameters are one
// flat fp32 buffer (the master weights), the 2-D weights first and the small 1-D tail (norms,
// biases) after them; its gradients one flat fp32 buffer of the same layout; Tensors are views
// into them. With a 16-bit compute dtype the GEMMs read a compute copy of the parameters, cast
// from the masters once per step. The model owns these buffers, or (sharded data parallelism)
// a Shards object owns them and binds the views to what is present on the rank.
struct Unit : UnitSpec {
  PoolArray<float> params, grads;        // owned full buffers (empty when not owned)
  PoolArray<uint16_t> compute;           // owned (numel) bf16/fp16 copy; empty in fp32
  // A frozen unit (LoRA's base): `params` is its 1-D tail only, `store` its 2-D weights as stored
  // (frozen_store_bytes: the compute dtype, or quantized under lora.base nf4/int8); under zero3
  // and yafsdp dist's Shards keeps a slice of the store and gathers it before use.
  PoolArray<std::byte> store;
  std::vector<QuantStack> qv;            // per spec, into the store: a part per transformers tensor (1-D: none)
  const uint16_t* wc = nullptr;          // the compute copy the GEMMs read
  Tensors p, g;
  int64_t offset_of(float* Tensors::*field) const;
  // Views over full buffers in the unit's layout, given as the 2-D part and the tail; a null
  // `big` leaves the 2-D weights' fp32 views null (16-bit compute reads only wc for them).
  void bind_params(float* big, float* tail, const uint16_t* compute_copy);
  void bind_grads(float* big, float* tail);
  // A frozen unit's views: its 2-D weights in a store at `at` (null: none present), its tail in params.
  void bind_frozen(const std::byte* at, DType dt);
};

// Bytes a frozen unit takes (LoRA's base): its 2-D weights in the compute dtype, or for a block
// under lora.base nf4/int8 each quantized (core/quant.h, each part 64-byte aligned); its 1-D tail
// in fp32. Of these, the store's (the 2-D weights'), and the element size it is gathered in.
int64_t frozen_bytes(const UnitSpec& u, DType dt);
int64_t frozen_store_bytes(const UnitSpec& u, DType dt);
inline int frozen_elem_bytes(const UnitSpec& u, DType dt) { return u.base == BaseFormat::compute ? int(dtype_size(dt)) : 4; }

// Which of a unit's states the model allocates itself (the rest come from dist's Shards).
enum class Own : uint8_t { all, params, none };

// An activation buffer in the compute dtype (or fp32 where stated).
using Bytes = PoolArray<std::byte>;

// What a block keeps for its backward (activation checkpointing):
//  none      everything below;
//  selective the GEMM outputs (qkv, proj, fch) and the statistics; backward recomputes the
//            norm outputs, the MLP's activation (GELU, SwiGLU) and the attention forward (its
//            output; the attention probabilities are never kept in any mode) into workspace,
//            right before use;
//  full      only the block's input (the residual stream): the trainer re-runs the block's
//            forward, into a stash shared by all such blocks, right before its backward (not
//            for the last such block, whose stash is still intact); norms and activation as
//            under selective.
enum class Recompute : uint8_t { none, selective, full };

// A policy over the blocks: none | selective | full | every:k (full on every k-th block,
// counting from the first, selective on the others: between selective and full in memory
// and time).
struct RecomputePolicy {
  enum class Kind : uint8_t { none, selective, full, every } kind = Kind::none;
  int k = 0;  // for every:k
  std::vector<Recompute> per_block(int num_layers) const;
  std::string name() const;
  // Parses "none", "selective", "full" or "every:K"; UserError naming `where` otherwise.
  static RecomputePolicy parse(const std::string& text, const std::string& where);
};

// Views of one block's saved activations (dt: compute dtype). The model owns the storage:
// per block, or shared between blocks as the recompute plan says.
struct BlockActs {
  std::byte* ln1;                 // (B,T,C) dt
  float *ln1_mean, *ln1_rstd;     // (B,T); no mean under RMSNorm
  std::byte* qkv;                 // (B,T,W) dt, q and k rotated (llama)
  float* lse;                     // (B,NH,T) attention log-sum-exp
  std::byte* atty;                // (B,T,C) dt attention output
  std::byte* proj;                // (B,T,C) dt attention branch; x + proj is recomputed in fp32
  std::byte* ln2;                 // (B,T,C) dt
  float *ln2_mean, *ln2_rstd;     // (B,T)
  std::byte *fch, *fch_gelu;      // (B,T,Fin) dt MLP in (gpt2: F; llama: gate|up, 2F); (B,T,F) its activation
};

// The widths (elements per row of B·T) of a block's activations, which allocate() and
// estimate_memory() share: the stash per recompute mode and the workspace.
struct ActWidths {
  int64_t C, W, fin, F;  // residual, q|k|v, MLP in, MLP activation
  int64_t stats;         // fp32 statistics per norm: 2 (mean, rstd) or 1 (rstd)
  int64_t NH;            // attention log-sum-exps
  int64_t dbig() const { return std::max(F, W + C); }  // workspace: dqkv and a recomputed attention output, or the activation
  // bytes per row of a block's own stash (its input excluded), es bytes per element
  int64_t stash_bytes(Recompute r, int64_t es) const;
};
ActWidths act_widths(const ModelConfig& cfg);

// Bytes per category that a model allocates for micro-batches of (B, T) under a recompute
// plan: exactly what the MemoryPool will measure (docs/memory.md derives the formulas).
struct MemoryEstimate {
  std::array<size_t, num_mem> bytes{};
  size_t total() const;
};
// Rows of logits (in dt) per lm-head chunk, never the full (BT, Vp): at most 64 MiB of them on a
// CPU, in a power of two rows; 256 MiB on a GPU, where the head's GEMMs want many rows. Every
// chunk reads and writes all of dwte once (154 MiB in fp32 at gpt2's vocabulary): gpt2 bf16 at
// B=16, T=1024 takes 7 chunks on a GPU; at B=1 on a CPU, 2 of 512 rows.
int64_t lm_head_rows(int64_t BT, int64_t Vp, DType dt, bool gpu);
// What the model itself allocates for micro-batches of (B, T) under a recompute plan, on a GPU
// backend (its lm-head chunks and Mem::runtime) or the CPU's: activations, workspace and the
// runtime's scratch. The model states (params, grads, optimizer) and communication buffers are
// the data-parallel strategy's (dist's strategy_memory; estimate_memory there adds both).
// table: param_table(cfg).
MemoryEstimate model_memory(const ModelConfig& cfg, const std::vector<UnitSpec>& table, int B, int T, DType dt,
                            const std::vector<Recompute>& plan, bool gpu = false);

// The documents data.document_mask attends apart in a micro-batch tokens(B,T): (first position
// b T + t, length) of each, every row cut at each `sep`, before it or after it (Model::set_documents).
std::vector<std::pair<int64_t, int64_t>> document_pieces(const int32_t* tokens, int B, int T, int32_t sep, bool after);

class Model {
 public:
  // compute: the dtype of GEMMs, compute copies of the weights and stored activations; the
  // residual stream, LayerNorm statistics, the loss and all gradients stay fp32.
  Model(const ModelConfig& cfg, Backend& be, DType compute = DType::f32, Own own = Own::all);
  Backend& backend() const { return be_; }
  const ModelConfig& config() const { return cfg_; }
  DType compute_dtype() const { return dt_; }
  std::vector<Unit>& units() { return units_; }  // in table order
  // Where each kind of unit is in units(): the embedding, block l, the final norm, and the unit
  // whose weights the output head reads (the embedding when the head is tied).
  size_t embedding_unit() const { return embedding_; }
  size_t block_index(int l) const { return blocks_[size_t(l)]; }
  Unit& block_unit(int l) { return units_[block_index(l)]; }
  size_t final_unit() const { return final_; }
  size_t head_unit() const { return head_; }
  // Block l's adapter unit under LoRA; npos without.
  static constexpr size_t npos = size_t(-1);
  size_t adapter_unit(int l) const { return adapters_.empty() ? npos : adapters_[size_t(l)]; }

  // Init: 2-D weights N(0, 0.02) (gpt2's residual projections N(0, 0.02/sqrt(2L))), norm
  // weights 1, biases 0, padding rows of the vocabulary 0. Sequential in table order: the same weights for any thread count.
  // A unit whose parameters the model does not own is drawn into a temporary full buffer that
  // is handed to `sink` (which keeps this rank's part).
  void init(uint64_t seed, const std::function<void(size_t unit, const float* full)>& sink = {});
  void zero_grads();
  // Casts the master weights of every unit into its compute copy (no-op in fp32). Call after
  // anything writes the masters: init() and load_model() do, the optimizer step does.
  void sync_compute_weights();

  // Allocates the activations for micro-batches up to (B, T) under a recompute plan (one entry
  // per block; empty: none everywhere); allocates nothing afterwards.
  // head_rows: rows of logits per lm-head chunk (0: lm_head_rows for the backend).
  void allocate(int B, int T, const std::vector<Recompute>& plan = {}, int64_t head_rows = 0);
  Recompute recompute(int l) const { return plan_[l]; }
  int max_batch() const { return B_; }

  // The stages of one micro-batch, in order. tokens/targets are (B,T) with B, T up to the
  // allocated sizes. head() returns the mean loss over the B*T targets; with grad_scale != 0 it
  // also runs the head's backward, seeding d(loss_sum * grad_scale).
  void embed_forward(const int32_t* tokens, int B, int T);
  // recompute: re-run for backward (full recompute): fill the block's stash but skip the GELU
  // and its output (the fc projection and the residual add), which the next block already
  // consumed; nothing if the stash still holds this block.
  void block_forward(int l, int B, int T, bool recompute = false);
  float head(const int32_t* targets, int B, int T, float grad_scale);
  void block_backward(int l, int B, int T);
  void embed_backward(const int32_t* tokens, int B, int T);

  // LoRA's dropout on the adapters' inputs (lora.dropout > 0): on for training micro-batches, its
  // masks drawn from seed (the same in a recompute), off for evaluation and sampling.
  void set_dropout(bool on, uint64_t seed = 0) {
    dropout_on_ = on && cfg_.lora.dropout > 0;
    dropout_seed_ = seed;
  }

  // Document masking (data.document_mask): each row of a micro-batch is cut at every token `sep`
  // (-1: off), before it (text: prepare and llm.c put end of text before each document) or after
  // it (instruction records, which end in it; the loader untrains the target across the cut).
  // Each piece (a document, or the part of one in the window) attends only within itself, at
  // positions counted from its start, as if it were a row of its own. Sampling attends to its
  // whole context.
  void set_documents(int32_t sep, bool after = false) {
    doc_sep_ = sep;
    doc_after_ = after;
  }

  // Sampling with a key/value cache: start_cache(max_T) allocates every block's keys and values
  // for max_T positions (and the activations of a max_T prompt); prefill runs positions 0..T-1 and
  // keeps their keys and values; next runs one more position against them (O(T) per token, not
  // O(T^2)). Both give the last position's logits (V).
  void start_cache(int max_T);
  void prefill(const int32_t* tokens, int T, std::vector<float>& logits);
  void next(int32_t token, std::vector<float>& logits);
  int cached() const { return cache_len_; }
  int cache_capacity() const { return cache_max_; }

  // LoRA, fp32 with an fp32 base: adds (alpha/r) B A into every targeted rows of the frozen base
  // (PEFT's merge_and_unload); the adapters are left as they are. (QLoRA: copy a quantized
  // model's read_param values into an fp32 one first: what the quantized base computed with.)
  void merge_lora();

  // Whole forward + loss (no gradients); mean loss.
  float forward_loss(const int32_t* tokens, const int32_t* targets, int B, int T);
  // Logits (B,T,V) of tokens(B,T); with last_only, only those of position T-1: (B,V).
  void logits(const int32_t* tokens, int B, int T, bool last_only, std::vector<float>& out);

  // All parameter specs with a pointer to their data, in order (for files and tests); data is
  // null for a frozen unit's 2-D weights in 16-bit (write_param writes them).
  struct Named { const ParamSpec* spec; float* data; float* grad; size_t unit; };
  std::vector<Named> named_params();
  // Sets a parameter from host fp32 values (its numel): into its master, or a frozen unit's
  // compute copy. Call sync_compute_weights() after the masters are written.
  void write_param(const Named& n, const float* host);
  // A quantized weight's part (one transformers tensor) as it was quantized elsewhere
  // (bitsandbytes' file): its bytes and offset, unchanged.
  void write_quant(const Named& n, size_t part, const QuantTensor& t);
  // A parameter's values in fp32 into host (its numel): the master, or a frozen unit's compute
  // copy widened or its quantized parts dequantized.
  void read_param(const Named& n, float* host);

 private:
  void final_forward(int B, int T);
  // The family's norm: LayerNorm (mean, rstd, bias) or RMSNorm (rstd only).
  void norm_forward(void* out, float* mean, float* rstd, const float* x, const float* w, const float* b, int64_t N);
  void norm_backward(float* dx, float* dw, float* db, const void* dout, const float* x, const float* w,
                     const float* mean, const float* rstd, int64_t N);
  // Rotates q and k of qkv(B,T,W) by their positions (inverse: the backward's); no-op in gpt2.
  void rope(void* qkv, int B, int T, bool inverse);
  // Block l's attention, forward and backward, over the rows whole or document by document.
  void attention_forward(BlockActs& a, int B, int T);
  void attention_backward(BlockActs& a, void* dqkv, const void* dout, int B, int T);
  // f(first, B, T): the batch whole (first 0), or each document as a batch of one row (first: its
  // first position b T + t); `positional`: only where positions matter (else the batch whole).
  template <class F>
  void per_document(int B, int T, F&& f, bool positional = true) const {
    if (docs_.empty() || !positional) return f(int64_t(0), B, T);
    for (auto [first, n] : docs_) f(first, 1, int(n));
  }
  // Block l's linear layer `weight` (with its bias field), forward and input gradient: over the
  // compute-dtype weight (the backend's fused GELU forms where given), or a quantized base's.
  void linear(int l, float* Tensors::*weight, float* Tensors::*bias, void* out, const void* in, int64_t BT, int64_t IC,
              int64_t OC);
  void linear_backward(int l, float* Tensors::*weight, float* Tensors::*bias, void* dinp, const void* dout,
                       const void* inp, int64_t BT, int64_t IC, int64_t OC);
  // LoRA on the sites of block l's linear layer `weight`: forward adds the adapters' outputs into
  // y(BT, out) (dt), from its input x(BT, in); backward, before the layer's own (which may
  // overwrite x), accumulates dA, dB and keeps each site's dh, which backward_input then adds
  // into the layer's input gradient dx (after the layer's own backward wrote it).
  void lora_forward(int l, float* Tensors::*weight, const void* x, void* y, int64_t BT);
  void lora_backward(int l, float* Tensors::*weight, const void* x, const void* dy, int64_t BT);
  void lora_backward_input(int l, float* Tensors::*weight, void* dx, int64_t BT);
  bool has_lora(float* Tensors::*weight) const;  // whether adapters sit on this weight
  const void* lw(const Unit& u, const ParamSpec& s) const;  // an adapter matrix in the compute dtype
  // The compute-dtype view of a parameter of unit u (the master itself in fp32).
  const void* cw(const Unit& u, float* Tensors::*field) const;
  // dres_ in the compute dtype: in 16-bit, the copy every LayerNorm backward writes with it
  // (dres_copy()); in fp32 the same buffer.
  const void* dres_compute() const { return dt_ == DType::f32 ? static_cast<const void*>(dres_.data()) : dres_c_.data(); }
  void* dres_copy() const { return dt_ == DType::f32 ? nullptr : dres_c_.data(); }

  ModelConfig cfg_;
  Backend& be_;
  DType dt_;
  std::vector<Unit> units_;
  size_t embedding_ = 0, final_ = 0, head_ = 0;
  std::vector<size_t> blocks_, adapters_;
  std::vector<LoraSite> sites_;                // under LoRA: where each block's adapters sit
  Bytes lora_ws_;                              // workspace (B,T, 4 rank) dt: h, then up to 3 dh
  Bytes quant_ws_;                             // workspace: a quantized layer's dequantized panel (dt)
  Bytes dropout_ws_;                           // workspace (B,T, widest adapter input) dt: LoRA's dropped-out input
  bool dropout_on_ = false;
  uint64_t dropout_seed_ = 0;
  const void* lora_input(int l, size_t site, const void* x, int64_t BT);  // x, or x dropped out
  PoolArray<float> norm_sink_;                 // workspace (2C): a frozen norm's unused dw, db
  int B_ = 0, T_ = 0;
  int64_t head_rows_ = 0;                      // rows per lm-head chunk
  std::vector<Recompute> plan_;
  int stash_block_ = -1;                       // the full block whose forward the shared stash holds
  std::vector<Bytes> storage_;                 // every activation and workspace buffer
  std::vector<float*> res_;                    // L+1 x (B,T,C) fp32: input of block l is res_[l]
  std::vector<BlockActs> acts_;                // per block (views into storage_)
  Bytes lnf_;                                  // (B,T,C) dt
  PoolArray<float> lnf_mean_, lnf_rstd_, losses_;  // (B,T)
  Bytes logits_;                               // workspace (head_rows, Vp) dt, then dlogits
  Bytes head_wt_, head_w_;                     // workspace: the lm head's weight packed by the backend (head_pack)
  PoolArray<float> dres_;                      // workspace (B,T,C) fp32
  PoolArray<float> res_mid_;                   // workspace (B,T,C) fp32: x + attention branch
  Bytes dres_c_, dbig_, dsmall_;               // workspace (B,T,C) dt 16-bit only, (B,T,dbig) dt, (B,T,C) dt
  PoolArray<float> rope_cos_, rope_sin_;       // workspace (T, HS/2) each, llama
  std::vector<Bytes> kcache_, vcache_;         // sampling: per block (max_T, NKV HS) dt keys, values
  PoolArray<float> decode_scratch_;            // (NH, max_T) attention probabilities of one query
  int cache_len_ = 0, cache_max_ = 0;
  int decode_pos_ = -1;                        // >= 0: block_forward runs this one position against the cache
  int32_t doc_sep_ = -1;                       // set_documents
  bool doc_after_ = false;
  std::vector<std::pair<int64_t, int64_t>> docs_;  // this micro-batch's documents (first, length); empty: whole rows
  void last_logits(int64_t row, std::vector<float>& out);  // logits of lnf_ row `row`
};

}  // namespace frugal
