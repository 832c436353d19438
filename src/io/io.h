// io: the run configuration (TOML + --section.key=value overrides, parsed once into typed
// structs), safetensors files, and TensorBoard event files.
#pragma once
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string_view>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "model/model.h"

namespace frugal {

struct TrainSettings {
  uint64_t seed = 1337;
  int steps = 600;
  int seq_len = 256;          // T
  int micro_batch = 8;        // B, sequences per micro-batch
  int64_t batch_tokens = 0;   // global batch in tokens; 0 means one micro-batch (B*T)
  double lr = 1e-3, min_lr = 1e-4;
  int warmup_steps = 50;
  double weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double grad_clip = 1.0;     // 0 disables clipping
  int eval_every = 100;       // steps; 0 only at the end
  int eval_batches = 16;      // micro-batches of validation per evaluation; 0 = the whole split
  int threads = 0;            // OpenMP threads; 0 = all cores
  std::string init_from;      // weights to start from (load_model: a file or a Hugging Face directory); "" = random init
  std::string lora_init_from; // LoRA adapters to start from (a PEFT directory: lora.init_from); "" = fresh ones
};

// Precision policy: master weights, gradients and optimizer state are always fp32.
struct PrecisionSettings {
  DType compute = DType::f32;        // GEMMs, compute copies of the weights, stored activations
  DType reduce = DType::f32;         // gradient reductions across ranks (fp32 | bf16)
  double loss_scale = 65536.0;       // fp16: initial dynamic loss scale
  int loss_scale_window = 1000;      // fp16: double the scale after this many clean steps
  double loss_scale_min = 1.0;       // fp16: the floor; overflowing there stops the run
};

// Activation memory: a recompute policy, or a budget from which the least recompute that fits
// is chosen (the budget, when set, decides).
struct MemorySettings {
  RecomputePolicy recompute;
  int64_t budget = 0;     // bytes; 0: no budget
  bool preflight = true;  // refuse, before step 1, a run whose predicted peak exceeds the host's memory
};

// "16GiB", "512 MiB", "8GB", "1e9" or a plain byte count -> bytes; UserError naming `where`.
int64_t parse_bytes(const std::string& text, const std::string& where);

struct DataSettings {
  std::string train = "data/kjv/train_*.bin";
  std::string val = "data/kjv/val_*.bin";
  // Each document attends only to itself, its positions from its start (Model::set_documents),
  // cut at each end of text of the shards' tokenizer: before it in text, after it in records,
  // which then lie whole in their windows (DataLoader::set_documents).
  bool document_mask = false;
};

// Data parallelism across ranks (mpirun): dist.strategy names a Strategy (model.h).
struct DistSettings {
  std::string strategy = "ddp";
  double timeout = 600;  // seconds a collective may wait before the job ends (PyTorch's default)
};

struct RunSettings {
  std::string dir = "runs/default";
  int log_every = 1;
  int checkpoint_every = 250;  // steps between checkpoints (and one at the end); 0 = none
  int keep_checkpoints = 3;    // the newest K are kept
  bool profile = false;        // time every op of the steps after the first: profile.json, the report
};

struct DeviceSettings {
  std::string backend = "cpu";     // cpu | cuda (built with FRUGAL_CUDA=ON)
  // The catalogue entry (configs/devices.toml) of the start-of-run prediction; "": on the CPU
  // backend, this CPU's kind (cpu-amx, cpu-avx512 or cpu-avx2, by the ISA its bf16 products use).
  std::string name;
  // The dense peaks MFU is measured against; 0: the entry's.
  double peak_flops = 0, peak_flops_bf16 = 0;
  // The peak MFU is measured against for a compute dtype (fp16 runs through fp32 on CPUs).
  double peak_for(DType d) const { return d == DType::bf16 ? peak_flops_bf16 : peak_flops; }
};

struct RunConfig {
  ModelConfig model;
  TrainSettings train;
  PrecisionSettings precision;
  MemorySettings memory;
  DistSettings dist;
  DataSettings data;
  RunSettings run;
  DeviceSettings device;
  std::string source = "defaults";  // the file the config came from, for messages
  int accum_steps(int world = 1) const;  // micro-batches per step on each of `world` ranks
  std::string to_toml() const;      // the resolved config, readable by load_config
};

// Loads `path` (empty: defaults only), then applies overrides "section.key=value" in order.
// Unknown sections/keys, wrong types and invalid values are UserErrors naming the file or flag.
RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides);
// Checks what depends on the number of ranks (the global batch must divide evenly).
void check_world(const RunConfig& c, int world);

