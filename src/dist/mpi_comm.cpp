// MpiComm: Comm over MPI (OpenMPI), one rank per process. Collectives are queued to one
// communication thread that calls the blocking MPI collectives in order (MPI_THREAD_MULTIPLE),
// so that a gradient all-reduce overlaps the rest of backward. A watchdog thread ends the job
// when one collective waits longer than the timeout, naming the ranks that do not answer.
#include <mpi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <time.h>
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
  explicit MpiComm(double timeout_s) : timeout_s_(timeout_s) {
    // A collective's wait spins in OpenMPI's progress loop on the communication thread, taking
    // the core from the rank's compute thread: yield instead (unless the user chose). Measured
    // on 2 cores, 2 ranks: the tiny model's sharded strategies went from 0.46-0.85x of the
    // single process to 0.91-1.03x (bench/RESULTS.md); with a core to spare it costs nothing.
    setenv("OMPI_MCA_mpi_yield_when_idle", "1", 0);
    // Across hosts over TCP, OpenMPI 4.1's defaults ran a 2-rank job's unit-sized collectives
    // one direction after the other, at half the link: its fixed rules pick an all-reduce that
    // does not send both ways at once, and with the kernel's autotuned send buffer (up to 4 MB) a
    // rank's rendezvous reply queues behind megabytes of its own data on the one connection
    // between the two ranks (FRUGAL_COMM_TRACE: bench/RESULTS.md, issue 24). For 2 ranks,
    // recursive doubling (one exchange of the whole buffer, both ways at once: the bytes of a
    // ring) and a 128 KB send buffer (OpenMPI's own default before 4.1) reach the link: 7 MB
    // all-reduces back to back at 1 Gb/s in 60 ms instead of 110. The user's settings win.
    setenv("OMPI_MCA_btl_tcp_sndbuf", "131072", 0);
    // Even so, a message above the eager limit (64 KB) waits for its receiver's reply, and that
    // reply can still queue behind the receiver's own data in the link's queue: zero2's gathers
    // after the optimizer and ZeRO-3's serialized in some steps. Sending up to 8 MB eagerly (a
    // unit's shard or gradients at these sizes) asks for no reply: zero2 at 1 Gb/s 592-595 ms a
    // step in 3 runs instead of 600-676, zero3 752-758 instead of 797-851; peak RSS the same.
    setenv("OMPI_MCA_btl_tcp_eager_limit", "8388608", 0);
    setenv("OMPI_MCA_btl_tcp_rndv_eager_limit", "8388608", 0);
    if (const char* n = std::getenv("OMPI_COMM_WORLD_SIZE"); n && std::string(n) == "2" &&
        !std::getenv("OMPI_MCA_coll_tuned_use_dynamic_rules")) {
      setenv("OMPI_MCA_coll_tuned_use_dynamic_rules", "1", 0);
      setenv("OMPI_MCA_coll_tuned_allreduce_algorithm", "3", 0);  // recursive doubling
    }
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
    MPI_Comm_dup(MPI_COMM_WORLD, &probe_);  // the watchdog's own traffic, apart from the collectives'
    thread_ = std::thread([this] { loop(); });
    watchdog_ = std::thread([this] { watch(); });
  }
  ~MpiComm() override {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    cv_watch_.notify_one();
    thread_.join();
    watchdog_.join();
    if (trace_) write_trace();
    MPI_Comm_free(&probe_);
    MPI_Op_free(&sum_bf16_);
    MPI_Finalize();
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void set_step(int step) override {
    step_ = step;
    mark("step", step);
  }
  void mark(const char* what, int unit) override {
    if (trace_) record({what, unit, 0, 0, now_ns(), now_ns(), 0});
  }

  std::unique_ptr<Work> all_reduce(float* buf, int64_t n, ReduceOp op) override {
    return post("MPI_Allreduce", [=, this] {
      mpi_check(MPI_Allreduce(MPI_IN_PLACE, buf, int(n), MPI_FLOAT, op == ReduceOp::max ? MPI_MAX : MPI_SUM,
                              MPI_COMM_WORLD), "MPI_Allreduce");
      if (op == ReduceOp::avg)
        for (int64_t i = 0; i < n; i++) buf[i] /= float(size_);
    }, 4 * n);
  }
  std::unique_ptr<Work> all_reduce_bf16(float* buf, uint16_t* scratch, int64_t n) override {
    return post("MPI_Allreduce (bf16)", [=, this] {
      auto* h = reinterpret_cast<bf16*>(scratch);
      for (int64_t i = 0; i < n; i++) h[i] = from_f32<bf16>(buf[i]);
      mpi_check(MPI_Allreduce(MPI_IN_PLACE, h, int(n), MPI_UINT16_T, sum_bf16_, MPI_COMM_WORLD), "MPI_Allreduce");
      for (int64_t i = 0; i < n; i++) buf[i] = to_f32(h[i]);
    }, 2 * n);
  }
  std::unique_ptr<Work> reduce_scatter(float* in, float* out, int64_t n, ReduceOp op) override {
    // An in-place all-reduce, then this rank's slice: MPI_Reduce_scatter_block moves half the
    // bytes but runs at under half the all-reduce's speed in this OpenMPI (deps.md).
    return post("MPI_Allreduce (reduce-scatter)", [=, this] {
      mpi_check(MPI_Allreduce(MPI_IN_PLACE, in, int(n * size_), MPI_FLOAT,
                              op == ReduceOp::max ? MPI_MAX : MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
      const float* mine = in + int64_t(rank_) * n;
      const float k = op == ReduceOp::avg ? 1.0f / float(size_) : 1.0f;
      for (int64_t i = 0; i < n; i++) out[i] = mine[i] * k;
    }, 4 * n * size_);
  }
  std::unique_ptr<Work> all_gather(const float* in, float* out, int64_t n) override {
    return post("MPI_Allgather", [=] {
      mpi_check(MPI_Allgather(in, int(n), MPI_FLOAT, out, int(n), MPI_FLOAT, MPI_COMM_WORLD), "MPI_Allgather");
    }, 4 * n);
  }
  std::unique_ptr<Work> all_gather_inplace(void* buf, int64_t total, int64_t slice, int elem_bytes) override {
    return post("MPI_Allgatherv", [=, this] {
      std::vector<int> counts(size_), displs(size_);
      for (int r = 0; r < size_; r++) {
        int64_t lo = std::min(total, r * slice), hi = std::min(total, lo + slice);
        counts[r] = int(hi - lo);
        displs[r] = int(lo);
      }
      MPI_Datatype type = elem_bytes == 2 ? MPI_UINT16_T : MPI_FLOAT;
      mpi_check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, counts.data(), displs.data(),
                               type, MPI_COMM_WORLD), "MPI_Allgatherv");
    }, (std::min(total, int64_t(rank_ + 1) * slice) - std::min(total, int64_t(rank_) * slice)) * elem_bytes);
  }
  std::unique_ptr<Work> broadcast(float* buf, int64_t n, int root) override {
    return post("MPI_Bcast", [=] { mpi_check(MPI_Bcast(buf, int(n), MPI_FLOAT, root, MPI_COMM_WORLD), "MPI_Bcast"); });
  }
  void barrier() override {
    post("MPI_Barrier", [] { mpi_check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); })->wait();
  }

 private:
  std::unique_ptr<Work> post(const char* what, std::function<void()> f, int64_t bytes = 0) {
    auto w = std::make_unique<Pending>();
    const int64_t posted = trace_ ? now_ns() : 0;
    std::packaged_task<void()> task([this, what, f = std::move(f), bytes, posted] {
      what_ = what;
      started_ns_ = now_ns();
      const int64_t cpu0 = trace_ ? thread_cpu_ns() : 0;
      f();
      if (trace_) record({what, -1, bytes, posted, started_ns_, now_ns(), thread_cpu_ns() - cpu0});
      started_ns_ = 0;
      count_++;
    });
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

  struct Event { const char* what; int unit; int64_t bytes, posted, started, ended, cpu; };
  void record(const Event& e) {
    std::lock_guard<std::mutex> lk(trace_mu_);
    events_.push_back(e);
  }
  void write_trace() {
    const std::string path = std::string(std::getenv("FRUGAL_COMM_TRACE")) + "." + std::to_string(rank_) + ".tsv";
    FILE* f = std::fopen(path.c_str(), "w");
    if (!f) return;
    std::fprintf(f, "what\tunit\tbytes\tposted_ns\tstarted_ns\tended_ns\tcpu_ns\n");
    for (const Event& e : events_)
      std::fprintf(f, "%s\t%d\t%lld\t%lld\t%lld\t%lld\t%lld\n", e.what, e.unit, (long long)e.bytes, (long long)e.posted,
                   (long long)e.started, (long long)e.ended, (long long)e.cpu);
    std::fclose(f);
  }
  static int64_t thread_cpu_ns() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
  }
  static int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }
  // Every second: has the running collective waited past the timeout? Then tell every other
  // rank so (on probe_) and listen for theirs for a grace period: the live ranks are waiting in
  // the same collective and time out together; the silent ones are named, and the job ends.
  void watch() {
    while (true) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        if (cv_watch_.wait_for(lk, std::chrono::seconds(1), [this] { return stop_; })) return;
      }
      const int64_t t0 = started_ns_;
      if (t0 == 0 || double(now_ns() - t0) * 1e-9 <= timeout_s_) continue;
      const int64_t id = count_;
      std::vector<MPI_Request> sends(size_), recvs(size_);
      std::vector<int64_t> heard(size_, -1);
      for (int r = 0; r < size_; r++) {
        if (r == rank_) continue;
        MPI_Isend(&id, 1, MPI_INT64_T, r, 7, probe_, &sends[r]);
        MPI_Irecv(&heard[r], 1, MPI_INT64_T, r, 7, probe_, &recvs[r]);
      }
      const int64_t grace_end = now_ns() + int64_t(std::min(5.0, timeout_s_) * 1e9);
      std::vector<int> silent;
      while (now_ns() < grace_end) {
        silent.clear();
        for (int r = 0; r < size_; r++) {
          int done = 1;
          if (r != rank_ && recvs[r] != MPI_REQUEST_NULL) MPI_Test(&recvs[r], &done, MPI_STATUS_IGNORE);
          if (!done) silent.push_back(r);
        }
        if (silent.empty()) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      std::string who, why;
      for (int r : silent) who += (who.empty() ? "" : ", ") + std::to_string(r);
      int64_t ahead = id;  // a rank that answers from a later collective: this one fell behind (it was stopped)
      for (int r = 0; r < size_; r++)
        if (r != rank_ && recvs[r] == MPI_REQUEST_NULL) ahead = std::max(ahead, heard[r]);
      if (ahead > id) why = "this rank fell behind (the others wait in collective " + std::to_string(ahead) + ")";
      else why = silent.empty() ? "every rank answers, so the collective itself is stuck" : "rank(s) " + who + " do not answer";
      std::fprintf(stderr, "frugal: rank %d of %d: %s (collective %lld, step %d) has waited %.0f s, over dist.timeout = %g s: %s; ending the job\n",
                   rank_, size_, what_.load(), (long long)id, step_.load(), double(now_ns() - t0) * 1e-9, timeout_s_, why.c_str());
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, 4);
    }
  }

  double timeout_s_;
  std::atomic<int64_t> started_ns_{0}, count_{0};  // the running collective's start (0: none), how many ran
  std::atomic<const char*> what_{""};
  std::atomic<int> step_{0};
  MPI_Comm probe_;
  std::thread watchdog_;
  std::condition_variable cv_watch_;
  int rank_ = 0, size_ = 1;
  MPI_Op sum_bf16_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::packaged_task<void()>> queue_;
  bool stop_ = false;
  const bool trace_ = std::getenv("FRUGAL_COMM_TRACE") != nullptr;  // FRUGAL_COMM_TRACE: make_comm's comment
  std::mutex trace_mu_;
  std::vector<Event> events_;
};

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_NTASKS"})
    if (std::getenv(v)) return true;
  return false;
}

