// The CUDA backend against the CPU backend, the reference, on the same random inputs: every op
// in fp32, bf16 and fp16, then a short training of a tiny model whose losses must match. Both
// backends work on CUDA managed memory in the op tests, which the CPU reads and writes too;
// the training runs each in its own backend's memory. Every test skips,
// naming the reason cudaGetDeviceCount gives, where no CUDA device is usable. The same file
// also runs on the emulated device of tests/cuda/emu/ (frugal_cuda_emu_tests), on every machine.
//
// What is asserted (relative error of a whole tensor, ||cuda - cpu|| / ||cpu||): fp32 outputs
// 1e-5 (the two differ only in the order of fp32 sums); bf16 outputs 1e-2 and fp16 outputs
// 2e-3 (one rounding of the stored result each way, as in tests/backend/kernels_test.cpp);
// training losses, step by step for 12 steps, 5e-4 (fp32), 2e-2 (bf16), 1e-2 (fp16) relative.
#include <cuda_runtime.h>
#if !defined(FRUGAL_CUDA_EMU)
#include <cublasLt.h>
#endif

#include <array>
#include <fstream>
#include <cstring>
#include <optional>

#include "backend/backend.h"
#include "core/quant.h"
#include "data/data.h"
#include "support/support.h"
#include "train/train.h"

namespace frugal {
namespace {

using test::randn;
using test::rel_error;
using Vec = std::vector<double>;
const DType kAll[] = {DType::f32, DType::bf16, DType::f16};

std::string no_device() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) return cudaGetErrorString(e);
  return n == 0 ? "0 devices" : "";
}
#define REQUIRE_CUDA()                                                            \
  do {                                                                            \
    std::string why = no_device();                                                \
    if (!why.empty()) GTEST_SKIP() << "no CUDA device: " << why;                  \
  } while (0)

double tol(DType d) { return d == DType::f32 ? 1e-5 : d == DType::bf16 ? 1e-2 : 2e-3; }

#if !defined(FRUGAL_CUDA_EMU)
// cuBLASLt is loaded when the backend first calls it (src/backend/cuda/cublaslt_loader.cpp), not
// at start: a process that never uses the GPU does not pay its ~150 MB. No device needed (without
// one the library answers cublasLtCreate with an error status). First in the file, so that no
// other test of a whole-binary run has loaded it.
TEST(CublasLt, LoadedOnFirstUse) {
  auto mapped = [] {
    std::ifstream maps("/proc/self/maps");
    return std::string(std::istreambuf_iterator<char>(maps), {}).find("libcublasLt") != std::string::npos;
  };
  EXPECT_FALSE(mapped());
  cublasLtHandle_t h = nullptr;
  const cublasStatus_t st = cublasLtCreate(&h);
  EXPECT_TRUE(mapped());
  if (st == CUBLAS_STATUS_SUCCESS) { EXPECT_EQ(cublasLtDestroy(h), CUBLAS_STATUS_SUCCESS); }
}
#endif

// n values in dtype d, in managed memory, made from fp32 values (rounded).
struct Dev {
  DType dt;
  size_t n;
  void* p = nullptr;
  Dev(DType d, const std::vector<float>& v) : dt(d), n(v.size()) {
    EXPECT_EQ(cudaMallocManaged(&p, std::max<size_t>(1, n * dtype_size(d))), cudaSuccess);
    dispatch(d, [&](auto t) {
      using T = decltype(t);
      for (size_t i = 0; i < n; i++) static_cast<T*>(p)[i] = from_f32<T>(v[i]);
    });
  }
  Dev(DType d, size_t n) : Dev(d, std::vector<float>(n, 0.0f)) {}
  Dev(const Dev&) = delete;
  ~Dev() { cudaFree(p); }
  float* f() const { return static_cast<float*>(p); }
  Vec values() const {
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    Vec out(n);
    dispatch(dt, [&](auto t) {
      using T = decltype(t);
      for (size_t i = 0; i < n; i++) out[i] = to_f32(static_cast<const T*>(p)[i]);
    });
    return out;
  }
};

// The same input (or output) for each backend: c for the CPU, g for CUDA.
struct Pair {
  Dev c, g;
  Pair(DType d, const std::vector<float>& v) : c(d, v), g(d, v) {}
  Pair(DType d, size_t n) : c(d, n), g(d, n) {}
  void* operator()(bool gpu) const { return gpu ? g.p : c.p; }
  float* f(bool gpu) const { return static_cast<float*>((*this)(gpu)); }
};

// Puts `a` behind the MemoryPool while it lives (cuda_backend() puts device memory there).
struct PoolAllocator {
  Allocator prev;
  explicit PoolAllocator(Allocator a) : prev(MemoryPool::get().set_allocator(a)) {}
  ~PoolAllocator() { MemoryPool::get().set_allocator(prev); }
};

// Runs op on the CPU backend (false) and the CUDA backend (true).
template <class F>
void both(F&& op) {
  op(cpu_backend(), false);
  op(cuda_backend(), true);
  cuda_backend().synchronize();
}

