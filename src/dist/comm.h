// dist: the Comm interface every data-parallel strategy is written against, and its
// single-process implementation. MPI (CPUs) and NCCL (GPUs) implement the same interface.
#pragma once
#include <cstdint>
#include <memory>

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

}  // namespace frugal
