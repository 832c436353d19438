// NcclComm: Comm over NCCL, one GPU per rank (the node-local rank's GPU becomes the current
// device). MPI (the bootstrap Comm) only broadcasts NCCL's unique id. Collectives run on a
// communication stream of their own, ordered after the work issued so far on the compute
// stream (the legacy default stream, which the CUDA backend uses) by an event, so they overlap
// the compute issued after them; a Work waits on the collective's completion event. Buffers
// in host memory (a loss, a config hash) go through a small device buffer and complete at once.
#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "backend/cuda/kernels.h"
#include "core/core.h"
#include "dist/comm.h"

namespace frugal {

namespace {

void nccl_check(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return;
  std::fprintf(stderr, "frugal: %s failed: %s\n", what, ncclGetErrorString(r));
  abort_world(3);
}

void cuda_ok(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  std::fprintf(stderr, "frugal: %s failed: %s\n", what, cudaGetErrorString(e));
  abort_world(3);
}

// Waits for an event of the communication stream, at most timeout_s: past it, a rank is not
// taking part (NCCL's collectives block until every rank does), and the job ends.
struct Watch {
  double timeout_s;
  int rank, size;
  const std::atomic<int>* step;
};
void await(cudaEvent_t e, const Watch& w) {
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    const cudaError_t r = cudaEventQuery(e);
    if (r == cudaSuccess) return;
    if (r != cudaErrorNotReady) cuda_ok(r, "cudaEventQuery");
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (waited > w.timeout_s) {
      std::fprintf(stderr, "frugal: rank %d of %d: an NCCL collective (step %d) has waited %.0f s, over dist.timeout = %g s: "
                   "a rank does not answer; ending the job\n", w.rank, w.size, w.step->load(), waited, w.timeout_s);
      abort_world(4);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

struct Pending final : Work {
  cudaEvent_t done = nullptr;
  Watch watch;
  ~Pending() override { cudaEventDestroy(done); }
  void wait() override { await(done, watch); }
};

struct Done final : Work {
  void wait() override {}
};

ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::sum ? ncclSum : op == ReduceOp::avg ? ncclAvg : ncclMax; }

bool on_host(const void* p) {
  cudaPointerAttributes a{};
  cuda_ok(cudaPointerGetAttributes(&a, p), "cudaPointerGetAttributes");
  return a.type == cudaMemoryTypeUnregistered || a.type == cudaMemoryTypeHost;
}

int local_rank(int rank) {
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "PMI_LOCAL_RANK"})
    if (const char* s = std::getenv(v)) return std::atoi(s);
  return rank;
}

class NcclComm final : public Comm {
 public:
  NcclComm(std::unique_ptr<Comm> boot, double timeout_s) : boot_(std::move(boot)), timeout_s_(timeout_s) {
    rank_ = boot_->rank();
    size_ = boot_->size();
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)
      user_error("device.backend = cuda: rank {} sees no CUDA device", rank_);
    cuda_ok(cudaSetDevice(local_rank(rank_) % devices), "cudaSetDevice");
    // NCCL's id (128 bytes) as 64 floats holding 16 bits each, exact through any transport
    ncclUniqueId id;
    float packed[sizeof(id.internal) / 2];
    if (rank_ == 0) {
      nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
      for (size_t i = 0; i < std::size(packed); i++) {
        uint16_t h;
        std::memcpy(&h, id.internal + 2 * i, 2);
        packed[i] = float(h);
      }
    }
    boot_->broadcast(packed, int64_t(std::size(packed)), 0)->wait();
    for (size_t i = 0; i < std::size(packed); i++) {
      uint16_t h = uint16_t(packed[i]);
      std::memcpy(id.internal + 2 * i, &h, 2);
    }
    nccl_check(ncclCommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank");
    cuda_ok(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    cuda_ok(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming), "cudaEventCreate");
    cuda_ok(cudaMalloc(&small_, kSmall * sizeof(float)), "cudaMalloc");
  }
  ~NcclComm() override {
    cudaStreamSynchronize(stream_);
    ncclCommDestroy(comm_);
    cudaFree(small_);
    cudaEventDestroy(ready_);
    cudaStreamDestroy(stream_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void set_step(int step) override { step_ = step; }

  std::unique_ptr<Work> all_reduce(float* buf, int64_t n, ReduceOp op) override {
    if (on_host(buf))
      return through_device(buf, n, [&](float* d) {
        nccl_check(ncclAllReduce(d, d, size_t(n), ncclFloat, nccl_op(op), comm_, stream_), "ncclAllReduce");
      });
    return post([&] {
      nccl_check(ncclAllReduce(buf, buf, size_t(n), ncclFloat, nccl_op(op), comm_, stream_), "ncclAllReduce");
    });
  }
  // Rounded to bf16 in scratch, summed by NCCL in bf16 (half the bytes), widened back: all on
  // the communication stream, so reductions that share the scratch run one after another.
  std::unique_ptr<Work> all_reduce_bf16(float* buf, uint16_t* scratch, int64_t n) override {
    return post([&] {
      launch_cast(scratch, buf, n, DType::bf16, stream_);
      cuda_ok(cudaGetLastError(), "launch_cast");
      nccl_check(ncclAllReduce(scratch, scratch, size_t(n), ncclBfloat16, ncclSum, comm_, stream_), "ncclAllReduce");
      launch_widen(buf, scratch, n, DType::bf16, stream_);
      cuda_ok(cudaGetLastError(), "launch_widen");
    });
  }
  std::unique_ptr<Work> reduce_scatter(float* in, float* out, int64_t n, ReduceOp op) override {
    return post([&] {
      nccl_check(ncclReduceScatter(in, out, size_t(n), ncclFloat, nccl_op(op), comm_, stream_), "ncclReduceScatter");
    });
  }
  std::unique_ptr<Work> all_gather(const float* in, float* out, int64_t n) override {
    return post([&] { nccl_check(ncclAllGather(in, out, size_t(n), ncclFloat, comm_, stream_), "ncclAllGather"); });
  }
  std::unique_ptr<Work> all_gather_inplace(void* buf, int64_t total, int64_t slice, int elem_bytes) override {
    // rank r's part [r*slice, min(total, (r+1)*slice)) broadcast from r as bytes, in one group
    char* bytes = static_cast<char*>(buf);
    return post([&] {
      nccl_check(ncclGroupStart(), "ncclGroupStart");
      for (int r = 0; r < size_; r++) {
        int64_t lo = std::min(total, r * slice), hi = std::min(total, lo + slice);
        if (hi > lo)
          nccl_check(ncclBroadcast(bytes + lo * elem_bytes, bytes + lo * elem_bytes, size_t(hi - lo) * elem_bytes,
                                   ncclUint8, r, comm_, stream_), "ncclBroadcast");
      }
      nccl_check(ncclGroupEnd(), "ncclGroupEnd");
    });
  }
  std::unique_ptr<Work> broadcast(float* buf, int64_t n, int root) override {
    if (on_host(buf))
      return through_device(buf, n, [&](float* d) {
        nccl_check(ncclBroadcast(d, d, size_t(n), ncclFloat, root, comm_, stream_), "ncclBroadcast");
      });
    return post([&] { nccl_check(ncclBroadcast(buf, buf, size_t(n), ncclFloat, root, comm_, stream_), "ncclBroadcast"); });
  }
  void barrier() override {
    float x[1] = {0.0f};
    all_reduce(x, 1, ReduceOp::sum)->wait();
  }

 private:
  static constexpr int64_t kSmall = 1024;  // floats: the largest host buffer a collective takes

  // Issues f on the communication stream after everything issued so far on the compute stream.
  template <class F>
  std::unique_ptr<Work> post(F&& f) {
    cuda_ok(cudaEventRecord(ready_, 0), "cudaEventRecord");
    cuda_ok(cudaStreamWaitEvent(stream_, ready_, 0), "cudaStreamWaitEvent");
    f();
    auto w = std::make_unique<Pending>();
    w->watch = {timeout_s_, rank_, size_, &step_};
    cuda_ok(cudaEventCreateWithFlags(&w->done, cudaEventDisableTiming), "cudaEventCreate");
    cuda_ok(cudaEventRecord(w->done, stream_), "cudaEventRecord");
    return w;
  }
  template <class F>
  std::unique_ptr<Work> through_device(float* host, int64_t n, F&& f) {
    FRUGAL_CHECK(n <= kSmall, "a collective over {} floats in host memory", n);
    cuda_ok(cudaMemcpyAsync(small_, host, size_t(n) * sizeof(float), cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
    f(small_);
    cuda_ok(cudaMemcpyAsync(host, small_, size_t(n) * sizeof(float), cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync");
    cuda_ok(cudaEventRecord(ready_, stream_), "cudaEventRecord");
    await(ready_, {timeout_s_, rank_, size_, &step_});
    return std::make_unique<Done>();
  }

  std::unique_ptr<Comm> boot_;
  double timeout_s_;
  std::atomic<int> step_{0};
  int rank_ = 0, size_ = 1;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;
  float* small_ = nullptr;
};

}  // namespace

std::unique_ptr<Comm> make_nccl_comm(std::unique_ptr<Comm> bootstrap, double timeout_s) {
  return std::make_unique<NcclComm>(std::move(bootstrap), timeout_s);
}

}  // namespace frugal