void expect_match(const Pair& p, const std::string& what, double t = 0) {
  Vec c = p.c.values(), g = p.g.values();
  EXPECT_LT(rel_error(g, c), t > 0 ? t : tol(p.c.dt)) << what << " in " << dtype_name(p.c.dt)
                                                      << " (seed " << test::test_seed() << ")";
}

TEST(CudaMatmul, AllTransposesDtypesBiasAndAccumulationMatchCpu) {
  REQUIRE_CUDA();
  const int64_t M = 48, N = 40, K = 24;
  for (DType d : kAll)
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++)
        for (int mode = 0; mode < 3; mode++) {  // plain, bias, bias + accumulate into fp32
          const DType c = mode == 2 ? DType::f32 : d;
          Pair A(d, randn(M * K, 1.0f, 1)), B(d, randn(K * N, 1.0f, 2)), C(c, randn(M * N, 1.0f, 3));
          Pair bias(DType::f32, randn(N, 1.0f, 4));
          both([&](Backend& be, bool g) {
            be.matmul(ta, tb, M, N, K, A(g), ta ? M : K, B(g), tb ? K : N, C(g), N, d, c,
                      mode ? bias.f(g) : nullptr, mode == 2);
          });
          expect_match(C, fmt::format("matmul ta={} tb={} mode={}", ta, tb, mode), tol(c) * (c == DType::f32 ? 10 : 1));
        }
}

// The bias gradient's column sums: with 16-byte loads (OC = 48) and without (50), and over more
// rows (1100) than they take partial sums of (8 per block, at most 128 blocks).
TEST(CudaLinear, ForwardAndBackwardMatchCpu) {
  REQUIRE_CUDA();
  const int64_t IC = 32;
  for (auto [BT, OC] : {std::pair<int64_t, int64_t>{40, 48}, {1100, 50}})
    for (DType d : kAll) {
      Pair x(d, randn(BT * IC, 1.0f, 1)), w(d, randn(OC * IC, 0.2f, 2)), b(DType::f32, randn(OC, 1.0f, 3));
      Pair y(d, BT * OC), dy(d, randn(BT * OC, 1.0f, 4)), dx(d, BT * IC);
      Pair dw(DType::f32, randn(OC * IC, 1.0f, 5)), db(DType::f32, randn(OC, 1.0f, 6));  // +=
      both([&](Backend& be, bool g) {
        be.linear_forward(y(g), x(g), w(g), b.f(g), BT, IC, OC, d);
        be.linear_backward(dx(g), dw.f(g), db.f(g), dy(g), x(g), w(g), BT, IC, OC, d);
      });
      const std::string at = fmt::format(" (BT={}, OC={})", BT, OC);
      expect_match(y, "linear out" + at);
      expect_match(dx, "linear dinp" + at);
      expect_match(dw, "linear dweight" + at, 1e-4);
      expect_match(db, "linear dbias" + at, 1e-4);
    }
}

// The MLP's fc layer with its GELU, and the gradient through the projection into the GELU's
// input: with 4C a multiple of 8 and 16-bit inputs, cuBLASLt's GELU epilogues; otherwise the
// GEMM and the GELU kernels. With and without biases.
TEST(CudaLinearGelu, FusedEpiloguesMatchCpu) {
  REQUIRE_CUDA();
  const int64_t BT = 40, C = 32;
  for (int64_t H : {48, 36})
    for (bool bias : {true, false})
      for (DType d : kAll) {
        Pair x(d, randn(BT * C, 1.0f, 1)), w1(d, randn(H * C, 0.3f, 2)), b1(DType::f32, randn(H, 1.0f, 3));
        Pair pre(d, BT * H), h(d, BT * H), dh(d, BT * H), w2(d, randn(C * H, 0.2f, 4)), dy(d, randn(BT * C, 1.0f, 5));
        Pair dw2(DType::f32, randn(C * H, 1.0f, 6)), db2(DType::f32, randn(C, 1.0f, 7));  // +=
        both([&](Backend& be, bool g) {
          be.linear_gelu_forward(h(g), pre(g), x(g), w1(g), bias ? b1.f(g) : nullptr, BT, C, H, d);
          be.linear_backward_gelu(dh(g), dw2.f(g), bias ? db2.f(g) : nullptr, dy(g), h(g), pre(g), w2(g), BT, H, C, d);
        });
        const std::string at = fmt::format(" (4C={}, bias {})", H, bias);
        expect_match(pre, "fc pre-activation" + at);
        expect_match(h, "fc gelu" + at);
        expect_match(dh, "gradient at the pre-activation" + at);
        expect_match(dw2, "proj dweight" + at, d == DType::f32 ? 1e-4 : tol(d));  // h as each rounded it
        expect_match(db2, "proj dbias" + at, 1e-4);
      }
}

