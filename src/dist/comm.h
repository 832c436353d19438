// dist: the Comm interface every data-parallel strategy is written against, and its
// single-process implementation (MPI on CPUs and NCCL on GPUs implement the same interface); the
// data-parallel strategies as one policy, with their memory formula beside the Shards that
// allocate what it counts (sharding.cpp).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"

namespace frugal {

enum class ReduceOp { sum, avg, max };

// A pending collective; wait() returns when its output is ready.
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
};

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place over buf(n).
  virtual std::unique_ptr<Work> all_reduce(float* buf, int64_t n, ReduceOp op) = 0;
  // A sum over buf(n) through bf16 (precision.reduce = "bf16"): each rank's values are rounded
  // to bf16 in scratch(n), summed pairwise in fp32 and rounded again, and written back as fp32.
  // Half the bytes of an fp32 all-reduce, for two casts (bench/reduce_bench.cpp).
  virtual std::unique_ptr<Work> all_reduce_bf16(float* buf, uint16_t* scratch, int64_t n) = 0;
  // in(size*n) -> out(n): this rank's slice of the reduction. `in` may be overwritten (MPI
  // runs it as an in-place all-reduce: OpenMPI's reduce-scatter is ~2x slower here, deps.md).
  virtual std::unique_ptr<Work> reduce_scatter(float* in, float* out, int64_t n, ReduceOp op) = 0;
  // in(n) -> out(size*n), rank r's part at r*n.
  virtual std::unique_ptr<Work> all_gather(const float* in, float* out, int64_t n) = 0;
  // In place over buf(total elements of elem_bytes = 4 or 2 each, any dtype: nothing is reduced): rank r
  // holds [r*slice, min(total, (r+1)*slice)) and receives the rest (a sharded flat buffer).
  virtual std::unique_ptr<Work> all_gather_inplace(void* buf, int64_t total, int64_t slice,
                                                   int elem_bytes = 4) = 0;
  virtual std::unique_ptr<Work> broadcast(float* buf, int64_t n, int root) = 0;
  virtual void barrier() = 0;
  // The training step now running (1-based), which a hung collective's message names.
  virtual void set_step(int step) {}
  // A point of the compute thread's work (e.g. "backward begin", unit u) for the trace that
  // MpiComm keeps when FRUGAL_COMM_TRACE is set; a no-op otherwise.
  virtual void mark(const char* what, int unit) {}
};

// A world of one process: every collective is a copy (or nothing) and completes at once.
std::unique_ptr<Comm> make_local_comm();

// MPI when the process was started by mpirun/srun (and frugal was built with MPI), else local.
// MPI's collectives run on a communication thread of their own: OpenMPI's non-blocking
// collectives do not progress in the background (shared/research/deps.md), blocking ones on
// a thread overlap with compute; that thread yields while it waits (OpenMPI's
// mpi_yield_when_idle, unless set otherwise) instead of spinning on its rank's compute core.
// gpu: the buffers are device buffers; under mpirun, NCCL (one GPU per rank, chosen by the
// node-local rank, which becomes the current device), MPI only to exchange NCCL's unique id.
// FRUGAL_COMM_TRACE=prefix (MPI): each rank writes prefix.<rank>.tsv at exit, one line per
// collective (name, bytes this rank sends into it, when posted, started and ended, and the
// communication thread's CPU time in it) and per mark(), times in ns of one steady clock.
// timeout_s (dist.timeout): no collective waits longer; past it every rank that can still
// speak names the collective, the step and the ranks that did not answer, and the job ends
// (MPI_Abort) instead of hanging.
std::unique_ptr<Comm> make_comm(bool gpu = false, double timeout_s = 600);
// NCCL over the ranks of `bootstrap` (which it keeps and uses once, to broadcast the id);
// built with FRUGAL_CUDA=ON and NCCL, else a UserError.
// timeout_s: as make_comm's, for the waits on NCCL's collectives.
std::unique_ptr<Comm> make_nccl_comm(std::unique_ptr<Comm> bootstrap, double timeout_s = 600);

// Ends every rank after a fatal error on this one (MPI_Abort under MPI, exit otherwise).
[[noreturn]] void abort_world(int code);