// ---- TensorBoard ---------------------------------------------------------------------------
// An event file in dir (events.out.tfevents.TIME.HOST), which `tensorboard --logdir` reads:
// scalars per step, every record flushed; UserError naming the file when it cannot be written.
class TensorBoardWriter {
 public:
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  void scalars(int64_t step, const std::vector<std::pair<std::string, double>>& values);
  // A resumed run: tensorboard forgets what earlier files hold from `step` on.
  void restart(int64_t step);
  const std::string& path() const { return path_; }

 private:
  void record(const std::string& data);
  std::string path_;
  std::FILE* f_ = nullptr;
};

// ---- safetensors --------------------------------------------------------------------------
struct StTensor {
  std::string name;
  std::string dtype;             // "F32" or "I32"
  std::vector<int64_t> shape;
  const void* data;
  bool transposed = false;       // F32 2-D: data holds the [shape[1], shape[0]] matrix; its transpose is written
};
void save_safetensors(const std::string& path, const std::vector<StTensor>& tensors,
                      const std::map<std::string, std::string>& metadata);

// A safetensors file, mapped (or given as bytes). Opening checks the header against the file (see parse) and
// throws UserError naming the file for anything malformed.
class SafeTensors {
 public:
  explicit SafeTensors(const std::string& path);
  SafeTensors(std::string name, std::vector<char> bytes);  // a file's bytes; name for errors
  bool has(const std::string& name) const { return index_.count(name) > 0; }
  // Copies tensor `name` into out, checking dtype and shape; UserError naming file and tensor.
  void read(const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape,
            void* out) const;
  // Tensor `name` of this shape as fp32: F32 copied, BF16 and F16 widened exactly.
  void read_f32(const std::string& name, const std::vector<int64_t>& shape, float* out) const;
  std::vector<int64_t> shape(const std::string& name) const;
  // The data of F32 tensor `name`, which must hold numel elements (any shape); UserError otherwise.
  const float* f32(const std::string& name, int64_t numel) const;
  std::vector<std::string> names() const;  // the tensors, sorted
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  void parse();
  struct Entry { std::string dtype; std::vector<int64_t> shape; size_t begin, end; };
  std::string path_;
  std::shared_ptr<void> map_;  // the file, mapped read-only
  std::vector<char> owned_;    // or its bytes, given
  std::string_view bytes_;
  size_t data_start_ = 0;
  std::map<std::string, Entry> index_;
  std::map<std::string, std::string> metadata_;
};

// A safetensors metadata value (of the file at `path`, under `key`) as an integer of type I:
// UserError naming both where it is not one or is out of I's range.
template <class I>
I metadata_integer(const std::string& value, const std::string& key, const std::string& path) {
  I v{};
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (ec != std::errc() || end != value.data() + value.size())
    user_error("{}: metadata '{}' is '{}', expected an integer", path, key, value);
  return v;
}

