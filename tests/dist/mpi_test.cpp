// Data parallelism over MPI, run under mpirun (ctest label mpi): for every strategy, N ranks
// with micro-batch B/N give the losses and final weights of one process with micro-batch B,
// within 1e-5 relative in fp32 (the reduction order differs), with gradient accumulation on and
// off; each rank's model states and buffers are what the memory model says, and follow the
// ZeRO formulas; the plan predicts each category's peak. Built twice: over MpiComm on the CPU
// backend, and (FRUGAL_CUDA_EMU) over NcclComm on the CUDA backend of the emulated device
// (tests/cuda/emu/, NCCL's collectives done by MPI).
#include <gtest/gtest.h>

#include <memory>

#include "plan/plan.h"
#include "support/support.h"
#include "train/train.h"

namespace frugal {
namespace {

Comm* world = nullptr;  // one MPI world for the whole program
#ifdef FRUGAL_CUDA_EMU
constexpr bool kCuda = true;
Backend& backend() { return cuda_backend(); }
#else
constexpr bool kCuda = false;
Backend& backend() { return cpu_backend(); }
#endif
const Strategy all_strategies[] = {Strategy::ddp, Strategy::zero1, Strategy::zero2, Strategy::zero3,
                                   Strategy::yafsdp};

struct Result {
  std::vector<float> losses, weights;
  MemStats mem;                // peaks over the steps after the first
  std::vector<size_t> allocs;  // pool allocations in each step
  std::vector<size_t> peaks;   // total peak of each step
};

// `B` sequences per micro-batch on each of comm's ranks, `accum` micro-batches per step; the
// global batch of a step is B * ranks * accum consecutive windows, split like the DataLoader.
Result train_steps(Comm& comm, int B, int accum, DType dt, Strategy s, const ModelConfig& cfg, int steps = 5,
                   DType reduce = DType::f32, int32_t sep = -1) {
  const int T = cfg.context;
  Model m(cfg, backend(), dt, model_owns(s));
  m.set_documents(sep);  // >= 0: documents masked apart, each starting at a token sep
  TrainSettings t;
  t.seq_len = T;
  t.micro_batch = B;
  t.steps = steps;
  t.warmup_steps = 2;
  t.lr = 3e-3;
  PrecisionSettings p;
  p.compute = dt;
  p.reduce = reduce;
  Stepper st(m, backend(), comm, t, accum, p, {}, s);
  st.init_weights(7);
  Result r;
  int64_t next_window = 0;
  for (int k = 0; k < steps; k++) {
    if (k == 1) MemoryPool::get().reset_peak();
    const MemStats before = MemoryPool::get().stats();
    int micro = 0;
    r.losses.push_back(st.step(k, [&](int32_t* in, int32_t* tg) {
      // micro-batch j of this rank: windows j*B*world + rank*B ... + B of the step's batch
      int64_t base = next_window + int64_t(micro++) * B * comm.size() + int64_t(comm.rank()) * B;
      for (int b = 0; b < B; b++) test::stream_window(base + b, T, in + b * T, tg + b * T);
    }).loss);
    next_window += int64_t(B) * comm.size() * accum;
    r.allocs.push_back(MemoryPool::get().stats().allocations - before.allocations);
    r.peaks.push_back(MemoryPool::get().stats().total_peak);
  }
  r.mem = MemoryPool::get().stats();
  st.shards().materialize();
  std::vector<std::vector<float>> host;
  for (auto& n : m.named_params()) {
    if (m.units()[n.unit].frozen) continue;  // LoRA's base: it does not move
    const float* w = host_view(backend(), n.data, n.spec->numel, host);
    r.weights.insert(r.weights.end(), w, w + n.spec->numel);
  }
  return r;
}

const ModelConfig small{"custom", 2, 2, 32, 97, 16};
// the llama family's: grouped queries, q/k/v biases, an untied head (its own gather and
// gradient slots)
const ModelConfig small_llama{"custom", 2, 4, 64, 97, 16, Family::llama, 2, 96, true, false, 1e-5, 10000};

void expect_same_as_one_process(Strategy s, int accum, DType dt, double tol, DType reduce = DType::f32,
                                const ModelConfig& cfg = small, int32_t sep = -1) {
  const int N = world->size(), B = 4;
  auto local = make_local_comm();
  Result one = train_steps(*local, B * N, accum, dt, Strategy::ddp, cfg, 5, DType::f32, sep);
  Result many = train_steps(*world, B, accum, dt, s, cfg, 5, reduce, sep);
  const std::string name = fmt::format("{} {}{}", strategy_name(s), family_name(cfg.family), sep >= 0 ? " documents" : "");
  for (size_t i = 0; i < one.losses.size(); i++)
    EXPECT_NEAR(many.losses[i], one.losses[i], tol * one.losses[i]) << name << " step " << i << " rank " << world->rank();
  EXPECT_LT(test::rel_error(many.weights, one.weights), tol) << name << " rank " << world->rank();
  // every rank holds the same weights: compare a checksum with rank 0's
  float sum[1] = {0.0f}, root[1];
  for (float w : many.weights) sum[0] += w;
  root[0] = sum[0];
  world->broadcast(root, 1, 0)->wait();
  EXPECT_EQ(sum[0], root[0]) << name;
}

TEST(Strategies, SameAsOneProcessWithoutAccumulation) {
  for (Strategy s : all_strategies) expect_same_as_one_process(s, 1, DType::f32, 1e-5);
}
TEST(Strategies, SameAsOneProcessWithAccumulation) {
  for (Strategy s : all_strategies) expect_same_as_one_process(s, 3, DType::f32, 1e-5);
}
// Documents masked apart (Model::set_documents; id 5 starts each, about one in 97 tokens).
TEST(Strategies, DocumentsMaskedApartSameAsOneProcess) {
  for (Strategy s : all_strategies) {
    expect_same_as_one_process(s, 2, DType::f32, 1e-5, DType::f32, small, 5);
    expect_same_as_one_process(s, 2, DType::f32, 1e-5, DType::f32, small_llama, 5);
  }
}
TEST(Strategies, LlamaSameAsOneProcess) {
  for (Strategy s : all_strategies) {
    expect_same_as_one_process(s, 1, DType::f32, 1e-5, DType::f32, small_llama);
    expect_same_as_one_process(s, 3, DType::f32, 1e-5, DType::f32, small_llama);
    expect_same_as_one_process(s, 2, DType::bf16, 1e-3, DType::f32, small_llama);
  }
}
// LoRA (every module; a bf16, an nf4 and an int8 base; llama with an untied head, gpt2 with a tied
// one): every strategy trains the adapters as one process does, the frozen base whole on every
// rank (ddp, zero1, zero2) or sharded as it is stored (zero3, yafsdp), each rank's bytes what
// the estimate says.
TEST(Strategies, LoraSameAsOneProcess) {
  ModelConfig lora = small_llama;
  lora.lora.rank = 4;
  lora.lora.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  ModelConfig qlora = lora, int8 = lora, gpt2 = small;
  qlora.lora.base = BaseFormat::nf4;
  int8.lora.base = BaseFormat::int8;
  gpt2.lora.rank = 2;
  gpt2.lora.targets = {"c_attn", "c_proj", "c_fc"};
  for (Strategy s : all_strategies) {
    expect_same_as_one_process(s, 2, DType::f32, 1e-5, DType::f32, lora);
    expect_same_as_one_process(s, 2, DType::f32, 1e-5, DType::f32, gpt2);
    expect_same_as_one_process(s, 1, DType::bf16, 1e-3, DType::f32, qlora);
    expect_same_as_one_process(s, 1, DType::bf16, 1e-3, DType::f32, int8);
    // bytes: bf16 (bf16 reductions) and fp32 stores, quantized and not, tied and untied heads
    for (auto [cfg, dt] : {std::pair{lora, DType::bf16}, {qlora, DType::bf16}, {int8, DType::f32}, {gpt2, DType::f32}}) {
      const DType reduce = dt == DType::bf16 ? DType::bf16 : DType::f32;
      Result r = train_steps(*world, 2, 2, dt, s, cfg, 2, reduce);
      MemoryEstimate e = estimate_memory(cfg, 2, cfg.context, dt, {}, kCuda, {s, world->size(), reduce});
      if (world->rank() == 0) {
        for (Mem c : {Mem::params, Mem::grads, Mem::optimizer, Mem::comm, Mem::activations})
          EXPECT_EQ(r.mem.peak[int(c)], e.bytes[int(c)]) << strategy_name(s) << " " << family_name(cfg.family) << " "
                                                        << base_format_name(cfg.lora.base) << " " << dtype_name(dt) << " "
                                                        << mem_name(c);
      }
    }
  }
}

// bf16: zero3 and yafsdp gather the blocks in bf16, which equals casting the gathered fp32
// masters, so they match the one-process bf16 run up to the reduction order as well.
TEST(Strategies, Bf16SameAsOneProcess) {
  for (Strategy s : all_strategies) expect_same_as_one_process(s, 2, DType::bf16, 1e-3);
}

// precision.reduce = bf16: gradients summed through bf16 (2^-9 relative rounding per value)
TEST(Strategies, Bf16ReductionsStayCloseToOneProcess) {
  for (Strategy s : all_strategies) expect_same_as_one_process(s, 2, DType::f32, 2e-3, DType::bf16);
}

// yafsdp allocates nothing after the first step (its peak stays flat); zero3 allocates and
// frees its gather and gradient buffers around every block, every step.
TEST(Strategies, YafsdpAllocatesNothingAfterTheFirstStep) {
  Result y = train_steps(*world, 2, 2, DType::bf16, Strategy::yafsdp, small, 4);
  Result z = train_steps(*world, 2, 2, DType::bf16, Strategy::zero3, small, 4);
  for (size_t k = 1; k < y.allocs.size(); k++) {
    EXPECT_EQ(y.allocs[k], 0u) << "yafsdp step " << k + 1;
    EXPECT_EQ(y.peaks[k], y.peaks[1]) << "yafsdp step " << k + 1;
    EXPECT_GT(z.allocs[k], 0u) << "zero3 step " << k + 1;
  }
}

// Per-rank peaks: exactly estimate_memory() (padding and buffers included) and, for the model
// states, within 5 % of the ZeRO formulas with frugal's fp32 gradients: per parameter, params 4
// (+2 for the 16-bit compute copy unless sharded), grads 4, AdamW 8, each divided by N where the
// strategy shards it: ddp 16 (18), zero1 8 (10) + 8/N, zero2 4 (6) + 12/N, zero3 16/N bytes.
TEST(Strategies, PerRankMemoryFollowsTheZeroFormulas) {
  ModelConfig llama = small_llama;
  llama.n_embd = 128;
  for (const ModelConfig& cfg : {ModelConfig{"custom", 3, 2, 128, 97, 16}, llama}) {
  const int N = world->size(), B = 2;
  const double psi = double(cfg.num_params());
  for (DType dt : {DType::f32, DType::bf16})
    for (Strategy s : all_strategies) {
      Result r = train_steps(*world, B, 2, dt, s, cfg, 2, dt);  // bf16 compute: bf16 reductions
      MemoryEstimate e = estimate_memory(cfg, B, cfg.context, dt, {}, kCuda, {s, N, dt});
      const std::string what = fmt::format("{} {} {} rank {}", strategy_name(s), dtype_name(dt), family_name(cfg.family), world->rank());
      if (world->rank() == 0) {  // rank 0 holds the largest slices
        for (Mem c : {Mem::params, Mem::grads, Mem::optimizer, Mem::comm, Mem::activations})
          EXPECT_EQ(r.mem.peak[int(c)], e.bytes[int(c)]) << what << " " << mem_name(c);
      }
      const double n = s >= Strategy::zero1 ? N : 1;
      double params = s >= Strategy::zero3 ? 4 * psi / N : (dt == DType::f32 ? 4 : 6) * psi;
      double grads = s >= Strategy::zero2 ? 4 * psi / N : 4 * psi;
      double opt = 8 * psi / n;
      EXPECT_NEAR(r.mem.peak[int(Mem::params)], params, 0.05 * params) << what;
      EXPECT_NEAR(r.mem.peak[int(Mem::grads)], grads, 0.05 * grads) << what;
      EXPECT_NEAR(r.mem.peak[int(Mem::optimizer)], opt, 0.05 * opt) << what;
    }
  }
}

// The plan's per-rank memory (plan_memory) against rank 0's measured peak per category, for
// every strategy x fp32/bf16 x every recompute policy, on this world's ranks.
TEST(PlanMemory, PredictedPeakPerCategoryWithin5PercentOfMeasured) {
  const int B = 2, T = 16, N = world->size();
  for (const ModelConfig& cfg : {ModelConfig{"custom", 3, 2, 32, 97, T}, small_llama})
  for (Strategy strategy : all_strategies)
    for (DType dt : {DType::f32, DType::bf16})
      for (const char* rc : {"none", "selective", "every:2", "full"}) {
        const RecomputePolicy policy = RecomputePolicy::parse(rc, "test");
        const MemStats before = MemoryPool::get().stats();
        MemoryPool::get().reset_peak();
        std::array<size_t, num_mem> peak{};
        {
          Model m(cfg, backend(), dt, model_owns(strategy));
          TrainSettings t;
          t.seq_len = T;
          t.micro_batch = B;
          PrecisionSettings p;
          p.compute = dt;
          Stepper st(m, backend(), *world, t, 1, p, policy.per_block(cfg.n_layer), strategy);
          st.init_weights(1);
          MemoryPool::get().reset_peak();  // zero3's init draws each unit into a temporary once
          for (int s = 0; s < 2; s++)
            st.step(s, [&](int32_t* in, int32_t* tg) {
              for (int b = 0; b < B; b++) test::stream_window(world->rank() * B + b, T, in + b * T, tg + b * T);
            });
          for (int c = 0; c < num_mem; c++)  // the runtime's scratch stays from earlier runs: all of it
            peak[c] = MemoryPool::get().stats().peak[c] - (Mem(c) == Mem::runtime ? 0 : before.current[c]);
        }
        if (world->rank() != 0) continue;
        const MemoryEstimate want = plan_memory(cfg, B, T, dt, policy, strategy, N, DType::f32, kCuda);
        for (int c = 0; c < num_mem; c++)
          EXPECT_NEAR(double(peak[c]), double(want.bytes[c]), 0.05 * double(want.bytes[c]))
              << strategy_name(strategy) << " " << dtype_name(dt) << " " << rc << " " << mem_name(Mem(c)) << " on " << N << " ranks "
              << family_name(cfg.family);
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
  auto comm = frugal::make_comm(frugal::kCuda);
  frugal::world = comm.get();
  if (comm->rank() != 0) ::testing::GTEST_FLAG(output) = "";
  int rc = RUN_ALL_TESTS();
  // a failure on any rank fails the job
  float failed[1] = {float(rc != 0)};
  comm->all_reduce(failed, 1, frugal::ReduceOp::max)->wait();
  return failed[0] != 0.0f ? 1 : 0;
}