// How many ranks of this job share this host (the memory preflight's multiplier), from the
// launcher's environment, read in every build (local_comm.cpp): under mpirun
// OMPI_COMM_WORLD_LOCAL_SIZE; under srun this node's entry (SLURM_NODEID) of
// SLURM_STEP_TASKS_PER_NODE, else SLURM_TASKS_PER_NODE (Slurm's "2(x3),1": 2 tasks on each of
// nodes 0-2, 1 on node 3), else SLURM_NTASKS_PER_NODE; 1 without a launcher. A malformed value
// is a UserError naming the variable and the form expected.
int ranks_on_this_host();

// ---- data-parallel strategies (sharding.cpp) -----------------------------------------------
// dist.strategy. Every sharded one splits the 2-D weights of each unit into equal slices, one
// per rank (padded to divide evenly); the small 1-D tail (norms, biases, ~0.1 % of the
// parameters) stays replicated and is updated identically on every rank from all-reduced
// gradients, which is what gathering it once per step would give.
//  ddp    replicas; each unit's gradients all-reduced as soon as its backward is done (last
//         micro-batch only), overlapped with the rest of backward
//  zero1  + AdamW moments sharded; parameters all-gathered after the step
//  zero2  + gradients: each micro-batch's are reduce-scattered per unit out of a full buffer
//         (two for blocks, used alternately) into this rank's shard
//  zero3  + parameters: fp32 master shards; each block is gathered (compute dtype) before its
//         forward and again before its backward into a buffer allocated then and freed after
//         use, the next block's gather posted while the current one computes (alias fsdp)
//  yafsdp zero3 with every buffer allocated once: two block gather buffers and two block
//         gradient buffers used alternately, one of each for the embedding and an untied head
//         (under LoRA, two more gather buffers for the blocks' adapters)
// LoRA's frozen base has no gradients or optimizer state: ddp, zero1 and zero2 keep it whole on
// every rank, zero3 and yafsdp a slice of each unit, gathered as it is stored (compute dtype or
// quantized) before use.
enum class Strategy : uint8_t { ddp, zero1, zero2, zero3, yafsdp };
Strategy parse_strategy(const std::string& text, const std::string& where);  // "fsdp" is zero3
const char* strategy_name(Strategy s);

// A strategy as the switches Shards, the memory formula and the plan read.
struct StrategyPolicy {
  bool shard_optimizer = false;  // AdamW moments: this rank's slice of each unit (zero1+)
  bool shard_grads = false;      // gradients: reduce-scattered into a slice every micro-batch (zero2+)
  bool shard_params = false;     // fp32 masters: a slice; units gathered before use (zero3+)
  bool persistent = false;       // gather and gradient buffers allocated once, not per use (zero2, yafsdp)
  static StrategyPolicy of(Strategy s);
};

struct Sharding {
  Strategy strategy = Strategy::ddp;
  int ranks = 1;
  DType reduce = DType::f32;  // precision.reduce
};
// What Shards (and, for Own::all or Own::params, the model) allocates per rank for the model
// states under a strategy: params, grads, optimizer and comm bytes of rank 0 (the largest
// slices), for a model of this table computing in dt.
void strategy_memory(const std::vector<UnitSpec>& table, DType dt, Sharding sharding, MemoryEstimate& m);
// Per rank: model_memory (activations, workspace, runtime) + strategy_memory; exactly what the
// MemoryPool measures.
MemoryEstimate estimate_memory(const ModelConfig& cfg, int B, int T, DType dt, const std::vector<Recompute>& plan,
                               bool gpu = false, Sharding sharding = {});
// The same with cfg's param_table built once by the caller.
MemoryEstimate estimate_memory(const ModelConfig& cfg, const std::vector<UnitSpec>& table, int B, int T, DType dt,
                               const std::vector<Recompute>& plan, bool gpu, Sharding sharding);
Own model_owns(Strategy s);  // what the Model allocates itself under s