// Widths below and above 48 KiB of per-warp sums in shared memory (96, 1600), and more rows
// (4200) than dw and db take partial sums of (8 per block, at most 512 blocks).
TEST(CudaLayerNorm, ForwardAndBackwardMatchCpu) {
  REQUIRE_CUDA();
  for (auto [N, C] : {std::pair<int64_t, int64_t>{37, 96}, {37, 1600}, {4200, 64}}) {
    for (DType d : kAll) {
      Pair x(DType::f32, randn(N * C, 2.0f, 1)), w(DType::f32, randn(C, 1.0f, 2)), b(DType::f32, randn(C, 1.0f, 3));
      Pair y(d, N * C), mean(DType::f32, N), rstd(DType::f32, N), dy(d, randn(N * C, 1.0f, 4));
      Pair dx(DType::f32, randn(N * C, 1.0f, 5)), dw(DType::f32, randn(C, 1.0f, 6)), db(DType::f32, randn(C, 1.0f, 7));
      Pair copy(d, N * C);
      both([&](Backend& be, bool g) {
        be.layernorm_forward(y(g), mean.f(g), rstd.f(g), x.f(g), w.f(g), b.f(g), N, C, d);
        be.layernorm_backward(dx.f(g), dw.f(g), db.f(g), dy(g), x.f(g), w.f(g), mean.f(g), rstd.f(g), N, C, d,
                              d == DType::f32 ? nullptr : copy(g));
      });
      const std::string at = fmt::format(" (N={}, C={})", N, C);
      if (d != DType::f32) expect_match(copy, "layernorm dinp copy" + at);
      expect_match(y, "layernorm out" + at);
      expect_match(mean, "layernorm mean" + at);
      expect_match(rstd, "layernorm rstd" + at);
      expect_match(dx, "layernorm dinp" + at, 1e-5);
      expect_match(dw, "layernorm dw" + at, 1e-5);
      expect_match(db, "layernorm db" + at, 1e-5);
    }
  }
}

// The Llama family's norm, as LayerNorm: widths below and above 48 KiB of per-warp sums, and more
// rows than dw takes partial sums of.
TEST(CudaRmsNorm, ForwardAndBackwardMatchCpu) {
  REQUIRE_CUDA();
  for (auto [N, C] : {std::pair<int64_t, int64_t>{37, 96}, {37, 4096}, {4200, 64}}) {
    for (DType d : kAll) {
      Pair x(DType::f32, randn(N * C, 2.0f, 1)), w(DType::f32, randn(C, 1.0f, 2));
      Pair y(d, N * C), rstd(DType::f32, N), dy(d, randn(N * C, 1.0f, 4));
      Pair dx(DType::f32, randn(N * C, 1.0f, 5)), dw(DType::f32, randn(C, 1.0f, 6)), copy(d, N * C);
      both([&](Backend& be, bool g) {
        be.rmsnorm_forward(y(g), rstd.f(g), x.f(g), w.f(g), N, C, 1e-6f, d);
        be.rmsnorm_backward(dx.f(g), dw.f(g), dy(g), x.f(g), w.f(g), rstd.f(g), N, C, d,
                            d == DType::f32 ? nullptr : copy(g));
      });
      const std::string at = fmt::format(" (N={}, C={})", N, C);
      if (d != DType::f32) expect_match(copy, "rmsnorm dinp copy" + at);
      expect_match(y, "rmsnorm out" + at);
      expect_match(rstd, "rmsnorm rstd" + at);
      expect_match(dx, "rmsnorm dinp" + at, 1e-5);
      expect_match(dw, "rmsnorm dw" + at, 1e-5);
    }
  }
}

TEST(CudaSwiGlu, ForwardAndBackwardMatchCpu) {
  REQUIRE_CUDA();
  const int64_t N = 37, H = 1001;
  for (DType d : kAll) {
    Pair gu(d, randn(N * 2 * H, 3.0f, 1)), y(d, N * H), dy(d, randn(N * H, 1.0f, 2)), dgu(d, N * 2 * H);
    both([&](Backend& be, bool g) {
      be.swiglu_forward(y(g), gu(g), N, H, d);
      be.swiglu_backward(dgu(g), gu(g), dy(g), N, H, d);
    });
    expect_match(y, "swiglu out");
    expect_match(dgu, "swiglu dgu");
  }
}

// q and k heads of a fused q/k/v row (GQA: 8 q heads, 2 k and 2 v heads of 64), both ways.
TEST(CudaRope, ForwardAndInverseMatchCpu) {
  REQUIRE_CUDA();
  const int64_t B = 2, T = 37, HS = 64, h = HS / 2, stride = 12 * HS;
  std::vector<float> cs(T * h), sn(T * h);
  for (int64_t t = 0; t < T; t++)
    for (int64_t i = 0; i < h; i++) {
      cs[t * h + i] = float(std::cos(t * std::pow(500000.0, -2.0 * i / HS)));
      sn[t * h + i] = float(std::sin(t * std::pow(500000.0, -2.0 * i / HS)));
    }
  Pair c(DType::f32, cs), s(DType::f32, sn);
  for (DType d : kAll)
    for (bool inverse : {false, true}) {
      Pair x(d, randn(B * T * stride, 1.0f, 3));
      both([&](Backend& be, bool g) { be.rope(x(g), c.f(g), s.f(g), B, T, stride, 10, HS, inverse, d); });
      expect_match(x, inverse ? "rope inverse" : "rope");
    }
}

