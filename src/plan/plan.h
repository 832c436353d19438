// plan: the memory / time / cost model shared by `frugal plan`, `frugal train`'s prediction and
// `frugal report`: the device catalogue, per-strategy model-state bytes, step time from FLOPs at
// an MFU plus exposed communication, the search over settings, MFU calibration from a run.
//
// Letters: Ψ parameters, N devices (ranks), B micro-batch, T sequence length, e bytes per
// compute element.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/io.h"
#include "dist/comm.h"
#include "model/model.h"

namespace frugal {

// ---- the device catalogue (configs/devices.toml) --------------------------------------------
struct Device {
  std::string name, description;
  double peak_flops = 0, peak_flops_bf16 = 0;  // dense FLOP/s
  int64_t memory = 0, reserved = 0;            // bytes; usable = memory - reserved
  double link_bandwidth = 0;                   // bytes/s per device and direction, in a node
  int node_size = 1;                           // devices per node
  double network_bandwidth = 0;                // bytes/s per device and direction, across nodes
  double price = 0;                            // USD per device-hour (0: unknown)
  double mfu = 0.4;                            // assumed when none is given
  double mfu_bf16 = 0;                         // in bf16, where it differs (0: mfu)
  bool gpu = true;                             // backend = "cuda" (else "cpu")
  double peak_for(DType d) const { return d == DType::bf16 ? peak_flops_bf16 : peak_flops; }
  double mfu_for(DType d) const { return d == DType::bf16 && mfu_bf16 > 0 ? mfu_bf16 : mfu; }
  int64_t usable() const { return memory - reserved; }
};

// $FRUGAL_DEVICES, else the source tree's configs/devices.toml.
std::string default_devices_path();
// Every entry, sorted by name; a malformed file or entry is a UserError naming file and field.
std::vector<Device> load_devices(const std::string& path);
// UserError listing the known names when `name` is not one.
const Device& find_device(const std::vector<Device>& devices, const std::string& name,
                          const std::string& path);
// This CPU's catalogue entry, by where the CPU backend's bf16 products run (cpu_bf16_isa()).
std::string cpu_device_name();
// Fills in what [device] leaves out: the name (this CPU's entry; the CUDA backend needs one
// given) and the entry's peaks. `source`: the config, for messages.
void resolve_device(DeviceSettings& d, const std::string& source, const std::string& devices_path);

// ---- model states per strategy --------------------------------------------------------------
// Bytes per parameter of each model state. frugal: fp32 masters (4), a 16-bit compute copy (2,
// none in fp32), fp32 gradients (4), AdamW m and v (8). The ZeRO paper's accounting is
// {2, 0, 2, 12} (fp16 parameters and gradients; fp32 masters inside the optimizer's K = 12).
struct StateLayout {
  double master = 4, copy = 2, grad = 4, optimizer = 8;
  static StateLayout frugal(DType compute) { return {4, compute == DType::f32 ? 0.0 : 2.0, 4, 8}; }
};

// Per-rank bytes of the model states of `units` by MemoryPool category, in the textbook ZeRO
// accounting (each unit's flat buffer sharded evenly: ceil(numel / N) per rank): ddp all full;
// zero1 optimizer / N; zero2 grads / N too; zero3 and yafsdp masters / N too. With
// StateLayout{2, 0, 2, 12} it gives the ZeRO paper's figures; what frugal itself allocates, slices
// and buffers included, is estimate_memory() (docs/memory.md), which plan_memory uses.
struct ModelStates { double params = 0, grads = 0, optimizer = 0; };
ModelStates model_states(const std::vector<int64_t>& unit_numels, const StateLayout& layout,
                         Strategy s, int ranks);
// The flat-buffer sizes of a model's units: embedding, each block, final LayerNorm.
std::vector<int64_t> unit_numels(const ModelConfig& cfg);

// Per-rank bytes by category for training cfg with micro-batches (B, T).
MemoryEstimate plan_memory(const ModelConfig& cfg, int B, int T, DType compute,
                           const RecomputePolicy& recompute, Strategy s, int ranks,
                           DType reduce = DType::f32, bool gpu = false);

// ---- time and cost --------------------------------------------------------------------------
struct PlanSettings {
  ModelConfig model;
  Device device;
  Strategy strategy = Strategy::ddp;
  DType compute = DType::bf16, reduce = DType::f32;
  RecomputePolicy recompute;
  int micro_batch = 1, seq_len = 1024, devices = 1;
  int64_t batch_tokens = 0;  // global batch per optimizer step (0: one micro-batch per device)
  double tokens = 0;         // the training budget
  double mfu = 0.4;          // of the hardware FLOPs (recompute included) at the device's peak
  double max_hours = 0;      // search: configurations that take longer lose (0: no limit)
  // data.document_mask: the keys a token attends to on average, sum n^2 / T over a window's
  // documents of n (attention_span); 0: seq_len, each window one document
  double attention_span = 0;
  double span() const { return attention_span > 0 ? attention_span : seq_len; }
  std::string describe() const;  // "8 x a100-80gb, zero1, bf16, recompute none, micro-batch 4"
};

// PlanSettings::attention_span of documents of `doc_tokens` tokens each (the separator included),
// one after another in windows of seq_len: the mean over a window starting at each position of a
// document (`plan --doc-tokens`, where there is no data to sample).
double document_span(int64_t doc_tokens, int seq_len);

struct Plan {
  PlanSettings s;
  MemoryEstimate memory;        // per device
  bool fits = false;
  bool valid = true;            // the global batch divides into micro-batches on every device
  int accum = 1;                // micro-batches per step on each device
  int64_t step_tokens = 0;
  double model_flops_per_token = 0;  // 6N + 12·L·S·C (S: s.span())
  double flops_per_token = 0;        // + the forward of fully recomputed blocks
  double compute_s = 0;              // per step
  double comm_bytes = 0, bandwidth = 0, comm_s = 0, exposed_comm_s = 0;
  double step_s = 0, tokens_per_s = 0, total_s = 0, cost = 0;
  int64_t over() const { return int64_t(memory.total()) - s.device.usable(); }  // > 0: short by
  bool late() const { return s.max_hours > 0 && total_s > s.max_hours * 3600; }
  nlohmann::json to_json() const;
  std::string explain() const;  // settings, memory per category, step time, total time and cost
};

// What a plan reads of its model's parameter table, built once per model: search() makes tens of
// thousands of plans of one model, and building the table (names and all) for each took longer
// than the rest of the plan (`plan --preset llama-2-70b`: 21 s).
struct ModelTable {
  std::vector<UnitSpec> units;
  int64_t trainable, no_wpe;  // num_trainable_params(), num_params_no_wpe()
  explicit ModelTable(const ModelConfig& c);
};

// Evaluates one configuration (t: s.model's table). A fully recomputed block adds its forward
// again: 24C² + 4TC FLOPs per token.
Plan make_plan(const PlanSettings& s, const ModelTable& t);
Plan make_plan(const PlanSettings& s);

// The prediction for a run as configured (device from the catalogue when it names the config's
// device, with the config's peaks), on `ranks` ranks; attention_span as PlanSettings'.
Plan plan_for_run(const RunConfig& cfg, int ranks, const RecomputePolicy& recompute,
                  const std::string& devices_path = default_devices_path(), double attention_span = 0);

// ---- search ---------------------------------------------------------------------------------
// Which settings are open: an unset optional leaves that dimension to the search.
struct PlanQuery {
  PlanSettings base;  // model, tokens, mfu (<= 0: each device's own), seq_len, reduce, batch_tokens
  std::vector<Device> devices;
  std::vector<Strategy> strategies;
  std::vector<DType> precisions;
  std::vector<RecomputePolicy> recomputes;
  std::vector<int> micro_batches, device_counts;
};
// Every setting open: ddp..zero3, fp32 and bf16, recompute none/selective/every:2/full,
// micro-batches 1..64 and 1..1024 devices (powers of two), on `devices`.
PlanQuery open_query(const PlanSettings& base, const std::vector<Device>& devices);
// Every combination, ranked: fitting ones in time first by cost, then step time, then the
// simpler setting; then those that fit but take too long, by time; the rest by how far over
// memory they are.
std::vector<Plan> search(const PlanQuery& q);
// Why `loser` ranks below `best` (e.g. "does not fit: 3.2 GiB over", "costs $12.00 more (+8%)").
std::string lost_because(const Plan& loser, const Plan& best);

// ---- calibration ----------------------------------------------------------------------------
struct Calibration {
  std::string run_dir, device, precision;
  int ranks = 1, steps = 0;
  double tokens_per_s = 0;   // median over the steps after the first
  double step_s = 0;         // median
  double peak = 0, mfu = 0;
  nlohmann::json to_json() const;
};
// A run's metrics.jsonl, one parsed record per line (line numbers from 1; a line that is not JSON
// is a discarded value, for the caller to name). A last line cut short (no newline: the run
// stopped while writing it) is skipped with a warning, not an error. A record's ranks other than an
// integer from 1 to 2^20, or attention_span other than a number > 0, is a UserError naming the line.
std::vector<std::pair<int, nlohmann::json>> read_metrics(const std::string& run_dir);
// Reads RUN_DIR/config.toml and metrics.jsonl; UserError naming the file when either is missing
// or malformed.
Calibration calibrate(const std::string& run_dir, const std::string& devices_path = default_devices_path());
// --mfu: a number, or a calibration.json written by `frugal plan --calibrate`.
double parse_mfu(const std::string& text);

// ---- formatting -----------------------------------------------------------------------------
std::string human_bytes(double b);
std::string human_time(double s);
std::string dollars(double usd);  // "$1234", "$12.34", "$0.0012"
double median(std::vector<double> v);  // 0 for none

// The per-category table of plan vs (optionally) measured peak bytes, and tokens/s, MFU, cost.
struct Measured { std::array<size_t, num_mem> peak{}; double tokens_per_s = 0, mfu = 0, seconds = 0; };
std::string compare_table(const Plan& p, const Measured* m);

// ---- report ---------------------------------------------------------------------------------
// Writes RUN_DIR/report.html (atomically): one self-contained page with inline SVG charts.
// Returns its path.
std::string write_report(const std::string& run_dir, const std::string& devices_path = default_devices_path());

}  // namespace frugal