// Where each unit's parameters, gradients and optimizer state live on this rank under a
// strategy, and the collectives that move them (docs/memory.md, "Sharding").
class Shards {
 public:
  // reduce: the dtype gradients are summed in across ranks (fp32, or bf16 through a scratch)
  Shards(Model& model, Backend& be, Comm& comm, Strategy s, DType reduce = DType::f32);
  Strategy strategy() const { return s_; }
  const StrategyPolicy& policy() const { return pol_; }
  // Keeps this rank's part of unit u's full fp32 parameters (Model::init's sink; zero3/yafsdp);
  // a frozen unit's in the form it is stored (compute dtype or quantized).
  void set(size_t unit, const float* full);
  // Parameters of zero3/yafsdp (no-ops otherwise): post the gather of a unit; make its full
  // weights present and bound (waiting for the gather); done with it until the next acquire.
  void prefetch(size_t unit);
  void acquire(size_t unit);
  void release(size_t unit);
  // Gradients: zero every gradient of this rank; bind a unit's gradient views to a zeroed full
  // buffer before its backward (zero2+); post its reduction after (ddp/zero1: on the last
  // micro-batch only); wait for all and fold them into the shards, returning the seconds that
  // the waits for gathers and reductions took since the last finish().
  void zero_grads();
  void grads_begin(size_t unit);
  void grads_end(size_t unit, bool last_micro);
  double finish();
  double grad_sum_squares();  // of the whole gradient, across ranks
  // What this rank's optimizer updates: [begin, end) of a unit's flat layout, with pointers to
  // the fp32 weights and gradients of element `begin`.
  // copy: where the optimizer also writes the updated weights in the compute dtype (ddp: the
  // unit's compute copy, refreshed in the same pass), or null.
  struct Segment { size_t unit; int64_t begin, end; float* w; float* g; uint16_t* copy = nullptr; };
  const std::vector<Segment>& segments() const { return segs_; }
  // After the optimizer: zero1/zero2 all-gather the updated slices; zero3/yafsdp mark gathered
  // copies stale; compute copies are refreshed (ddp's by the optimizer itself).
  void after_update();
  // Compute copies refreshed, gathered copies marked stale (after weights were loaded).
  void refresh();
  // zero3/yafsdp: every trained unit's full fp32 parameters gathered into the model (for files),
  // with frozen: LoRA's frozen base's too (to load it); dematerialize() keeps this rank's part of
  // them (changed or not) and frees the rest.
  void materialize(bool frozen = false);
  void dematerialize();
  // The same for one unit (a frozen one too): loading holds one unit whole at a time, not the
  // model. Call refresh() when done.
  void materialize(size_t unit);
  void dematerialize(size_t unit);
  // Where this rank keeps unit i's fp32 master weights: whole (model-owned) or its slice and tail.
  struct Range { int64_t lo, hi; float* data; };
  std::vector<Range> master_ranges(size_t unit);

 private:
  struct Part {
    int64_t lo = 0, hi = 0, len = 0, tail = 0;  // this rank's slice of [0, n); 1-D tail size
    int64_t n = 0;                               // elements gathered: nbig, or a frozen unit's store in es-byte words
    int es = 0;                                  // bytes per gathered element (zero3+)
    PoolArray<float> w, wt, g, gt;               // shards of weights (zero3+) and grads (zero2+)
    PoolArray<std::byte> fs;                     // a frozen unit's slice of its store (zero3+)
  };
  struct Gather {
    PoolArray<std::byte> buf;      // (ranks * len) elements of the gather dtype
    PoolArray<uint16_t> copy;      // a tied head's compute copy of the embedding (16-bit compute)
    int unit = -1;                 // the unit gathered or in flight (-1: none)
    bool cast_done = false;
    std::unique_ptr<Work> work;
  };
  struct GradBuf {
    PoolArray<float> buf, out;     // (ranks * len + tail) full gradients, (len) reduced slice (or none)
    int unit = -1;                 // the unit whose reduction is pending
    std::unique_ptr<Work> rs, ar;
  };
  void alloc_gather(Gather& g, int64_t bytes, int64_t copy_elems);
  void keep_slice(size_t unit);  // a frozen unit's whole store -> this rank's slice; the store freed
  void alloc_grads(GradBuf& b, int64_t len, int64_t tail);
  void build_segments();
  Gather* gather_slot(size_t unit);
  DType gather_dtype(size_t unit) const;
  GradBuf& grad_slot(size_t unit);
  void fold(GradBuf& b);

  Model& model_;
  Backend& be_;
  Comm& comm_;
  Strategy s_;
  StrategyPolicy pol_;
  int64_t world_, rank_;
  std::vector<Part> parts_;
  std::vector<Gather> gathers_;
  std::vector<GradBuf> grad_bufs_;
  std::vector<std::unique_ptr<Work>> pending_;  // ddp/zero1 all-reduces
  std::vector<Segment> segs_;
  PoolArray<uint16_t> bf16_scratch_;            // precision.reduce = bf16, several ranks
  double wait_s_ = 0.0;
};

}  // namespace frugal