TEST(CudaGelu, ForwardAndBackwardMatchCpu) {
  REQUIRE_CUDA();
  const int64_t n = 10007;
  for (DType d : kAll) {
    Pair x(d, randn(n, 3.0f, 1)), y(d, n), dy(d, randn(n, 1.0f, 2)), dx(d, n);
    both([&](Backend& be, bool g) {
      be.gelu_forward(y(g), x(g), n, d);
      be.gelu_backward(dx(g), x(g), dy(g), n, d);
    });
    expect_match(y, "gelu out");
    expect_match(dx, "gelu dinp");
  }
}

// Head sizes 16 to 128, partial tiles, one token, gpt2's training shape per head (T=1024,
// HS=64: 16 tiles of 64 queries), and grouped queries (2 and 3 query heads per key/value head,
// one key/value head for all).
TEST(CudaAttention, ForwardAndBackwardMatchCpuAcrossTilesAndHeadSizes) {
  REQUIRE_CUDA();
  struct Shape { int64_t B, T, NH, NKV, HS; };
  for (Shape s : {Shape{2, 100, 4, 4, 16}, Shape{1, 130, 2, 2, 64}, Shape{1, 70, 2, 2, 128}, Shape{2, 200, 2, 2, 32},
                  Shape{1, 1, 2, 2, 32}, Shape{1, 1024, 2, 2, 64}, Shape{2, 100, 4, 2, 16}, Shape{1, 150, 6, 2, 64},
                  Shape{1, 70, 4, 1, 32}}) {
    for (DType d : kAll) {
      const int64_t BT = s.B * s.T, C = s.NH * s.HS, W = (s.NH + 2 * s.NKV) * s.HS;
      Pair qkv(d, randn(BT * W, 1.0f, 1)), out(d, BT * C), lse(DType::f32, s.B * s.NH * s.T);
      Pair dout(d, randn(BT * C, 1.0f, 2)), dqkv(d, BT * W);
      both([&](Backend& be, bool g) {
        be.attention_forward(out(g), lse.f(g), qkv(g), s.B, s.T, s.NH, s.NKV, s.HS, d);
        be.attention_backward(dqkv(g), dout(g), qkv(g), out(g), lse.f(g), s.B, s.T, s.NH, s.NKV, s.HS, d);
      });
      std::string what = fmt::format("attention B={} T={} NH={} NKV={} HS={}", s.B, s.T, s.NH, s.NKV, s.HS);
      expect_match(out, what + " out");
      expect_match(lse, what + " lse", 1e-5);
      expect_match(dqkv, what + " dqkv", d == DType::f32 ? 1e-4 : 0);
    }
  }
}

// Tokens that repeat a few times, and one that repeats more often (400) than the kernel takes
// positions at a time (256).
TEST(CudaAttention, DecodeAgainstTheCacheMatchesCpu) {
  REQUIRE_CUDA();
  const int64_t NH = 6, NKV = 2, HS = 64, T = 300, KW = NKV * HS;
  for (DType d : kAll) {
    Pair q(d, randn(NH * HS, 1.0f, 1)), k(d, randn(T * KW, 1.0f, 2)), v(d, randn(T * KW, 1.0f, 3)), out(d, NH * HS);
    Pair scratch(DType::f32, NH * T);
    both([&](Backend& be, bool g) { be.attention_decode(out(g), q(g), k(g), v(g), T, NH, NKV, HS, d, scratch.f(g)); });
    expect_match(out, "attention decode");
  }
}

TEST(CudaEmbedding, ForwardAndBackwardMatchCpuWithRepeatedTokens) {
  REQUIRE_CUDA();
  const int64_t C = 48, Vp = 128;
  for (auto [B, T] : {std::pair<int64_t, int64_t>{3, 20}, {2, 400}}) {
    std::vector<int32_t> tokens(B * T);  // host memory: the backend stages it
    for (size_t i = 0; i < tokens.size(); i++) tokens[i] = T > 100 && i % 2 ? 5 : int32_t((i * 7) % 11);
    Pair wte(DType::f32, randn(Vp * C, 1.0f, 1)), wpe(DType::f32, randn(T * C, 1.0f, 2));
    Pair out(DType::f32, B * T * C), dout(DType::f32, randn(B * T * C, 1.0f, 3));
    Pair dwte(DType::f32, randn(Vp * C, 1.0f, 4)), dwpe(DType::f32, randn(T * C, 1.0f, 5));
    both([&](Backend& be, bool g) {
      be.embedding_forward(out.f(g), tokens.data(), wte.f(g), wpe.f(g), B, T, C, DType::f32);
      be.embedding_backward(dwte.f(g), dwpe.f(g), dout.f(g), tokens.data(), B, T, C);
    });
    expect_match(out, fmt::format("embedding out (T={})", T));
    Pair wte16(DType::bf16, randn(Vp * C, 1.0f, 6)), wpe16(DType::bf16, randn(T * C, 1.0f, 7)), out16(DType::f32, B * T * C);
    both([&](Backend& be, bool g) { be.embedding_forward(out16.f(g), tokens.data(), wte16(g), wpe16(g), B, T, C, DType::bf16); });
    EXPECT_EQ(out16.g.values(), out16.c.values()) << "embedding of a bf16 table (T=" << T << ")";
    // the gradients: each row added in the CPU's order, so the same bits
    EXPECT_EQ(dwte.g.values(), dwte.c.values()) << "embedding dwte (T=" << T << ")";
    EXPECT_EQ(dwpe.g.values(), dwpe.c.values()) << "embedding dwpe (T=" << T << ")";
  }
}

