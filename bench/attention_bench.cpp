// Attention forward and backward alone: seconds per call and GFLOP/s (causal: half the T x T
// products) on random inputs, NKV key/value heads (NH by default; smollm-135m: 4 1024 576 9 bf16 10 3).
//   usage: attention_bench [B] [T] [C] [NH] [fp32|bf16] [reps] [NKV]
#include <omp.h>

#include <chrono>
#include <random>
#include <string>

#include "backend/cpu/cpu.h"
#include "core/core.h"

using namespace frugal;

int main(int argc, char** argv) {
  const int64_t B = argc > 1 ? atoi(argv[1]) : 4, T = argc > 2 ? atoi(argv[2]) : 1024,
                C = argc > 3 ? atoi(argv[3]) : 768, NH = argc > 4 ? atoi(argv[4]) : 12;
  const DType dt = argc > 5 && std::string(argv[5]) == "fp32" ? DType::f32 : DType::bf16;
  const int reps = argc > 6 ? atoi(argv[6]) : 3;
  const int64_t NKV = argc > 7 ? atoi(argv[7]) : NH, HS = C / NH;
  CpuBackend be;
  const size_t es = dtype_size(dt);
  std::vector<float> f(size_t(B * T * (NH + 2 * NKV) * HS));
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  for (float& x : f) x = nd(rng);
  std::vector<std::byte> qkv(f.size() * es), out(size_t(B * T * C) * es), dout(out.size()), dqkv(qkv.size());
  be.cast(qkv.data(), f.data(), int64_t(f.size()), dt);
  be.cast(dout.data(), f.data(), B * T * C, dt);
  std::vector<float> lse(size_t(B * NH * T));
  auto secs = [&](auto fn) {
    fn();
    auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; r++) fn();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
  };
  const double fwd = secs([&] { be.attention_forward(out.data(), lse.data(), qkv.data(), B, T, NH, NKV, HS, dt); });
  const double bwd = secs([&] {
    be.attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T, NH, NKV, HS, dt);
  });
  const double flop = 2.0 * B * NH * (double(T) * (T + 1) / 2) * HS * 2;  // QK^T and PV
  fmt::print("attention B={} T={} C={} NH={} NKV={} {}, {} threads: forward {:.1f} ms ({:.1f} GFLOP/s), "
             "backward {:.1f} ms ({:.1f} GFLOP/s)\n", B, T, C, NH, NKV, dtype_name(dt), omp_get_max_threads(),
             fwd * 1e3, flop / fwd / 1e9, bwd * 1e3, 2.5 * flop / bwd / 1e9);
}
