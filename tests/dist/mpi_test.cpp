// Data parallelism over MPI, run under mpirun (ctest label mpi): for ddp and zero1, N ranks with
// micro-batch B/N give the losses and final weights of one process with micro-batch B, within
// 1e-5 relative in fp32 (the reduction order differs), with gradient accumulation on and off;
// zero1 holds 1/N of the optimizer state per rank; the plan predicts each category's peak.
#include <gtest/gtest.h>

#include <memory>

#include "plan/plan.h"
#include "support/support.h"
#include "train/train.h"

namespace frugal {
namespace {

Comm* world = nullptr;  // one MPI world for the whole program

struct Run { std::vector<float> losses; std::vector<float> weights; };

// `B` sequences per micro-batch on each of comm's ranks, `accum` micro-batches per step; the
// global batch of a step is B * ranks * accum consecutive windows, split like the DataLoader.
Run train_steps(Comm& comm, int B, int accum, DType dt, bool zero1 = false) {
  const int T = 16, steps = 5;
  GptConfig cfg{"custom", 2, 2, 32, 97, T};
  Gpt m(cfg, cpu_backend(), dt);
  m.init(7);
  TrainSettings t;
  t.seq_len = T;
  t.micro_batch = B;
  t.steps = steps;
  t.warmup_steps = 2;
  t.lr = 3e-3;
  PrecisionSettings p;
  p.compute = dt;
  size_t opt_before = MemoryPool::get().stats().current[int(Mem::optimizer)];
  Stepper st(m, cpu_backend(), comm, t, accum, p, {}, zero1);
  // ZeRO-1: each rank holds 1/N of the AdamW moments (8 bytes per parameter in all), padded
  size_t opt = MemoryPool::get().stats().current[int(Mem::optimizer)] - opt_before;
  double expect = 8.0 * double(cfg.num_params()) / (zero1 ? comm.size() : 1);
  EXPECT_LE(double(opt), expect + 8.0 * 3 * comm.size());
  if (zero1 && comm.rank() == 0) {
    EXPECT_GE(double(opt), expect);
  }
  // rank 0's optimizer and comm bytes are what the memory model predicts
  MemoryEstimate e = estimate_memory(cfg, B, T, dt, {}, 0, zero1 ? comm.size() : 1);
  if (comm.rank() == 0) {
    EXPECT_EQ(opt, e.bytes[int(Mem::optimizer)]);
  }
  Run r;
  int64_t next_window = 0;
  for (int s = 0; s < steps; s++) {
    int micro = 0;
    r.losses.push_back(st.step(s, [&](int32_t* in, int32_t* tg) {
      // micro-batch k of this rank: windows k*B*world + rank*B ... + B of the step's batch
      int64_t base = next_window + int64_t(micro++) * B * comm.size() + int64_t(comm.rank()) * B;
      for (int b = 0; b < B; b++) test::stream_window(base + b, T, in + b * T, tg + b * T);
    }).loss);
    next_window += int64_t(B) * comm.size() * accum;
  }
  for (auto& u : m.units()) r.weights.insert(r.weights.end(), u.params.data(), u.params.data() + u.numel);
  return r;
}

void expect_same_as_one_process(int accum, bool zero1) {
  const int N = world->size(), B = 4;
  auto local = make_local_comm();
  Run one = train_steps(*local, B * N, accum, DType::f32);
  Run many = train_steps(*world, B, accum, DType::f32, zero1);
  for (size_t i = 0; i < one.losses.size(); i++)
    EXPECT_NEAR(many.losses[i], one.losses[i], 1e-5 * one.losses[i]) << "step " << i << " rank " << world->rank();
  EXPECT_LT(test::rel_error(many.weights, one.weights), 1e-5) << "rank " << world->rank();
  // every rank holds the same weights: compare a checksum with rank 0's
  float sum[1] = {0.0f}, root[1];
  for (float w : many.weights) sum[0] += w;
  root[0] = sum[0];
  world->broadcast(root, 1, 0)->wait();
  EXPECT_EQ(sum[0], root[0]);
}

TEST(Ddp, SameAsOneProcessWithoutAccumulation) { expect_same_as_one_process(1, false); }
TEST(Ddp, SameAsOneProcessWithAccumulation) { expect_same_as_one_process(3, false); }
TEST(Zero1, SameAsOneProcessWithoutAccumulation) { expect_same_as_one_process(1, true); }
TEST(Zero1, SameAsOneProcessWithAccumulation) { expect_same_as_one_process(3, true); }

// The plan's per-rank memory (plan_memory) against rank 0's measured peak per category, for
// every strategy built here x fp32/bf16 x every recompute policy, on this world's ranks.
TEST(PlanMemory, PredictedPeakPerCategoryWithin5PercentOfMeasured) {
  const int B = 2, T = 16, N = world->size();
  GptConfig cfg{"custom", 3, 2, 32, 97, T};
  for (Strategy strategy : {Strategy::ddp, Strategy::zero1})
    for (DType dt : {DType::f32, DType::bf16})
      for (const char* rc : {"none", "selective", "every:2", "full"}) {
        const RecomputePolicy policy = RecomputePolicy::parse(rc, "test");
        const MemStats before = MemoryPool::get().stats();
        MemoryPool::get().reset_peak();
        std::array<size_t, num_mem> peak{};
        {
          Gpt m(cfg, cpu_backend(), dt);
          m.init(1);
          TrainSettings t;
          t.seq_len = T;
          t.micro_batch = B;
          PrecisionSettings p;
          p.compute = dt;
          Stepper st(m, cpu_backend(), *world, t, 1, p, policy.per_block(cfg.n_layer), strategy == Strategy::zero1);
          for (int s = 0; s < 2; s++)
            st.step(s, [&](int32_t* in, int32_t* tg) {
              for (int b = 0; b < B; b++) test::stream_window(world->rank() * B + b, T, in + b * T, tg + b * T);
            });
          for (int c = 0; c < num_mem; c++) peak[c] = MemoryPool::get().stats().peak[c] - before.current[c];
        }
        if (world->rank() != 0) continue;
        const MemoryEstimate want = plan_memory(cfg, B, T, dt, policy, strategy, N);
        for (int c = 0; c < num_mem; c++)
          EXPECT_NEAR(double(peak[c]), double(want.bytes[c]), 0.05 * double(want.bytes[c]))
              << strategy_name(strategy) << " " << dtype_name(dt) << " " << rc << " " << mem_name(Mem(c)) << " on " << N << " ranks";
      }
}

TEST(Comm, CollectivesOverMpi) {
  const int N = world->size(), r = world->rank();
  std::vector<float> a = {float(r), 1.0f};
  world->all_reduce(a.data(), 2, ReduceOp::sum)->wait();
  EXPECT_EQ(a[0], float(N * (N - 1) / 2));
  EXPECT_EQ(a[1], float(N));
  std::vector<float> in(2 * N), out(2);
  for (int i = 0; i < 2 * N; i++) in[i] = float(i + r);
  world->reduce_scatter(in.data(), out.data(), 2, ReduceOp::avg)->wait();
  EXPECT_FLOAT_EQ(out[0], float(2 * r) + float(N - 1) / 2.0f);
  std::vector<float> g(N);
  float mine = float(10 * r);
  world->all_gather(&mine, g.data(), 1)->wait();
  for (int i = 0; i < N; i++) EXPECT_EQ(g[i], float(10 * i));
  // in place, uneven: 7 elements over N ranks, each filling its slice first
  const int64_t total = 7, slice = (total + N - 1) / N;
  std::vector<float> buf(total, -1.0f);
  for (int64_t i = std::min(total, r * slice); i < std::min(total, (r + 1) * slice); i++) buf[i] = float(i);
  world->all_gather_inplace(buf.data(), total, slice)->wait();
  for (int64_t i = 0; i < total; i++) EXPECT_EQ(buf[i], float(i));
  world->barrier();
}

}  // namespace
}  // namespace frugal

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto comm = frugal::make_comm();
  frugal::world = comm.get();
  if (comm->rank() != 0) ::testing::GTEST_FLAG(output) = "";
  int rc = RUN_ALL_TESTS();
  // a failure on any rank fails the job
  float failed[1] = {float(rc != 0)};
  comm->all_reduce(failed, 1, frugal::ReduceOp::max)->wait();
  return failed[0] != 0.0f ? 1 : 0;
}