// Logits in each dtype; with a gradient scale, the gradient over them. Rows 16-byte aligned
// (Vp = 1024: read 16 bytes at a time) and not (1003: one logit at a time).
TEST(CudaSoftmaxXent, LossAndGradientMatchCpuWithPadding) {
  REQUIRE_CUDA();
  const int64_t N = 33, V = 1000;
  std::vector<int32_t> targets(N);
  for (int64_t i = 0; i < N; i++) targets[i] = int32_t((i * 37) % V);
  targets[N - 1] = int32_t(V - 1);
  for (int64_t Vp : {1024, 1003})
    for (DType d : kAll)
      for (float scale : {0.0f, 0.25f}) {
        Pair logits(d, randn(N * Vp, 3.0f, 1)), losses(DType::f32, N);
        both([&](Backend& be, bool g) { be.softmax_xent(logits(g), losses.f(g), targets.data(), N, V, Vp, scale, d); });
        const std::string at = fmt::format(" (Vp={})", Vp);
        expect_match(losses, "softmax_xent losses" + at);
        expect_match(logits, (scale != 0.0f ? "softmax_xent dlogits" : "softmax_xent logits untouched") + at);
      }
}

// Ignored rows (target < 0) among counted ones: loss 0 and a zero dlogits row on both.
TEST(CudaSoftmaxXent, NegativeTargetsAreIgnoredAsOnTheCpu) {
  REQUIRE_CUDA();
  const int64_t N = 33, V = 1000;
  std::vector<int32_t> targets(N);
  for (int64_t i = 0; i < N; i++) targets[i] = i % 3 == 1 ? -100 : int32_t((i * 37) % V);
  for (int64_t Vp : {1024, 1003})
    for (DType d : kAll)
      for (float scale : {0.0f, 0.25f}) {
        Pair logits(d, randn(N * Vp, 3.0f, 1)), losses(DType::f32, randn(N, 1.0f, 2));
        both([&](Backend& be, bool g) { be.softmax_xent(logits(g), losses.f(g), targets.data(), N, V, Vp, scale, d); });
        const std::string at = fmt::format(" with ignored rows (Vp={})", Vp);
        expect_match(losses, "softmax_xent losses" + at);
        expect_match(logits, "softmax_xent dlogits" + at);
        const Vec l = losses.g.values(), x = logits.g.values();
        for (int64_t i = 1; i < N; i += 3) {
          EXPECT_EQ(l[i], 0.0) << "row " << i << at;
          if (scale == 0.0f) continue;
          for (int64_t v = 0; v < Vp; v++) ASSERT_EQ(x[i * Vp + v], 0.0) << "row " << i << at;
        }
      }
}

// A host QuantTensor's buffers in managed memory, which both backends read.
struct ManagedQuant {
  void *q = nullptr, *absmax = nullptr, *scale = nullptr;
  QuantView v;
  explicit ManagedQuant(const QuantTensor& t) : v(t.view()) {
    auto put = [](void*& p, const void* src, size_t bytes) {
      EXPECT_EQ(cudaMallocManaged(&p, std::max<size_t>(bytes, 1)), cudaSuccess);
      std::memcpy(p, src, bytes);
    };
    put(q, t.q.data(), t.q.size());
    put(absmax, t.absmax.data(), t.absmax.size());
    put(scale, t.scale.data(), t.scale.size() * sizeof(float));
    v.q = static_cast<const uint8_t*>(q);
    v.absmax = t.absmax.empty() ? nullptr : static_cast<const uint8_t*>(absmax);
    v.scale = static_cast<const float*>(scale);
  }
  ManagedQuant(const ManagedQuant&) = delete;
  ~ManagedQuant() { cudaFree(q); cudaFree(absmax); cudaFree(scale); }
};

