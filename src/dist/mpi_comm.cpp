// MpiComm: Comm over MPI (OpenMPI), one rank per process. Collectives are queued to one
// communication thread that calls the blocking MPI collectives in order (MPI_THREAD_MULTIPLE),
// so that a gradient all-reduce overlaps the rest of backward.
#include <mpi.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "core/core.h"
#include "core/dtype.h"
#include "dist/comm.h"

namespace frugal {

namespace {

void mpi_check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::fprintf(stderr, "frugal: rank %d: %s failed: %s\n", rank, what, msg);
  MPI_Abort(MPI_COMM_WORLD, 3);
}

// MPI_Op: inout[i] = bf16(float(in[i]) + float(inout[i])), round to nearest even.
void sum_bf16(void* in, void* inout, int* len, MPI_Datatype*) {
  auto* a = static_cast<const bf16*>(in);
  auto* b = static_cast<bf16*>(inout);
  for (int i = 0; i < *len; i++) b[i] = from_f32<bf16>(to_f32(a[i]) + to_f32(b[i]));
}

struct Pending final : Work {
  std::future<void> done;
  void wait() override { done.get(); }
};

class MpiComm final : public Comm {
 public:
  MpiComm() {
    // A collective's wait spins in OpenMPI's progress loop on the communication thread, taking
    // the core from the rank's compute thread: yield instead (unless the user chose). Measured
    // on 2 cores, 2 ranks: the tiny model's sharded strategies went from 0.46-0.85x of the
    // single process to 0.91-1.03x (bench/RESULTS.md); with a core to spare it costs nothing.
    setenv("OMPI_MCA_mpi_yield_when_idle", "1", 0);
    int provided = 0;
    mpi_check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
    if (provided < MPI_THREAD_MULTIPLE) {
      std::fprintf(stderr, "frugal: the MPI library does not provide MPI_THREAD_MULTIPLE\n");
      MPI_Abort(MPI_COMM_WORLD, 3);
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    MPI_Op_create(sum_bf16, 1, &sum_bf16_);
    thread_ = std::thread([this] { loop(); });
  }
  ~MpiComm() override {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
    MPI_Op_free(&sum_bf16_);
    MPI_Finalize();
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  std::unique_ptr<Work> all_reduce(float* buf, int64_t n, ReduceOp op) override {
    return post([=, this] {
      mpi_check(MPI_Allreduce(MPI_IN_PLACE, buf, int(n), MPI_FLOAT, op == ReduceOp::max ? MPI_MAX : MPI_SUM,
                              MPI_COMM_WORLD), "MPI_Allreduce");
      if (op == ReduceOp::avg)
        for (int64_t i = 0; i < n; i++) buf[i] /= float(size_);
    });
  }
  std::unique_ptr<Work> all_reduce_bf16(float* buf, uint16_t* scratch, int64_t n) override {
    return post([=, this] {
      auto* h = reinterpret_cast<bf16*>(scratch);
      for (int64_t i = 0; i < n; i++) h[i] = from_f32<bf16>(buf[i]);
      mpi_check(MPI_Allreduce(MPI_IN_PLACE, h, int(n), MPI_UINT16_T, sum_bf16_, MPI_COMM_WORLD), "MPI_Allreduce");
      for (int64_t i = 0; i < n; i++) buf[i] = to_f32(h[i]);
    });
  }
  std::unique_ptr<Work> reduce_scatter(float* in, float* out, int64_t n, ReduceOp op) override {
    // An in-place all-reduce, then this rank's slice: MPI_Reduce_scatter_block moves half the
    // bytes but runs at under half the all-reduce's speed in this OpenMPI (deps.md).
    return post([=, this] {
      mpi_check(MPI_Allreduce(MPI_IN_PLACE, in, int(n * size_), MPI_FLOAT,
                              op == ReduceOp::max ? MPI_MAX : MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
      const float* mine = in + int64_t(rank_) * n;
      const float k = op == ReduceOp::avg ? 1.0f / float(size_) : 1.0f;
      for (int64_t i = 0; i < n; i++) out[i] = mine[i] * k;
    });
  }
  std::unique_ptr<Work> all_gather(const float* in, float* out, int64_t n) override {
    return post([=] {
      mpi_check(MPI_Allgather(in, int(n), MPI_FLOAT, out, int(n), MPI_FLOAT, MPI_COMM_WORLD), "MPI_Allgather");
    });
  }
  std::unique_ptr<Work> all_gather_inplace(void* buf, int64_t total, int64_t slice, int elem_bytes) override {
    return post([=, this] {
      std::vector<int> counts(size_), displs(size_);
      for (int r = 0; r < size_; r++) {
        int64_t lo = std::min(total, r * slice), hi = std::min(total, lo + slice);
        counts[r] = int(hi - lo);
        displs[r] = int(lo);
      }
      MPI_Datatype type = elem_bytes == 2 ? MPI_UINT16_T : MPI_FLOAT;
      mpi_check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, counts.data(), displs.data(),
                               type, MPI_COMM_WORLD), "MPI_Allgatherv");
    });
  }
  std::unique_ptr<Work> broadcast(float* buf, int64_t n, int root) override {
    return post([=] { mpi_check(MPI_Bcast(buf, int(n), MPI_FLOAT, root, MPI_COMM_WORLD), "MPI_Bcast"); });
  }
  void barrier() override {
    post([] { mpi_check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); })->wait();
  }

 private:
  std::unique_ptr<Work> post(std::function<void()> f) {
    auto w = std::make_unique<Pending>();
    std::packaged_task<void()> task(std::move(f));
    w->done = task.get_future();
    {
      std::lock_guard<std::mutex> lk(mu_);
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
    return w;
  }
  void loop() {
    for (;;) {
      std::packaged_task<void()> task;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [this] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }

  int rank_ = 0, size_ = 1;
  MPI_Op sum_bf16_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::packaged_task<void()>> queue_;
  bool stop_ = false;
};

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_NTASKS"})
    if (std::getenv(v)) return true;
  return false;
}

}  // namespace

std::unique_ptr<Comm> make_comm(bool gpu) {
  if (launched_by_mpi()) {
    std::unique_ptr<Comm> mpi = std::make_unique<MpiComm>();
    return gpu && mpi->size() > 1 ? make_nccl_comm(std::move(mpi)) : std::move(mpi);
  }
  return make_local_comm();
}

void abort_world(int code) {
  int init = 0;
  MPI_Initialized(&init);
  if (init) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

}  // namespace frugal