// Under Slurm without mpirun (srun starting every task, or a batch script), the task's place is
// Slurm's SLURM_PROCID of SLURM_STEP_NUM_TASKS (srun) or SLURM_NTASKS (the allocation): MPI must
// see the same world, or each task would train alone into the same run directory. Under mpirun
// (OMPI_COMM_WORLD_SIZE, read before MPI_Init sets anything) the SLURM_ variables describe
// mpirun's daemons, not the ranks, and are not compared.
void check_slurm_world(bool by_mpirun, int rank, int size) {
  const char* procid = std::getenv("SLURM_PROCID");
  const char* ntasks = std::getenv("SLURM_STEP_NUM_TASKS") ? "SLURM_STEP_NUM_TASKS" : "SLURM_NTASKS";
  if (by_mpirun || !procid || !std::getenv(ntasks)) return;
  const int slurm_rank = std::atoi(procid), slurm_size = std::atoi(std::getenv(ntasks));
  if (slurm_rank != rank || slurm_size != size)
    user_error("Slurm started this process as task {} of {} (SLURM_PROCID, {}), but MPI sees rank {} of {}: "
               "launch with `srun --mpi=pmix frugal ...` (an OpenMPI built with Slurm/PMIx support) or with "
               "`mpirun frugal ...` inside the allocation", slurm_rank, slurm_size, ntasks, rank, size);
}

}  // namespace

std::unique_ptr<Comm> make_comm(bool gpu, double timeout_s) {
  if (launched_by_mpi()) {
    const bool by_mpirun = std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr;
    std::unique_ptr<Comm> mpi = std::make_unique<MpiComm>(timeout_s);
    check_slurm_world(by_mpirun, mpi->rank(), mpi->size());
    return gpu && mpi->size() > 1 ? make_nccl_comm(std::move(mpi), timeout_s) : std::move(mpi);
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