// Windows of NF4 and int8 matrices dequantized into each dtype: the CPU's values bit for bit,
// with 8 values per thread (aligned windows of 200 columns) and one (the others).
TEST(CudaDequantize, WindowsMatchCpuBitForBit) {
  REQUIRE_CUDA();
  for (int64_t C : {200, 100}) {
    const int64_t R = 40;
    const auto w = randn(R * C, 0.02f, 1);
    for (const QuantTensor& t : {quantize_nf4(w.data(), R, C), quantize_int8(w.data(), R, C)}) {
      ManagedQuant mq(t);
      for (DType d : kAll)
        for (const std::array<int64_t, 4>& wd : {std::array<int64_t, 4>{0, R, 0, C}, {3, 20, 24, 64}, {5, 17, 5, 77}}) {
          const int64_t row0 = wd[0], rows = wd[1], col0 = wd[2], cols = wd[3];
          Pair out(d, size_t(rows * cols));
          both([&](Backend& be, bool g) { be.dequantize(out(g), mq.v, row0, rows, col0, cols, d); });
          EXPECT_EQ(out.g.values(), out.c.values()) << quant_format_name(t.format) << " in " << dtype_name(d)
                                                    << ", C=" << C << ", rows [" << row0 << ", +" << rows << ") cols ["
                                                    << col0 << ", +" << cols << ")";
        }
    }
  }
}

// The quantized linear layers, several panels each way (IC = 1000, OC = 2500: 2048 + 452 rows
// forward, 768 + 232 columns backward).
TEST(CudaQuantLinear, ForwardAndBackwardMatchCpu) {
  REQUIRE_CUDA();
  const int64_t BT = 5, IC = 1000, OC = 2500;
  const auto wf = randn(OC * IC, 0.02f, 1);
  for (const QuantTensor& t : {quantize_nf4(wf.data(), OC, IC), quantize_int8(wf.data(), OC, IC)}) {
    ManagedQuant mq(t);
    for (DType d : kAll) {
      Pair x(d, randn(BT * IC, 1.0f, 2)), dy(d, randn(BT * OC, 1.0f, 3)), b(DType::f32, randn(OC, 1.0f, 4));
      Pair y(d, BT * OC), dx(d, BT * IC), ws(d, size_t(quant_panel_rows(IC, OC) * IC));
      both([&](Backend& be, bool g) {
        quant_linear_forward(be, y(g), x(g), {mq.v}, b.f(g), ws(g), BT, IC, OC, d);
        quant_linear_backward(be, dx(g), dy(g), {mq.v}, ws(g), BT, IC, OC, d);
      });
      expect_match(y, fmt::format("quant linear out ({})", quant_format_name(t.format)));
      expect_match(dx, fmt::format("quant linear dinp ({})", quant_format_name(t.format)));
    }
  }
}

TEST(CudaElementwise, AddCastSumsAdamWMatchCpu) {
  REQUIRE_CUDA();
  const int64_t n = 100003;
  for (DType d : kAll) {
    Pair a(DType::f32, randn(n, 1.0f, 1)), b(d, randn(n, 1.0f, 2)), out(DType::f32, n), c(d, n);
    Pair sc(d, randn(n, 1.0f, 7)), dr(d, randn(n, 1.0f, 8)), dra(d, randn(n, 1.0f, 9));
    both([&](Backend& be, bool g) {
      be.add(out.f(g), a.f(g), b(g), n, d);
      be.cast(c(g), a.f(g), n, d);
      be.scale(sc(g), 0.37f, n, d);
      be.dropout(dr(g), b(g), n, 0.1f, 99, false, d);
      be.dropout(dra(g), b(g), n, 0.1f, 99, true, d);
    });
    EXPECT_EQ(dr.g.values(), dr.c.values()) << "dropout in " << dtype_name(d);  // the same mask, one product
    EXPECT_EQ(dra.g.values(), dra.c.values()) << "dropout += in " << dtype_name(d);
    expect_match(out, "add");
    expect_match(c, "cast", 1e-7);  // round to nearest even on both: identical
    EXPECT_EQ(sc.g.values(), sc.c.values()) << "scale in " << dtype_name(d);  // one fp32 product, rounded once
  }
  Pair x(DType::f32, randn(n, 1.0f, 3)), gr(DType::f32, randn(n, 1.0f, 4)), m(DType::f32, randn(n, 0.1f, 5));
  std::vector<float> v0 = randn(n, 0.1f, 6);
  for (auto& e : v0) e = e * e;
  Pair v(DType::f32, v0), copy(DType::bf16, n);
  double sq[2], s[2];
  // spans of every size class, decayed or not, with the compute copy or without (left zero)
  const int64_t cut[5] = {0, 5, 4096 + 7, 60000, n};
  both([&](Backend& be, bool g) {
    auto* c = static_cast<uint16_t*>(copy(g));
    std::vector<AdamWSpan> spans;
    for (int k = 0; k < 4; k++)
      spans.push_back({x.f(g) + cut[k], gr.f(g) + cut[k], m.f(g) + cut[k], v.f(g) + cut[k], cut[k + 1] - cut[k],
                       k % 2 == 0, k == 3 ? nullptr : c + cut[k]});
    for (int step = 1; step <= 3; step++) {  // the learning rate changes, as under a schedule
#if defined(FRUGAL_CUDA_EMU)
      const int copies = emu::blocking_copies;
#endif
      be.adamw(spans, {1e-3f * float(step), 0.9f, 0.95f, 1e-8f, 0.1f, step, 0.5f}, DType::bf16);
#if defined(FRUGAL_CUDA_EMU)
      if (g && step > 1) {
        EXPECT_EQ(emu::blocking_copies, copies) << "adamw re-sent its span table at step " << step;
      }
#endif
    }
    sq[g] = be.sum_squares(x.f(g), n);
    s[g] = be.sum(x.f(g), n);
  });
  expect_match(x, "adamw param (gradients x 0.5)");
  expect_match(copy, "adamw compute copy", 1e-7);
  expect_match(m, "adamw m");
  expect_match(v, "adamw v");
  EXPECT_NEAR(sq[1], sq[0], 1e-9 * sq[0]);
  EXPECT_NEAR(s[1], s[0], 1e-9 * std::abs(sq[0]));
  // the overflow check: inf and NaN propagate through the sum of squares
  x.g.f()[12345] = INFINITY;
  EXPECT_TRUE(std::isinf(cuda_backend().sum_squares(x.g.f(), n)));
  x.g.f()[12345] = NAN;
  EXPECT_TRUE(std::isnan(cuda_backend().sum_squares(x.g.f(), n)));
  cuda_backend().fill_zero(x.g.f(), n);
  EXPECT_EQ(cuda_backend().sum_squares(x.g.f(), n), 0.0);
}

