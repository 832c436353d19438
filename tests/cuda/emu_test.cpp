// frugal's own CUDA kernels, run on the CPU under tests/cuda/emu.h, against the CPU backend on
// the same random inputs: the kernels' indexing, masking, tiling, barriers and shuffles are
// checked on every CI run, GPU or not (tests/cuda/cuda_test.cpp checks them, and cuBLASLt, on
// a GPU). Tolerances are cuda_test.cpp's: the emulation computes in fp32 as the GPU does.
#include <fmt/format.h>

#include "backend/backend.h"
#include "support/support.h"

// The kernels, compiled as C++ for the emulated device (after the test's own headers: emu.h
// defines CUDA's keywords as macros).
#include "cuda/emu.h"
#include "backend/cuda/attention.cu"
#include "backend/cuda/elementwise.cu"
#include "backend/cuda/embedding.cu"
#include "backend/cuda/gelu.cu"
#include "backend/cuda/layernorm.cu"
#include "backend/cuda/softmax_xent.cu"

namespace frugal {
namespace {

using test::randn;
using test::rel_error;
using Vec = std::vector<double>;
const DType kAll[] = {DType::f32, DType::bf16, DType::f16};

double tol(DType d) { return d == DType::f32 ? 1e-5 : d == DType::bf16 ? 1e-2 : 2e-3; }

// n values in dtype d made from fp32 values (rounded), in host memory (the emulated device's).
struct Buf {
  DType dt;
  std::vector<uint8_t> bytes;
  Buf(DType d, const std::vector<float>& v) : dt(d), bytes(std::max<size_t>(1, v.size()) * dtype_size(d)) {
    dispatch(d, [&](auto t) {
      for (size_t i = 0; i < v.size(); i++) static_cast<decltype(t)*>(p())[i] = from_f32<decltype(t)>(v[i]);
    });
  }
  void* p() { return bytes.data(); }
  float* f() { return static_cast<float*>(p()); }
  Vec values() {
    Vec out(bytes.size() / dtype_size(dt));
    dispatch(dt, [&](auto t) {
      for (size_t i = 0; i < out.size(); i++) out[i] = to_f32(static_cast<decltype(t)*>(p())[i]);
    });
    return out;
  }
};

// The same values for the CPU backend (c) and the emulated kernels (g).
struct Pair {
  Buf c, g;
  Pair(DType d, const std::vector<float>& v) : c(d, v), g(d, v) {}
  Pair(DType d, size_t n) : Pair(d, std::vector<float>(n, 0.0f)) {}
};

void expect_match(Pair& p, const std::string& what, double t = 0) {
  EXPECT_LT(rel_error(p.g.values(), p.c.values()), t > 0 ? t : tol(p.c.dt))
      << what << " in " << dtype_name(p.c.dt) << " (seed " << test::test_seed() << ")";
}

Backend& cpu() { return cpu_backend(); }

TEST(CudaEmulated, AttentionForwardAndBackwardMatchCpuAcrossTilesAndHeadSizes) {
  struct Shape { int64_t B, T, C, NH; };
  for (Shape s : {Shape{2, 100, 64, 4}, Shape{1, 130, 128, 2}, Shape{1, 70, 256, 2}, Shape{2, 200, 64, 2},
                  Shape{1, 64, 128, 2}, Shape{1, 1, 64, 2}}) {
    for (DType d : kAll) {
      const int64_t BT = s.B * s.T;
      Pair qkv(d, randn(BT * 3 * s.C, 1.0f, 1)), out(d, BT * s.C), lse(DType::f32, s.B * s.NH * s.T);
      Pair dout(d, randn(BT * s.C, 1.0f, 2)), dqkv(d, BT * 3 * s.C);
      std::vector<float> D(s.B * s.NH * s.T);
      cpu().attention_forward(out.c.p(), lse.c.f(), qkv.c.p(), s.B, s.T, s.C, s.NH, d);
      cpu().attention_backward(dqkv.c.p(), dout.c.p(), qkv.c.p(), out.c.p(), lse.c.f(), s.B, s.T, s.C, s.NH, d);
      launch_attention_forward(out.g.p(), lse.g.f(), qkv.g.p(), s.B, s.T, s.C, s.NH, d);
      launch_attention_backward(dqkv.g.p(), dout.g.p(), qkv.g.p(), out.g.p(), lse.g.f(), D.data(), s.B, s.T, s.C, s.NH, d);
      std::string what = fmt::format("attention B={} T={} C={} NH={}", s.B, s.T, s.C, s.NH);
      expect_match(out, what + " out");
      expect_match(lse, what + " lse", 1e-5);
      expect_match(dqkv, what + " dqkv", d == DType::f32 ? 1e-4 : 0);
    }
  }
}

TEST(CudaEmulated, LayerNormForwardAndBackwardMatchCpu) {
  for (int64_t C : {96, 1600}) {
    const int64_t N = 37;
    for (DType d : kAll) {
      Pair x(DType::f32, randn(N * C, 2.0f, 1)), w(DType::f32, randn(C, 1.0f, 2)), b(DType::f32, randn(C, 1.0f, 3));
      Pair y(d, N * C), mean(DType::f32, N), rstd(DType::f32, N), dy(d, randn(N * C, 1.0f, 4));
      Pair dx(DType::f32, randn(N * C, 1.0f, 5)), dw(DType::f32, randn(C, 1.0f, 6)), db(DType::f32, randn(C, 1.0f, 7));
      cpu().layernorm_forward(y.c.p(), mean.c.f(), rstd.c.f(), x.c.f(), w.c.f(), b.c.f(), N, C, d);
      cpu().layernorm_backward(dx.c.f(), dw.c.f(), db.c.f(), dy.c.p(), x.c.f(), w.c.f(), mean.c.f(), rstd.c.f(), N, C, d);
      launch_layernorm_forward(y.g.p(), mean.g.f(), rstd.g.f(), x.g.f(), w.g.f(), b.g.f(), N, C, d);
      launch_layernorm_backward(dx.g.f(), dw.g.f(), db.g.f(), dy.g.p(), x.g.f(), w.g.f(), mean.g.f(), rstd.g.f(), N, C, d);
      expect_match(y, "layernorm out");
      expect_match(mean, "layernorm mean");
      expect_match(rstd, "layernorm rstd");
      expect_match(dx, "layernorm dinp", 1e-5);
      expect_match(dw, "layernorm dw", 1e-5);
      expect_match(db, "layernorm db", 1e-5);
    }
  }
}

TEST(CudaEmulated, GeluForwardAndBackwardMatchCpu) {
  const int64_t n = 3001;
  for (DType d : kAll) {
    Pair x(d, randn(n, 3.0f, 1)), y(d, n), dy(d, randn(n, 1.0f, 2)), dx(d, n);
    cpu().gelu_forward(y.c.p(), x.c.p(), n, d);
    cpu().gelu_backward(dx.c.p(), x.c.p(), dy.c.p(), n, d);
    launch_gelu_forward(y.g.p(), x.g.p(), n, d);
    launch_gelu_backward(dx.g.p(), x.g.p(), dy.g.p(), n, d);
    expect_match(y, "gelu out");
    expect_match(dx, "gelu dinp");
  }
}

TEST(CudaEmulated, EmbeddingForwardAndBackwardMatchCpuWithRepeatedTokens) {
  const int64_t B = 3, T = 20, C = 48, Vp = 128;
  std::vector<int32_t> tokens(B * T);
  for (size_t i = 0; i < tokens.size(); i++) tokens[i] = int32_t((i * 7) % 11);
  Pair wte(DType::f32, randn(Vp * C, 1.0f, 1)), wpe(DType::f32, randn(T * C, 1.0f, 2));
  Pair out(DType::f32, B * T * C), dout(DType::f32, randn(B * T * C, 1.0f, 3));
  Pair dwte(DType::f32, randn(Vp * C, 1.0f, 4)), dwpe(DType::f32, randn(T * C, 1.0f, 5));
  cpu().embedding_forward(out.c.f(), tokens.data(), wte.c.f(), wpe.c.f(), B, T, C);
  cpu().embedding_backward(dwte.c.f(), dwpe.c.f(), dout.c.f(), tokens.data(), B, T, C);
  launch_embedding_forward(out.g.f(), tokens.data(), wte.g.f(), wpe.g.f(), B, T, C);
  launch_embedding_backward(dwte.g.f(), dwpe.g.f(), dout.g.f(), tokens.data(), B, T, C);
  expect_match(out, "embedding out");
  expect_match(dwte, "embedding dwte");
  expect_match(dwpe, "embedding dwpe");
}

TEST(CudaEmulated, SoftmaxXentLossAndInPlaceGradientMatchCpuWithPadding) {
  const int64_t N = 9, V = 1000, Vp = 1024;
  std::vector<int32_t> targets(N);
  for (int64_t i = 0; i < N; i++) targets[i] = int32_t((i * 37) % V);
  for (float scale : {0.0f, 0.25f}) {
    Pair logits(DType::f32, randn(N * Vp, 3.0f, 1)), losses(DType::f32, N);
    cpu().softmax_xent(logits.c.f(), losses.c.f(), targets.data(), N, V, Vp, scale);
    launch_softmax_xent(logits.g.f(), losses.g.f(), targets.data(), N, V, Vp, scale);
    expect_match(losses, "softmax_xent losses");
    expect_match(logits, scale != 0.0f ? "softmax_xent dlogits" : "softmax_xent logits untouched");
  }
}

TEST(CudaEmulated, AddCastSumsAdamWMatchCpu) {
  const int64_t n = 5003;
  for (DType d : kAll) {
    Pair a(DType::f32, randn(n, 1.0f, 1)), b(d, randn(n, 1.0f, 2)), out(DType::f32, n), c(d, n);
    cpu().add(out.c.f(), a.c.f(), b.c.p(), n, d);
    cpu().cast(c.c.p(), a.c.f(), n, d);
    launch_add(out.g.f(), a.g.f(), b.g.p(), n, d);
    launch_cast(c.g.p(), a.g.f(), n, d);
    expect_match(out, "add");
    expect_match(c, "cast", 1e-7);
  }
  for (DType copy_dt : {DType::f32, DType::bf16}) {
    Pair x(DType::f32, randn(n, 1.0f, 3)), gr(DType::f32, randn(n, 1.0f, 4)), m(DType::f32, randn(n, 0.1f, 5));
    std::vector<float> v0 = randn(n, 0.1f, 6);
    for (auto& e : v0) e = e * e;
    Pair v(DType::f32, v0), copy(copy_dt, n);
    const bool with_copy = copy_dt != DType::f32;
    for (int step = 1; step <= 3; step++) {
      AdamWArgs a{1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, step, 0.5f};
      cpu().adamw(x.c.f(), gr.c.f(), m.c.f(), v.c.f(), n, a, with_copy ? copy.c.p() : nullptr, copy_dt);
      // the CUDA backend's bias corrections (backend.cpp)
      const float bc1 = 1.0f - std::pow(a.beta1, float(step)), bc2 = 1.0f - std::pow(a.beta2, float(step));
      launch_adamw(x.g.f(), gr.g.f(), m.g.f(), v.g.f(), n, a.beta1, a.beta2, a.eps, a.lr / bc1,
                   1.0f - a.lr * a.weight_decay, std::sqrt(bc2), a.grad_scale, with_copy ? copy.g.p() : nullptr, copy_dt);
    }
    expect_match(x, "adamw param (gradients x 0.5)");
    expect_match(m, "adamw m");
    expect_match(v, "adamw v");
    if (with_copy) expect_match(copy, "adamw compute copy", 1e-7);
  }
  std::vector<float> x = randn(n, 1.0f, 7);
  for (bool squares : {false, true}) {
    double got = 0;
    launch_reduce(&got, x.data(), n, squares);
    double want = squares ? cpu().sum_squares(x.data(), n) : cpu().sum(x.data(), n);
    EXPECT_NEAR(got, want, 1e-9 * n) << (squares ? "sum of squares" : "sum");
  }
  x[1234] = NAN;
  double got = 0;
  launch_reduce(&got, x.data(), n, true);
  EXPECT_TRUE(std::isnan(got)) << "NaN propagates through the sum of squares";
}

// The GEMM helpers: a bias added to rows of a strided matrix, and column sums (dbias).
TEST(CudaEmulated, BiasAndColumnSumsMatchAFloat64Reference) {
  const int64_t M = 37, N = 45, ldc = 50;
  for (DType d : kAll) {
    Pair C(d, randn(M * ldc, 1.0f, 1)), bias(DType::f32, randn(N, 1.0f, 2));
    Vec want = C.g.values();
    for (int64_t r = 0; r < M; r++)
      for (int64_t j = 0; j < N; j++) want[r * ldc + j] += bias.g.f()[j];
    launch_add_bias(C.g.p(), bias.g.f(), M, N, ldc, d);
    EXPECT_LT(rel_error(C.g.values(), want), tol(d)) << "add_bias in " << dtype_name(d);
    Pair x(d, randn(M * N, 1.0f, 3)), acc(DType::f32, randn(N, 1.0f, 4));
    Vec sums = acc.g.values(), xs = x.g.values();
    for (int64_t r = 0; r < M; r++)
      for (int64_t j = 0; j < N; j++) sums[j] += xs[r * N + j];
    launch_column_sums(acc.g.f(), x.g.p(), M, N, d);
    EXPECT_LT(rel_error(acc.g.values(), sums), 1e-6) << "column_sums in " << dtype_name(d);
  }
}

}  // namespace
}  // namespace frugal