// Model weights <-> safetensors in the Hugging Face layout of the family: GPT2LMHeadModel's or
// LlamaForCausalLM's names (ParamSpec::hf: q, k, v and gate, up are separate tensors there),
// GPT-2's Conv1D weights [in, out], vocabulary rows exactly vocab_size, a tied lm_head not
// stored. The metadata carries format "pt" and the model shape (n_layer, n_head, n_embd,
// vocab_size, context, and the llama family's keys) and, when step >= 0, the training step the weights are from (what
// export compares to pick a run's newest weights); read_model_config reads the shape back.
void save_model(const std::string& path, Model& model, int step = -1);
// The same into directory `dir` as save_pretrained writes it: model.safetensors, or, above
// max_shard_bytes, model-0000K-of-0000N.safetensors shards and model.safetensors.index.json
// (its weight_map and total_size). An earlier export's weight files in `dir` are removed first. Returns the
// number of weight files.
int save_model_dir(const std::string& dir, Model& model, int64_t max_shard_bytes);
ModelConfig read_model_config(const std::string& path);
// load_model reads a safetensors file or a Hugging Face model directory (model.safetensors, or
// model.safetensors.index.json and its shards), in F32, BF16 or F16 (widened to the fp32
// masters), with or without the "transformer." prefix (GPT2Model's names, as on the hub). Every
// tensor must find its place: a missing one, a shape mismatch, a tensor the model has no place
// for (an extra layer) and an lm_head.weight that differs from the tied wte are UserErrors naming
// the file, the tensor and what was expected; GPT-2's causal-mask buffers (attn.bias,
// attn.masked_bias) are skipped. A QLoRA base that transformers saved from bitsandbytes' 4-bit
// model (nf4 with double-quantized absmax: the codes beside .absmax, .nested_absmax, .quant_map,
// .nested_quant_map and .quant_state.bitsandbytes__nf4) goes into an nf4 base byte for byte, into
// any other dequantized; bitsandbytes' 8-bit and fp4 forms are refused by name. each(unit,
// false) before a unit's tensors are written, each(unit, true) after (zero3/yafsdp: the unit is
// made whole for them and sliced again after, one unit at a time).
void load_model(const std::string& path, Model& model,
                const std::function<void(size_t unit, bool done)>& each = {});
// LoRA adapters in PEFT's format, which peft.PeftModel.from_pretrained(base, dir) loads:
// dir/adapter_model.safetensors (F32 "base_model.model.<module>.lora_A.weight" (r, in) and
// ".lora_B.weight" (out, r)) and dir/adapter_config.json (peft_type LORA, r, lora_alpha,
// lora_dropout, target_modules, fan_in_fan_out for GPT-2's Conv1D, base_model_name_or_path), each
// written atomically; step >= 0 goes into the weights' metadata, as save_model's.
void save_adapters(const std::string& dir, Model& model, const std::string& base_name, int step = -1);
// The LoRA an adapter directory describes (its adapter_config.json), and its base's name;
// UserError naming the file and the field for a bad one or one frugal does not compute (DoRA,
// rsLoRA, trained biases, per-layer ranks, modules to save).
LoraConfig read_adapter_config(const std::string& dir, std::string* base_name = nullptr);
// Reads dir's adapter weights into the model's adapter units (PEFT's names, with or without the
// adapter name "default"): a missing tensor, one of another shape (an adapter for another base)
// and one the model has no place for are UserErrors naming the file and the tensor.
void load_adapters(const std::string& dir, Model& model);
// The config.json beside `weights` (in the directory it names, or next to the file); "" if none.
std::string hf_config_path(const std::string& weights);
// The model shape in the metadata of the safetensors file `weights` names (itself, or
// model.safetensors in the directory) where frugal wrote it; nullopt for any other file.
std::optional<ModelConfig> frugal_model_config(const std::string& weights);
// A transformers config.json as frugal's shape: GPT2Config (n_layer, n_head, n_embd, vocab_size,
// n_positions) or the llama family's LlamaConfig, Qwen2Config, MistralConfig (hidden_size,
// intermediate_size, num_*, rms_norm_eps, rope_theta, llama3 rope_scaling, tie_word_embeddings,
// attention_bias). UserError naming the file and the field for a missing or bad one, another
// model_type, or a setting frugal does not compute (GPT-2: an untied head, another activation,
// n_inner or layer_norm_epsilon; llama: sliding windows, experts, another activation or head_dim,
// MLP biases, another rope_scaling).
ModelConfig read_hf_config(const std::string& path);
// The --model.KEY=VALUE overrides that give a run this model's shape (every model key).
std::vector<std::string> model_overrides(const ModelConfig& m);
// The ids generation starts and stops at (config.json's bos_token_id and eos_token_id): none
// (null), one, or several (an instruction template's end of turn beside end of text).
struct SpecialIds {
  std::vector<int64_t> bos, eos;
};
// transformers' config.json for a GPT2LMHeadModel or LlamaForCausalLM of this shape (atomically);
// MistralForCausalLM for a sliding window, or with `mistral` (a Mistral model's tokenizer, which
// transformers 5 reads by the model type) where the shape allows it (no q/k/v biases).
void save_hf_config(const std::string& path, const ModelConfig& c, const SpecialIds& ids, bool mistral = false);

}  // namespace frugal