// The tiny model over the test stream's 97 ids.
ModelConfig tiny_model() {
  ModelConfig cfg = model_preset("tiny", "test");
  cfg.vocab_size = 97;
  return cfg;
}
// The llama family's: grouped queries, rotary positions, RMSNorm, SwiGLU, q/k/v biases, an
// untied head.
ModelConfig tiny_llama() {
  ModelConfig cfg = model_preset("llama-tiny", "test");
  cfg.vocab_size = 97;
  cfg.attention_bias = true;
  return cfg;
}
// A step's micro-batches: consecutive windows of the test stream from `next` on.
auto windows(const TrainSettings& t, int64_t& next) {
  return [&t, &next](int32_t* in, int32_t* tg) {
    for (int b = 0; b < t.micro_batch; b++) test::stream_window(next++, t.seq_len, in + b * t.seq_len, tg + b * t.seq_len);
  };
}

// A tiny model trained on both backends from one init and one token stream: the losses match
// step by step, and the CUDA run allocates nothing after its first step. The adapted models'
// documents are masked apart (Model::set_documents), as records cut after each id 5.
TEST(CudaTraining, TinyModelLossesMatchCpuAndNothingIsAllocatedAfterTheFirstStep) {
  REQUIRE_CUDA();
  const int steps = 12;
  ModelConfig lora = tiny_model(), qlora = tiny_llama();  // adapters on every module; an nf4 base
  lora.lora.rank = qlora.lora.rank = 4;
  lora.lora.targets = {"c_attn", "c_proj", "c_fc"};
  qlora.lora.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  qlora.lora.base = BaseFormat::nf4;
  for (const ModelConfig& cfg : {tiny_model(), tiny_llama(), lora, qlora})
  for (DType d : kAll) {
    SCOPED_TRACE(fmt::format("{} lora {} {}", family_name(cfg.family), cfg.lora.rank, base_format_name(cfg.lora.base)));
    TrainSettings t;
    t.seq_len = 64;
    t.micro_batch = 4;
    t.steps = steps;
    t.warmup_steps = 2;
    PrecisionSettings p;
    p.compute = d;
    p.loss_scale = 1024;
    auto comm = make_local_comm();
    std::vector<float> losses[2];
    size_t pool_after_first = 0, free_after_first = 0;
    for (int g = 0; g < 2; g++) {
      Backend& be = g ? cuda_backend() : cpu_backend();
      std::optional<PoolAllocator> host;  // the CPU run in host memory
      if (g == 0) host.emplace(host_allocator());
      Model model(cfg, be, d);
      model.init(7);
      const int32_t sep = cfg.lora.on() ? 5 : -1;
      model.set_documents(sep, true);
      Stepper stepper(model, be, *comm, t, 2, p);
      int64_t window = 0;
      auto batch = [&, next = windows(t, window)](int32_t* in, int32_t* tg) {
        next(in, tg);
        if (sep >= 0) mask_document_starts(in, tg, int64_t(t.micro_batch) * t.seq_len, sep);
      };
      for (int step = 0; step < steps; step++) {
        StepStats st = stepper.step(step, batch);
        losses[g].push_back(st.loss);
        if (g == 1) {
          be.synchronize();
          size_t free_b = 0, total = 0;
          ASSERT_EQ(cudaMemGetInfo(&free_b, &total), cudaSuccess);
          size_t pool = MemoryPool::get().stats().total_current;
          if (step == 0) {
            pool_after_first = pool;
            free_after_first = free_b;
          } else {
            EXPECT_EQ(pool, pool_after_first) << "pool bytes changed at step " << step + 1;
            EXPECT_EQ(free_b, free_after_first) << "device memory changed at step " << step + 1;
          }
        }
      }
    }
    // fp32: only the order of sums differs (GEMMs, LayerNorm's dw and db, biases); 16-bit: roundings
    const double t_loss = d == DType::f32 ? 5e-4 : d == DType::bf16 ? 2e-2 : 1e-2;
    for (int s = 0; s < steps; s++)
      EXPECT_NEAR(losses[1][s], losses[0][s], t_loss * losses[0][s]) << "step " << s + 1 << " in " << dtype_name(d);
    EXPECT_LT(losses[1].back(), losses[1].front()) << "the CUDA run learns in " << dtype_name(d);
  }
}

// The same run twice gives the same bits: every loss, weight and AdamW moment. No kernel adds
// floats in an order that depends on which block runs first (on the emulated device, blocks
// run in a different shuffled order at every launch).
TEST(CudaTraining, SameRunTwiceGivesBitIdenticalLossesWeightsAndMoments) {
  REQUIRE_CUDA();
  for (const ModelConfig& cfg : {tiny_model(), tiny_llama()}) {
  TrainSettings t;
  t.seq_len = 64;
  t.micro_batch = 4;
  t.steps = 3;
  PrecisionSettings p;
  p.compute = DType::bf16;
  auto comm = make_local_comm();
  std::vector<float> losses[2], state[2];
  for (int run = 0; run < 2; run++) {
    Model model(cfg, cuda_backend(), p.compute);
    model.init(7);
    Stepper st(model, cuda_backend(), *comm, t, 2, p);
    int64_t window = 0;
    for (int step = 0; step < t.steps; step++)
      losses[run].push_back(st.step(step, windows(t, window)).loss);
    for (size_t u = 0; u < model.units().size(); u++) {
      const Unit& unit = model.units()[u];
      for (const float* buf : {unit.params.data(), st.optimizer().m(u).data(), st.optimizer().v(u).data()}) {
        std::vector<float> host(size_t(unit.numel));
        cuda_backend().copy(host.data(), buf, host.size() * sizeof(float));
        state[run].insert(state[run].end(), host.begin(), host.end());
      }
    }
  }
  EXPECT_EQ(losses[1], losses[0]) << family_name(cfg.family);
  ASSERT_EQ(state[1].size(), state[0].size());
  EXPECT_EQ(std::memcmp(state[1].data(), state[0].data(), state[0].size() * sizeof(float)), 0)
      << "weights or AdamW moments differ between two identical runs of " << family_name(cfg.family);
  }
}

// A released device block serves the next request of its size, zero-filled again on the device
// (all of it: 100 bytes are a 128-byte block).
TEST(CudaPool, KeptDeviceBlocksComeBackZeroFilled) {
  REQUIRE_CUDA();
  Backend& be = cuda_backend();
  const std::vector<float> ones(25, 1.0f);
  float* first;
  {
    PoolArray<float> a(25, Mem::comm);
    first = a.data();
    be.copy(a.data(), ones.data(), 100);
  }
  PoolArray<float> b(25, Mem::comm);
  EXPECT_EQ(b.data(), first);
  std::vector<float> back(25, 7.0f);
  be.synchronize();
  be.copy(back.data(), b.data(), 100);
  EXPECT_EQ(back, std::vector<float>(25, 0.0f));
}

#if defined(FRUGAL_CUDA_EMU)
// After the first step, a step makes the host wait for the whole device once per micro-batch
// (its loss) and once for the gradient norm, nothing more: every wait drains the GPU's queue.
// zero3 allocates and releases its gather and gradient buffers around every block; the pool
// hands out the device blocks it kept: no cudaMalloc, and no cudaFree (which waits).
TEST(CudaStep, WaitsForTheDeviceOncePerMicroBatchAndOnceMoreAndAllocatesNoDeviceMemory) {
  const ModelConfig cfg = tiny_model();
  TrainSettings t;
  t.seq_len = 32;
  t.micro_batch = 2;
  t.steps = 3;
  const int accum = 2;
  PrecisionSettings p;
  p.compute = DType::bf16;
  auto comm = make_local_comm();
  for (Strategy s : {Strategy::ddp, Strategy::zero3}) {
    Model model(cfg, cuda_backend(), DType::bf16, model_owns(s));
    Stepper st(model, cuda_backend(), *comm, t, accum, p, {}, s);
    st.init_weights(7);
    int64_t window = 0;
    for (int step = 0; step < t.steps; step++) {
      const size_t pool_allocs = MemoryPool::get().stats().allocations;
      const int mallocs = emu::device_mallocs, frees = emu::device_frees, waits = emu::device_waits;
      st.step(step, windows(t, window));
      if (step == 0) continue;
      const std::string what = fmt::format("{} step {}", strategy_name(s), step + 1);
      EXPECT_EQ(emu::device_waits - waits, accum + 1) << what;
      EXPECT_EQ(emu::device_mallocs, mallocs) << what;
      EXPECT_EQ(emu::device_frees, frees) << what;
      if (s == Strategy::zero3) {
        EXPECT_GT(MemoryPool::get().stats().allocations, pool_allocs) << what;
      }
    }
  }
}
#endif

}  // namespace
}  // namespace frugal
