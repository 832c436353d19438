// Every CPU kernel, forward and backward, in fp32, bf16 and fp16, against float64 references
// on fresh random inputs; backward against central finite differences of the float64 forward.
//
// Inputs are rounded to the dtype under test first, so the reference sees exactly what the
// kernel sees. What is asserted, per dtype (relative error of a whole tensor, ||x - ref|| /
// ||ref||, for the 16-bit types; elementwise for fp32):
//  - fp32: elementwise 1e-5 forward, 1e-4 against finite differences;
//  - bf16 (8 mantissa bits, one rounding = 2^-9 = 2e-3 relative): 1e-2, the rounding of the
//    output plus that of the intermediates a kernel stores (attention's probabilities);
//  - fp16 (11 bits, 2^-12 = 2.4e-4): 2e-3 for the same reasons.
#include <fstream>
#include <functional>

#include <fmt/format.h>
#include <oneapi/dnnl/dnnl.hpp>

#include "backend/backend.h"
#include "backend/cpu/cpu.h"
#include "core/quant.h"
#include "support/support.h"

namespace frugal {
namespace {

using test::all_close;
using test::randn;
using Vec = std::vector<double>;

Backend& be() { return cpu_backend(); }
const DType kAll[] = {DType::f32, DType::bf16, DType::f16};

double tol16(DType d) { return d == DType::bf16 ? 1e-2 : 2e-3; }

// A buffer in dtype d, made from fp32 values (rounded), and read back as float64.
struct Buf {
  DType dt;
  std::vector<uint8_t> bytes;
  Buf(DType d, const std::vector<float>& v) : dt(d), bytes(v.size() * dtype_size(d)) {
    dispatch(d, [&](auto t) {
      using T = decltype(t);
      for (size_t i = 0; i < v.size(); i++) reinterpret_cast<T*>(bytes.data())[i] = from_f32<T>(v[i]);
    });
  }
  Buf(DType d, size_t n) : Buf(d, std::vector<float>(n, 0.0f)) {}
  void* data() { return bytes.data(); }
  Vec values() const {
    Vec out(bytes.size() / dtype_size(dt));
    dispatch(dt, [&](auto t) {
      using T = decltype(t);
      for (size_t i = 0; i < out.size(); i++) out[i] = to_f32(reinterpret_cast<const T*>(bytes.data())[i]);
    });
    return out;
  }
};

Vec to_d(const std::vector<float>& v) { return Vec(v.begin(), v.end()); }

// Checks a kernel output against its float64 reference with the tolerance of dtype d.
template <class A>
void expect_close(DType d, const A& got, const Vec& ref, double rtol32, double atol32, const std::string& what) {
  if (d == DType::f32) {
    EXPECT_TRUE(all_close(got, ref, rtol32, atol32)) << what;
  } else {
    EXPECT_LT(test::rel_error(got, ref), tol16(d)) << what << " in " << dtype_name(d);
  }
}

// d/dx of f at x by central differences (f is a float64 scalar function). h = 1e-5 balances the
// h^2 truncation against the rounding of f, eps |f| / h: with 1e-6 the rounding alone reached
// 0.45 of attention's 1e-6 + 1e-8 check over 40 random seeds and failed one run in 360 here.
Vec fd_grad(const std::function<double(const Vec&)>& f, Vec x, double h = 1e-5) {
  Vec g(x.size());
  for (size_t i = 0; i < x.size(); i++) {
    double keep = x[i];
    x[i] = keep + h;
    double up = f(x);
    x[i] = keep - h;
    double down = f(x);
    x[i] = keep;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
  return s;
}

// ---- references (float64) ----------------------------------------------------------------
Vec ref_matmul(bool ta, bool tb, int M, int N, int K, const Vec& A, const Vec& B) {
  Vec C(size_t(M) * N);
  for (int i = 0; i < M; i++)
    for (int j = 0; j < N; j++) {
      double s = 0;
      for (int k = 0; k < K; k++) s += (ta ? A[k * M + i] : A[i * K + k]) * (tb ? B[j * K + k] : B[k * N + j]);
      C[i * N + j] = s;
    }
  return C;
}

Vec ref_layernorm(const Vec& x, const Vec& w, const Vec& b, int N, int C) {
  Vec y(x.size());
  for (int i = 0; i < N; i++) {
    double m = 0, v = 0;
    for (int c = 0; c < C; c++) m += x[i * C + c];
    m /= C;
    for (int c = 0; c < C; c++) v += (x[i * C + c] - m) * (x[i * C + c] - m);
    v /= C;
    for (int c = 0; c < C; c++) y[i * C + c] = (x[i * C + c] - m) / std::sqrt(v + 1e-5) * w[c] + b[c];
  }
  return y;
}

double ref_gelu(double x) {
  return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}

// Grouped-query attention: rows of qkv hold NH query heads, NKV key heads, NKV value heads.
struct HeadsRef {
  int NH, NKV, HS;
  int W() const { return (NH + 2 * NKV) * HS; }
  int C() const { return NH * HS; }
  // element k of head h's q (part 0), k (1) or v (2) in row (b, t)
  size_t at(int T, int b, int t, int part, int h, int k) const {
    const int kv = h / (NH / NKV);
    const int head = part == 0 ? h : part == 1 ? NH + kv : NH + NKV + kv;
    return size_t((b * T + t) * W() + head * HS + k);
  }
};

Vec ref_attention(const Vec& qkv, int B, int T, HeadsRef hd) {
  const int HS = hd.HS, C = hd.C();
  Vec out(size_t(B) * T * C, 0.0);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < hd.NH; h++)
      for (int t = 0; t < T; t++) {
        Vec s(t + 1);
        double mx = -1e300;
        for (int u = 0; u <= t; u++) {
          double d = 0;
          for (int k = 0; k < HS; k++) d += qkv[hd.at(T, b, t, 0, h, k)] * qkv[hd.at(T, b, u, 1, h, k)];
          s[u] = d / std::sqrt(double(HS));
          mx = std::max(mx, s[u]);
        }
        double z = 0;
        for (auto& e : s) z += (e = std::exp(e - mx));
        for (int u = 0; u <= t; u++)
          for (int k = 0; k < HS; k++) out[(b * T + t) * C + h * HS + k] += s[u] / z * qkv[hd.at(T, b, u, 2, h, k)];
      }
  return out;
}

// d(sum G * attention(qkv))/d qkv, analytically in float64 with explicit probabilities.
Vec ref_attention_backward(const Vec& qkv, const Vec& G, int B, int T, HeadsRef hd) {
  const int HS = hd.HS, C = hd.C();
  Vec dqkv(qkv.size(), 0.0);
  auto at = [&](int b, int t, int part, int h, int k) { return hd.at(T, b, t, part, h, k); };
  for (int b = 0; b < B; b++)
    for (int h = 0; h < hd.NH; h++)
      for (int t = 0; t < T; t++) {
        Vec p(t + 1), dp(t + 1);
        double mx = -1e300, z = 0, dot = 0;
        for (int u = 0; u <= t; u++) {
          double d = 0;
          for (int k = 0; k < HS; k++) d += qkv[at(b, t, 0, h, k)] * qkv[at(b, u, 1, h, k)];
          p[u] = d / std::sqrt(double(HS));
          mx = std::max(mx, p[u]);
        }
        for (auto& e : p) z += (e = std::exp(e - mx));
        for (int u = 0; u <= t; u++) {
          p[u] /= z;
          for (int k = 0; k < HS; k++) {
            double g = G[size_t(b * T + t) * C + h * HS + k];
            dp[u] += g * qkv[at(b, u, 2, h, k)];
            dqkv[at(b, u, 2, h, k)] += p[u] * g;
          }
          dot += p[u] * dp[u];
        }
        for (int u = 0; u <= t; u++) {
          double ds = p[u] * (dp[u] - dot) / std::sqrt(double(HS));
          for (int k = 0; k < HS; k++) {
            dqkv[at(b, t, 0, h, k)] += ds * qkv[at(b, u, 1, h, k)];
            dqkv[at(b, u, 1, h, k)] += ds * qkv[at(b, t, 0, h, k)];
          }
        }
      }
  return dqkv;
}

Vec ref_xent(const Vec& logits, const std::vector<int32_t>& tg, int N, int V, int Vp) {
  Vec loss(N);
  for (int i = 0; i < N; i++) {
    double mx = -1e300, z = 0;
    for (int v = 0; v < V; v++) mx = std::max(mx, logits[i * Vp + v]);
    for (int v = 0; v < V; v++) z += std::exp(logits[i * Vp + v] - mx);
    loss[i] = std::log(z) + mx - logits[i * Vp + tg[i]];
  }
  return loss;
}

// ---- tests --------------------------------------------------------------------------------
TEST(Matmul, AllTransposesDtypesBiasAndAccumulationMatchFloat64) {
  const int M = 37, N = 53, K = 29;
  for (DType d : kAll)
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++) {
        Buf A(d, randn(M * K, 1, 1)), B(d, randn(K * N, 1, 2));
        auto bias = randn(N, 1, 3);
        auto C0 = randn(M * N, 1, 4);
        // fp32 output accumulating onto C0, with bias
        std::vector<float> out = C0;
        be().matmul(ta, tb, M, N, K, A.data(), ta ? M : K, B.data(), tb ? K : N, out.data(), N, d,
                    DType::f32, bias.data(), true);
        Vec ref = ref_matmul(ta, tb, M, N, K, A.values(), B.values());
        for (int i = 0; i < M * N; i++) ref[i] += C0[i] + bias[i % N];
        // fp32 accumulation of products of exactly representable inputs: near-exact in any dtype
        EXPECT_TRUE(all_close(out, ref, 1e-5, 1e-5)) << dtype_name(d) << " ta " << ta << " tb " << tb;
        // output in the same dtype (what linear layers write)
        Buf out16(d, size_t(M) * N);
        be().matmul(ta, tb, M, N, K, A.data(), ta ? M : K, B.data(), tb ? K : N, out16.data(), N, d, d,
                    nullptr, false);
        expect_close(d, out16.values(), ref_matmul(ta, tb, M, N, K, A.values(), B.values()), 1e-5, 1e-5,
                     "same-dtype output");
      }
}

// A weight gradient's long reduction (dY^T X over the tokens), in bf16 summed in chunks of 512
// tokens: three chunks, the last one short, strided views, bias and accumulation (every dtype);
// dense, without bias and at N % 64 == 0, K % 32 == 0 also frugal's own bf16 kernel (where built).
TEST(Matmul, WeightGradientOverManyTokensMatchesFloat64) {
  for (auto [M, N, K, pad, with_bias] : {std::tuple{40, 72, 1100, 8, true}, {37, 128, 1120, 0, false}, {37, 128, 1120, 16, false}}) {
    const int lda = M + pad, ldb = N + 2 * pad;
    for (DType d : kAll) {
      Buf A(d, randn(K * lda, 1, 21)), B(d, randn(K * ldb, 1, 22));
      auto bias = randn(N, 1, 23), C0 = randn(M * N, 1, 24);
      std::vector<float> out = C0;
      be().matmul(true, false, M, N, K, A.data(), lda, B.data(), ldb, out.data(), N, d, DType::f32,
                  with_bias ? bias.data() : nullptr, true);
      Vec a = A.values(), b = B.values(), ref(M * N);
      for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
          double acc = C0[m * N + n] + (with_bias ? bias[n] : 0.0);
          for (int k = 0; k < K; k++) acc += a[k * lda + m] * b[k * ldb + n];
          ref[m * N + n] = acc;
        }
      // fp32 sums of 1100 unit-sized products: rounding errors of ~1e-5 each way (a chunk lost or
      // summed twice would be off by ~30)
      EXPECT_TRUE(all_close(out, ref, 1e-5, 2e-4)) << dtype_name(d) << " N " << N << " K " << K << " bias " << with_bias;
    }
  }
}

// The bf16 weight gradient's pinned bits were oneDNN's (its matmul over 512 tokens at a time, the
// chunks added onto C by its sum post-op, on 2 threads); frugal's own kernel, where it runs
// (AVX512-BF16 without AMX; dense operands, N % 64 == 0, K % 32 == 0), must give them bit for bit.
// Against oneDNN called as matmul called it before, X reordered into its blocked layout: output
// rows in 32s and a rest, short and long reductions, onto C and into it. (With more threads than
// blocks of output oneDNN splits a chunk's reduction, and with dY strided it does on 2 threads:
// there matmul keeps calling it.)
TEST(Matmul, WeightGradientHasOneDnnsBits) {
#if !defined(__AVX512BF16__) || defined(__AMX_BF16__)
  GTEST_SKIP() << "built without AVX512-BF16, or with AMX: the weight gradient is oneDNN's own here";
#endif
  using namespace dnnl;
  using dt = memory::data_type;
  engine eng(engine::kind::cpu, 0);
  stream strm(eng);
  uint32_t seed = 60;
  for (int64_t M : {16, 37, 200})
    for (int64_t N : {64, 192})
      for (int64_t K : {32, 96, 512, 1056})
        for (bool acc : {true, false}) {
          Buf A(DType::bf16, randn(size_t(K * M), 1, seed++)), B(DType::bf16, randn(size_t(K * N), 1, seed++));
          std::vector<float> c0 = randn(size_t(M * N), 1, seed++), got = c0, ref = c0;
          be().matmul(true, false, M, N, K, A.data(), M, B.data(), N, got.data(), N, DType::bf16, DType::f32, nullptr, acc);
          const int threads = omp_get_max_threads();
          omp_set_num_threads(2);  // oneDNN's decomposition, and so its bits, as on the machines pinned
          for (int64_t k0 = 0; k0 < K; k0 += 512) {
            const int64_t kc = std::min<int64_t>(512, K - k0);
            const memory::desc ad({M, kc}, dt::bf16, memory::format_tag::ba), bd({kc, N}, dt::bf16, memory::format_tag::ab),
                bany({kc, N}, dt::bf16, memory::format_tag::any), cd({M, N}, dt::f32, memory::format_tag::ab);
            primitive_attr attr;
            if (acc || k0 > 0) {
              post_ops po;
              po.append_sum(1.0f);
              attr.set_post_ops(po);
            }
#if DNNL_VERSION_MAJOR >= 3
            matmul::primitive_desc pd(eng, ad, bany, cd, attr);
#else
            matmul::primitive_desc pd(matmul::desc(ad, bany, cd), attr, eng);
#endif
            memory am(ad, eng, static_cast<uint16_t*>(A.data()) + k0 * M), bm(bd, eng, static_cast<uint16_t*>(B.data()) + k0 * N),
                blocked(pd.weights_desc(), eng), cm(cd, eng, ref.data());
            reorder(bm, blocked).execute(strm, bm, blocked);
            matmul(pd).execute(strm, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, blocked}, {DNNL_ARG_DST, cm}});
            strm.wait();
          }
          omp_set_num_threads(threads);
          ASSERT_EQ(0, std::memcmp(ref.data(), got.data(), ref.size() * sizeof(float)))
              << "M " << M << " N " << N << " K " << K << (acc ? " +C" : "");
        }
}

// B in oneDNN's blocked layout, copied there by frugal's own packing (K % 32 and N % 64 both 0):
// from B's rows and from B^T's (a forward's weight), strided; and a dW's transposed A, where at
// this shape oneDNN may ask for another layout (then its own reorder runs).
TEST(Matmul, PackedBlockedWeightsMatchFloat64) {
  if (!be().native_gemm(DType::bf16)) GTEST_SKIP() << "no native bf16 GEMM on this CPU";
  const int M = 37, N = 128, K = 64;
  for (auto [ta, tb] : {std::pair{0, 0}, {0, 1}, {1, 0}}) {
    const int lda = ta ? M : K, ldb = (tb ? K : N) + 32;  // (a strided A takes oneDNN off its blocked B)
    Buf A(DType::bf16, randn((ta ? K : M) * lda, 1, 25)), B(DType::bf16, randn((tb ? N : K) * ldb, 1, 26));
    auto C0 = randn(M * N, 1, 27);
    std::vector<float> out = C0;
    be().matmul(ta, tb, M, N, K, A.data(), lda, B.data(), ldb, out.data(), N, DType::bf16, DType::f32, nullptr, true);
    Vec a = A.values(), b = B.values(), ref(M * N);
    for (int m = 0; m < M; m++)
      for (int n = 0; n < N; n++) {
        double acc = C0[m * N + n];
        for (int k = 0; k < K; k++) acc += a[ta ? k * lda + m : m * lda + k] * b[tb ? n * ldb + k : k * ldb + n];
        ref[m * N + n] = acc;
      }
    EXPECT_TRUE(all_close(out, ref, 1e-5, 1e-5)) << "ta " << ta << " tb " << tb;
  }
}

// A B the caller keeps packed across calls (Backend::PackedB, the lm head's weight over its
// chunks): filled at the first call, then reused while the caller says B is unchanged, by calls
// of other row counts too; from B's rows (dX) and from B^T's (the forward), strided.
TEST(Matmul, CallersPackedWeightIsFilledOnceThenReused) {
  const int N = 128, K = 64;
  for (int tb = 0; tb < 2; tb++) {
    const size_t bytes = be().packed_bytes(tb, K, N, DType::bf16);
    if (bytes == 0) GTEST_SKIP() << "the CPU backend keeps no packed bf16 B here (no native bf16 GEMM)";
    EXPECT_EQ(0u, be().packed_bytes(tb, K, N, DType::f32));
    const int ldb = (tb ? K : N) + 32;
    Buf B1(DType::bf16, randn((tb ? N : K) * ldb, 1, 28)), B2(DType::bf16, randn((tb ? N : K) * ldb, 1, 29));
    std::vector<std::byte> copy(bytes);
    Backend::PackedB packed{copy.data(), false};
    for (auto [M, b, want] : {std::tuple{37, &B1, &B1}, {5, &B2, &B1}, {37, &B2, &B1}}) {
      Buf A(DType::bf16, randn(M * K, 1, 30 + M));
      std::vector<float> out(size_t(M) * N);
      be().matmul(false, tb, M, N, K, A.data(), K, b->data(), ldb, out.data(), N, DType::bf16, DType::f32, nullptr,
                  false, &packed);
      EXPECT_TRUE(packed.filled);  // from here B2 is passed, but the copy made of B1 is what is multiplied
      Vec a = A.values(), w = want->values(), ref(size_t(M) * N, 0.0);
      for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++)
          for (int k = 0; k < K; k++) ref[m * N + n] += a[m * K + k] * w[tb ? n * ldb + k : k * ldb + n];
      EXPECT_TRUE(all_close(out, ref, 1e-5, 1e-5)) << "tb " << tb << " M " << M;
    }
    packed.filled = false;  // B changed: packed again
    Buf A(DType::bf16, randn(37 * K, 1, 31));
    std::vector<float> out(size_t(37) * N), plain(out.size());
    be().matmul(false, tb, 37, N, K, A.data(), K, B2.data(), ldb, out.data(), N, DType::bf16, DType::f32, nullptr,
                false, &packed);
    be().matmul(false, tb, 37, N, K, A.data(), K, B2.data(), ldb, plain.data(), N, DType::bf16, DType::f32, nullptr,
                false);
    EXPECT_EQ(0, std::memcmp(out.data(), plain.data(), out.size() * 4)) << "tb " << tb;
  }
}

TEST(Linear, ForwardAndBackwardMatchFloat64) {
  const int BT = 19, IC = 24, OC = 70;
  for (DType d : kAll) {
    Buf x(d, randn(BT * IC, 1, 5)), w(d, randn(OC * IC, 0.2f, 6)), dy(d, randn(BT * OC, 1, 8));
    auto b = randn(OC, 1, 7);
    Buf y(d, size_t(BT) * OC), dx(d, size_t(BT) * IC);
    std::vector<float> dw(OC * IC, 1.0f), db(OC, 1.0f);  // dw, db accumulate
    be().linear_forward(y.data(), x.data(), w.data(), b.data(), BT, IC, OC, d);
    be().linear_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), BT, IC, OC, d);
    Vec X = x.values(), W = w.values(), DY = dy.values();
    Vec ry = ref_matmul(false, true, BT, OC, IC, X, W), rdx = ref_matmul(false, false, BT, IC, OC, DY, W);
    Vec rdw = ref_matmul(true, false, OC, IC, BT, DY, X), rdb(OC, 1.0);
    for (int r = 0; r < BT; r++)
      for (int o = 0; o < OC; o++) { ry[r * OC + o] += b[o]; rdb[o] += DY[r * OC + o]; }
    for (auto& v : rdw) v += 1.0;
    expect_close(d, y.values(), ry, 1e-5, 1e-5, "y");
    expect_close(d, dx.values(), rdx, 1e-5, 1e-5, "dx");
    EXPECT_TRUE(all_close(dw, rdw, 1e-5, 1e-5)) << dtype_name(d);  // fp32 accumulation
    EXPECT_TRUE(all_close(db, rdb, 1e-5, 1e-5)) << dtype_name(d);
  }
}

TEST(LayerNorm, ForwardMatchesFloat64AndBackwardMatchesFiniteDifferences) {
  const int N = 7, C = 13;
  auto x = randn(N * C, 2, 8), w = randn(C, 1, 9), b = randn(C, 1, 10);
  Vec X = to_d(x), W = to_d(w), Bv = to_d(b);
  for (DType d : kAll) {
    Buf dy(d, randn(N * C, 1, 11)), y(d, size_t(N) * C);
    Vec G = dy.values();
    std::vector<float> mean(N), rstd(N), dx(N * C, 0.0f), dw(C, 0.0f), db(C, 0.0f);
    be().layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C, d);
    expect_close(d, y.values(), ref_layernorm(X, W, Bv, N, C), 1e-5, 1e-5, "y");
    Buf copy(d, size_t(N) * C);  // 16-bit: dx rounded, written in the same pass
    be().layernorm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(),
                            mean.data(), rstd.data(), N, C, d, d == DType::f32 ? nullptr : copy.data());
    if (d != DType::f32) {
      EXPECT_EQ(copy.bytes, Buf(d, dx).bytes) << dtype_name(d);
    }
    auto gx = fd_grad([&](const Vec& v) { return dot(G, ref_layernorm(v, W, Bv, N, C)); }, X);
    auto gw = fd_grad([&](const Vec& v) { return dot(G, ref_layernorm(X, v, Bv, N, C)); }, W);
    auto gb = fd_grad([&](const Vec& v) { return dot(G, ref_layernorm(X, W, v, N, C)); }, Bv);
    // the gradient path reads 16-bit dy exactly and computes in fp32: fp32 tolerances hold
    EXPECT_TRUE(all_close(dx, gx, 1e-4, 1e-5)) << dtype_name(d);
    EXPECT_TRUE(all_close(dw, gw, 1e-4, 1e-5)) << dtype_name(d);
    EXPECT_TRUE(all_close(db, gb, 1e-4, 1e-5)) << dtype_name(d);
  }
}

Vec ref_rmsnorm(const Vec& x, const Vec& w, int N, int C, double eps) {
  Vec y(x.size());
  for (int i = 0; i < N; i++) {
    double ss = 0;
    for (int c = 0; c < C; c++) ss += x[i * C + c] * x[i * C + c];
    for (int c = 0; c < C; c++) y[i * C + c] = x[i * C + c] / std::sqrt(ss / C + eps) * w[c];
  }
  return y;
}

TEST(RmsNorm, ForwardMatchesFloat64AndBackwardMatchesFiniteDifferences) {
  const int N = 7, C = 13;
  const float eps = 1e-6f;
  auto x = randn(N * C, 2, 40), w = randn(C, 1, 41);
  Vec X = to_d(x), W = to_d(w);
  for (DType d : kAll) {
    Buf dy(d, randn(N * C, 1, 42)), y(d, size_t(N) * C);
    Vec G = dy.values();
    std::vector<float> rstd(N), dx = randn(N * C, 1, 43), dw = randn(C, 1, 44);  // +=
    const std::vector<float> dx0 = dx, dw0 = dw;
    be().rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N, C, eps, d);
    expect_close(d, y.values(), ref_rmsnorm(X, W, N, C, eps), 1e-5, 1e-5, "y");
    Buf copy(d, size_t(N) * C);
    be().rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), N, C, d,
                          d == DType::f32 ? nullptr : copy.data());
    if (d != DType::f32) {
      EXPECT_EQ(copy.bytes, Buf(d, dx).bytes) << dtype_name(d);
    }
    Vec gx = fd_grad([&](const Vec& v) { return dot(G, ref_rmsnorm(v, W, N, C, eps)); }, X);
    Vec gw = fd_grad([&](const Vec& v) { return dot(G, ref_rmsnorm(X, v, N, C, eps)); }, W);
    for (int i = 0; i < N * C; i++) gx[i] += dx0[i];
    for (int c = 0; c < C; c++) gw[c] += dw0[c];
    EXPECT_TRUE(all_close(dx, gx, 1e-4, 1e-5)) << dtype_name(d);
    EXPECT_TRUE(all_close(dw, gw, 1e-4, 1e-5)) << dtype_name(d);
  }
}

double ref_silu(double x) { return x / (1 + std::exp(-x)); }

TEST(SwiGlu, ForwardMatchesFloat64AndBackwardMatchesFiniteDifferences) {
  const int N = 5, H = 211;  // rows of [gate | up], long enough for the vector path and a tail
  for (DType d : kAll) {
    Buf gu(d, randn(N * 2 * H, 3, 45)), dy(d, randn(N * H, 1, 46)), y(d, size_t(N) * H), dgu(d, size_t(N) * 2 * H);
    be().swiglu_forward(y.data(), gu.data(), N, H, d);
    be().swiglu_backward(dgu.data(), gu.data(), dy.data(), N, H, d);
    Vec X = gu.values(), DY = dy.values(), ry(size_t(N) * H), rdgu(X.size());
    for (int n = 0; n < N; n++)
      for (int i = 0; i < H; i++) {
        const double g = X[n * 2 * H + i], u = X[n * 2 * H + H + i], dd = DY[n * H + i];
        ry[n * H + i] = ref_silu(g) * u;
        rdgu[n * 2 * H + i] = dd * u * (ref_silu(g + 1e-6) - ref_silu(g - 1e-6)) / 2e-6;
        rdgu[n * 2 * H + H + i] = dd * ref_silu(g);
      }
    expect_close(d, y.values(), ry, 1e-5, 1e-6, "y");
    expect_close(d, dgu.values(), rdgu, 1e-4, 1e-5, "dgu");
    // in place: the gradient over its own input gives the same bytes
    Buf inplace = gu;
    be().swiglu_backward(inplace.data(), inplace.data(), dy.data(), N, H, d);
    EXPECT_EQ(inplace.bytes, dgu.bytes) << dtype_name(d);
  }
}

// Hugging Face's rotate-half rope on the first num_heads heads of each row: float64, angles
// t * theta^(-2i/HS).
Vec ref_rope(const Vec& x, int B, int T, int stride, int num_heads, int HS, double theta, double sign) {
  Vec y = x;
  const int h = HS / 2;
  for (int r = 0; r < B * T; r++)
    for (int head = 0; head < num_heads; head++)
      for (int i = 0; i < h; i++) {
        const double ang = sign * (r % T) * std::pow(theta, -2.0 * i / HS);
        const double a = x[r * stride + head * HS + i], b = x[r * stride + head * HS + i + h];
        y[r * stride + head * HS + i] = a * std::cos(ang) - b * std::sin(ang);
        y[r * stride + head * HS + i + h] = b * std::cos(ang) + a * std::sin(ang);
      }
  return y;
}

TEST(Rope, ForwardAndInverseMatchFloat64) {
  // q (3 heads) and k (1 head) of HS = 16 rotate; v (1 head) stays: stride 5 heads
  const int B = 2, T = 9, HS = 16, heads = 4, stride = 5 * HS, h = HS / 2;
  const double theta = 10000.0;
  std::vector<float> cos(T * h), sin(T * h);
  for (int t = 0; t < T; t++)
    for (int i = 0; i < h; i++) {
      cos[t * h + i] = float(std::cos(t * std::pow(theta, -2.0 * i / HS)));
      sin[t * h + i] = float(std::sin(t * std::pow(theta, -2.0 * i / HS)));
    }
  for (DType d : kAll) {
    for (bool inverse : {false, true}) {
      Buf x(d, randn(B * T * stride, 1, 47));
      Vec X = x.values();
      be().rope(x.data(), cos.data(), sin.data(), B, T, stride, heads, HS, inverse, d);
      expect_close(d, x.values(), ref_rope(X, B, T, stride, heads, HS, theta, inverse ? -1 : 1), 1e-5, 1e-6,
                   inverse ? "inverse" : "forward");
    }
  }
}

TEST(Gelu, ForwardMatchesFloat64AndBackwardMatchesFiniteDifferences) {
  const int n = 1000;  // long enough for the vector path and a tail
  for (DType d : kAll) {
    Buf x(d, randn(n, 3, 12)), dy(d, randn(n, 1, 13)), y(d, n), dx(d, n);
    be().gelu_forward(y.data(), x.data(), n, d);
    be().gelu_backward(dx.data(), x.data(), dy.data(), n, d);
    Vec X = x.values(), DY = dy.values(), ry(n), rdx(n);
    for (int i = 0; i < n; i++) {
      ry[i] = ref_gelu(X[i]);
      rdx[i] = DY[i] * (ref_gelu(X[i] + 1e-6) - ref_gelu(X[i] - 1e-6)) / 2e-6;
    }
    expect_close(d, y.values(), ry, 1e-5, 1e-6, "y");
    expect_close(d, dx.values(), rdx, 1e-4, 1e-5, "dx");
  }
}

// Where the CPU has AMX, the bf16 products run on it: oneDNN's GEMMs and frugal's attention.
// One query against a cache of T keys and values, grouped heads (NH 6 over NKV 2), float64.
TEST(Attention, DecodeAgainstTheCacheMatchesFloat64) {
  const int64_t NH = 6, NKV = 2, HS = 16, KW = NKV * HS;
  for (int64_t T : {1, 37})
    for (DType d : kAll) {
      Buf q(d, randn(NH * HS, 1, 61)), k(d, randn(T * KW, 1, 62)), v(d, randn(T * KW, 1, 63)), out(d, size_t(NH * HS));
      std::vector<float> scratch(size_t(NH * T));
      be().attention_decode(out.data(), q.data(), k.data(), v.data(), T, NH, NKV, HS, d, scratch.data());
      const Vec Q = q.values(), K = k.values(), V = v.values();
      Vec ref(size_t(NH * HS));
      for (int64_t h = 0; h < NH; h++) {
        const int64_t kv = h / (NH / NKV) * HS;
        Vec s(static_cast<size_t>(T), 0.0);
        double m = -1e300, sum = 0;
        for (int64_t j = 0; j < T; j++) {
          for (int64_t x = 0; x < HS; x++) s[j] += Q[h * HS + x] * K[j * KW + kv + x];
          s[j] /= std::sqrt(double(HS));
          m = std::max(m, s[j]);
        }
        for (auto& e : s) sum += e = std::exp(e - m);
        for (int64_t x = 0; x < HS; x++)
          for (int64_t j = 0; j < T; j++) ref[h * HS + x] += s[j] / sum * V[j * KW + kv + x];
      }
      expect_close(d, out.values(), ref, 1e-5, 1e-6, fmt::format("attention decode T={}", T));
    }
}

TEST(Attention, Bf16RunsOnAmxWhereTheCpuHasIt) {
  std::ifstream in("/proc/cpuinfo");
  const std::string info((std::istreambuf_iterator<char>(in)), {});
  if (info.find(" amx_bf16") == std::string::npos)
    GTEST_SKIP() << "this CPU has no AMX (no amx_bf16 in /proc/cpuinfo): the bf16 kernels run on " << cpu_bf16_isa();
  EXPECT_STREQ(cpu_bf16_isa(), "amx");
}

TEST(Attention, ForwardAndBackwardMatchFloat64AcrossTiles) {
  // T below, at, and not a multiple of the 64-row tile (a last tile of 16 rows or more runs fp32's
  // own kernel, of fewer dnnl_sgemm); head sizes 4, 8 and 24, and 16 to 128 (multiples of 16: the
  // fp32 kernel on AVX-512, the bf16 pair-product kernel where the CPU has AVX512-BF16); grouped
  // queries (NKV < NH: 2 and 3 query heads per key/value head, and one key/value head for all).
  for (auto [B, T, NH, NKV, HS] : {std::array{2, 7, 3, 3, 4}, std::array{1, 64, 2, 2, 8}, std::array{1, 150, 2, 2, 24},
                                   std::array{2, 129, 4, 4, 4}, std::array{1, 200, 2, 2, 64}, std::array{2, 67, 2, 2, 16},
                                   std::array{1, 97, 1, 1, 80}, std::array{2, 9, 4, 2, 4}, std::array{2, 70, 4, 2, 8},
                                   std::array{1, 130, 6, 2, 16}, std::array{2, 67, 4, 1, 32}, std::array{1, 100, 9, 3, 64},
                                   std::array{1, 83, 2, 1, 48}, std::array{1, 90, 2, 2, 128}}) {
    const HeadsRef hd{NH, NKV, HS};
    for (DType d : kAll) {
      Buf qkv(d, randn(size_t(B) * T * hd.W(), 1, 14)), dy(d, randn(size_t(B) * T * hd.C(), 1, 15));
      Buf out(d, size_t(B) * T * hd.C()), dqkv(d, size_t(B) * T * hd.W());
      std::vector<float> lse(size_t(B) * NH * T);
      be().attention_forward(out.data(), lse.data(), qkv.data(), B, T, NH, NKV, HS, d);
      Vec Q = qkv.values(), G = dy.values();
      expect_close(d, out.values(), ref_attention(Q, B, T, hd), 1e-5, 1e-5, "out");
      be().attention_backward(dqkv.data(), dy.data(), qkv.data(), out.data(), lse.data(), B, T, NH, NKV, HS, d);
      Vec g = ref_attention_backward(Q, G, B, T, hd);
      if (T <= 9) {  // the float64 reference backward itself against finite differences
        auto fd = fd_grad([&](const Vec& v) { return dot(G, ref_attention(v, B, T, hd)); }, Q);
        EXPECT_TRUE(all_close(g, fd, 1e-6, 1e-8));
      }
      expect_close(d, dqkv.values(), g, 1e-4, 1e-5, fmt::format("dqkv B{} T{} NH{} NKV{} HS{}", B, T, NH, NKV, HS));
    }
  }
}

TEST(Attention, Fp32TileProductsHaveDnnlSgemmsBits) {
  // fp32 attention's pinned bits were set by dnnl_sgemm on each tile pair; attention_mm (its own
  // AVX-512 kernel since) must give them bit for bit: each element summed from zero by fused
  // multiply-adds in K order, then added to C. Against dnnl_sgemm on the tile shapes attention
  // gave it (16 to 64 rows, keys and head sizes 16 to 128, a last tile of 19), attention_mm
  // called by 16-row groups as the diagonal tile calls it, both layouts of A, with and without
  // C added, and the triangular A of the diagonal's P^T (its zeros left of the diagonal skipped).
#if !defined(__AVX512F__)
  GTEST_SKIP() << "built without AVX-512: attention_mm is dnnl_sgemm itself here";
#endif
  uint32_t seed = 40;
  for (int64_t M : {16, 19, 64})
    for (int64_t N : {16, 48, 64, 128})
      for (int64_t K : {16, 19, 64, 128})
        for (bool at : {false, true})
          for (bool acc : {false, true})
            for (bool tri : {false, true}) {
              if (tri && (!at || K < M)) continue;  // as attention uses it: P^T (nk x nq) on the diagonal
              std::vector<float> a = randn(size_t(M * K), 1, seed++), b = randn(size_t(K * N), 1, seed++);
              std::vector<float> c0 = randn(size_t(M * N), 1, seed++), ref = c0, got = c0;
              const int64_t ar = at ? 1 : K, ak = at ? M : 1;  // A (M x K), or stored as A^T (K x M)
              if (tri)
                for (int64_t r = 0; r < M; r++)
                  for (int64_t k = 0; k < r; k++) a[size_t(r * ar + k * ak)] = 0.0f;
#pragma omp parallel num_threads(2)
#pragma omp single
              {  // inside a parallel region, as attention calls them: dnnl_sgemm on one thread
                sgemm(at, false, M, N, K, a.data(), at ? M : K, b.data(), N, acc ? 1.0f : 0.0f, ref.data(), N);
                const int64_t rows = tri ? M : 16;  // the diagonal's P^T in one call
                for (int64_t r0 = 0; r0 < M; r0 += rows)
                  attention_mm(std::min(rows, M - r0), N, K, a.data() + r0 * ar, ar, ak, b.data(), N, acc,
                               got.data() + r0 * N, N, tri);
              }
              ASSERT_EQ(0, std::memcmp(ref.data(), got.data(), ref.size() * sizeof(float)))
                  << "M " << M << " N " << N << " K " << K << (at ? " A^T" : "") << (acc ? " +C" : "")
                  << (tri ? " triangular" : "");
            }
}

TEST(Timing, GemmsByShapeAddUpToTheOpFamilies) {
  // step_profile's per-shape table: each GEMM and linear layer under its shape and pass, with its
  // FLOPs, and the same seconds as the op families; none of it without the map
  OpTimes fam, shapes, fam_only;
  auto timed = timing_backend(be(), &fam, &shapes);
  auto plain = timing_backend(be(), &fam_only);
  const int64_t M = 8, N = 32, K = 16;
  std::vector<float> a = randn(M * K, 1, 50), b = randn(K * N, 1, 51), c(M * N), d(M * K), dw(N * K);
  for (Backend* t : {timed.get(), plain.get()}) {
    t->matmul(false, true, M, N, K, a.data(), K, b.data(), K, c.data(), N, DType::f32, DType::f32, nullptr, false);
    t->linear_forward(c.data(), a.data(), b.data(), nullptr, M, K, N, DType::f32);
    t->linear_backward(d.data(), dw.data(), nullptr, c.data(), a.data(), b.data(), M, K, N, DType::f32);
  }
  ASSERT_EQ(shapes.size(), 3u);
  EXPECT_EQ(shapes.at("matmul NT 8x32x16").flops, 2.0 * M * N * K);
  EXPECT_EQ(shapes.at("linear 16x32 forward").flops, 2.0 * M * N * K);
  EXPECT_EQ(shapes.at("linear 16x32 backward").flops, 4.0 * M * N * K);
  double s = 0;
  for (auto& [k, o] : shapes) s += o.seconds;
  EXPECT_DOUBLE_EQ(s, fam.at("gemm").seconds);
  EXPECT_EQ(fam.at("gemm").flops, 8.0 * M * N * K);
  EXPECT_EQ(fam_only.at("gemm").flops, 8.0 * M * N * K);
}

TEST(SoftmaxXent, LossMatchesFloat64AndGradientMatchesFiniteDifferences) {
  const int N = 6, V = 11, Vp = 16;
  auto logits = randn(N * Vp, 3, 16);
  for (int i = 0; i < N; i++)
    for (int v = V; v < Vp; v++) logits[i * Vp + v] = 1e3f;  // padding must not matter
  std::vector<int32_t> tg = {0, 10, 3, 3, 7, 1};
  std::vector<float> losses(N), work = logits;
  const float scale = 0.25f;
  be().softmax_xent(work.data(), losses.data(), tg.data(), N, V, Vp, scale, DType::f32);
  EXPECT_TRUE(all_close(losses, ref_xent(to_d(logits), tg, N, V, Vp), 1e-5, 1e-6));
  auto g = fd_grad(
      [&](const Vec& v) {
        double s = 0;
        for (double l : ref_xent(v, tg, N, V, Vp)) s += l;
        return scale * s;
      },
      to_d(logits));
  for (int i = 0; i < N; i++)
    for (int v = V; v < Vp; v++) g[i * Vp + v] = 0.0;  // padding gets exactly zero
  EXPECT_TRUE(all_close(work, g, 1e-4, 1e-6));
  // 16-bit logits: computed in fp32, so the losses and the gradient are those of the fp32 op
  // on the same (rounded) logits, the gradient rounded once. The two sum in different orders
  // (a few ulps of the log-sum-exp, ~3, apart): a rounding may land one 16-bit step away.
  for (DType d : {DType::bf16, DType::f16}) {
    auto bits = [&](float x) { return d == DType::bf16 ? from_f32<bf16>(x).bits : from_f32<f16>(x).bits; };
    auto widen = [&](uint16_t b) { return d == DType::bf16 ? to_f32(bf16{b}) : to_f32(f16{b}); };
    std::vector<uint16_t> x16(N * Vp);
    std::vector<float> widened(N * Vp), losses16(N);
    for (int e = 0; e < N * Vp; e++) {
      x16[e] = bits(logits[e]);
      widened[e] = widen(x16[e]);
    }
    be().softmax_xent(widened.data(), losses.data(), tg.data(), N, V, Vp, scale, DType::f32);
    be().softmax_xent(x16.data(), losses16.data(), tg.data(), N, V, Vp, scale, d);
    EXPECT_TRUE(all_close(losses16, to_d(losses), 1e-6, 2e-6)) << dtype_name(d);
    const double step = d == DType::bf16 ? 0x1p-7 : 0x1p-10;  // one 16-bit step, relative
    for (int e = 0; e < N * Vp; e++) {
      const double want = widen(bits(widened[e])), got = widen(x16[e]);
      ASSERT_LE(std::abs(got - want), step * std::abs(want) + 0x1p-24) << dtype_name(d) << " element " << e;
    }
  }
  // Without a gradient scale the logits are left as they were.
  std::vector<float> keep = logits;
  be().softmax_xent(keep.data(), losses.data(), tg.data(), N, V, Vp, 0.0f, DType::f32);
  EXPECT_EQ(keep, logits);
}

// Ignored rows (target < 0: prompt tokens, padding): loss 0 and, with a gradient scale, a zero
// dlogits row; the other rows exactly as when computed alone.
TEST(SoftmaxXent, NegativeTargetsAreIgnored) {
  const int N = 6, V = 11, Vp = 16;
  const auto logits = randn(N * Vp, 3, 17);
  const std::vector<int32_t> tg = {4, -100, 0, -1, 10, -100};
  for (DType d : kAll)
    for (float scale : {0.0f, 0.5f}) {
      Buf x(d, logits);
      std::vector<float> losses(N, 7.0f);
      be().softmax_xent(x.data(), losses.data(), tg.data(), N, V, Vp, scale, d);
      const Vec got = x.values(), in = Buf(d, logits).values();
      for (int i = 0; i < N; i++) {
        if (tg[i] >= 0) {
          // the same row alone, with its target
          Buf row(d, std::vector<float>(logits.begin() + i * Vp, logits.begin() + (i + 1) * Vp));
          float loss = 0;
          be().softmax_xent(row.data(), &loss, &tg[i], 1, V, Vp, scale, d);
          EXPECT_EQ(losses[i], loss) << dtype_name(d) << " row " << i;
          EXPECT_NEAR(loss, ref_xent(Vec(in.begin() + i * Vp, in.end()), {tg[i]}, 1, V, Vp)[0], 1e-4);
          EXPECT_EQ(Vec(got.begin() + i * Vp, got.begin() + (i + 1) * Vp), row.values()) << dtype_name(d) << " row " << i;
          continue;
        }
        EXPECT_EQ(losses[i], 0.0f) << dtype_name(d) << " row " << i;
        for (int v = 0; v < Vp; v++)
          EXPECT_EQ(got[i * Vp + v], scale != 0.0f ? 0.0 : in[i * Vp + v]) << dtype_name(d) << " row " << i << " col " << v;
      }
    }
}

// Quantized weights (core/quant.h): windows of rows and columns dequantized into each dtype equal
// core's reference values rounded once, bit for bit: NF4 (whole blocks on AVX-512, partial ones
// at the windows' edges: cols = 200 is no multiple of 64) and int8.
TEST(Dequantize, WindowsEqualTheCoreReferenceRoundedOnce) {
  const int64_t R = 70, C = 200;
  const auto w = randn(R * C, 0.02f, 40);
  const QuantTensor ts[] = {quantize_nf4(w.data(), R, C), quantize_int8(w.data(), R, C)};
  struct Window { int64_t row0, rows, col0, cols; };
  const Window windows[] = {{0, R, 0, C}, {3, 40, 64, 128}, {5, 17, 5, 77}, {69, 1, 0, C}, {0, R, 136, 64}};
  for (const QuantTensor& t : ts)
    for (DType d : kAll)
      for (const Window& wd : windows) {
        Buf out(d, size_t(wd.rows * wd.cols));
        be().dequantize(out.data(), t.view(), wd.row0, wd.rows, wd.col0, wd.cols, d);
        std::vector<float> row(size_t(wd.cols));
        Buf want(d, size_t(wd.rows * wd.cols));
        for (int64_t r = 0; r < wd.rows; r++) {
          dequantize_ref(row.data(), t.view(), (wd.row0 + r) * C + wd.col0, wd.cols);
          dispatch(d, [&](auto x) {
            using T = decltype(x);
            for (int64_t c = 0; c < wd.cols; c++) reinterpret_cast<T*>(want.data())[r * wd.cols + c] = from_f32<T>(row[c]);
          });
        }
        EXPECT_EQ(out.bytes, want.bytes) << quant_format_name(t.format) << " in " << dtype_name(d) << ": rows ["
                                         << wd.row0 << ", +" << wd.rows << ") cols [" << wd.col0 << ", +" << wd.cols << ")";
      }
}

// The quantized linear layers against float64 products with the dequantized weight (rounded to
// dt, as the GEMMs read it), over several panels each way: IC = 4096 (forward panels of 512 rows
// of W, backward panels of 1856 columns) and IC = 1000 (2048 rows; 768 columns, whose blocks
// straddle rows). W is two parts quantized on their own (as q_proj, k_proj of a qkv), the first
// 300 rows and the rest: panels straddle them.
TEST(QuantLinear, ForwardAndBackwardMatchFloat64OfTheDequantizedWeight) {
  EXPECT_EQ(quant_panel_rows(4096, 11008), 512);
  EXPECT_EQ(quant_panel_rows(4096, 100), 100);
  EXPECT_EQ(quant_panel_rows(8, 1 << 24), 1 << 21);  // backward's panels: a column at least
  const int64_t BT = 5;
  for (auto [IC, OC] : {std::pair<int64_t, int64_t>{4096, 1100}, {1000, 2500}})
    for (QuantFormat f : {QuantFormat::nf4, QuantFormat::int8})
      for (DType d : {DType::f32, DType::bf16}) {
        const auto wf = randn(OC * IC, 0.02f, 41);
        auto quantize = [&](int64_t r0, int64_t rows) {
          return f == QuantFormat::nf4 ? quantize_nf4(wf.data() + r0 * IC, rows, IC) : quantize_int8(wf.data() + r0 * IC, rows, IC);
        };
        const int64_t R1 = 300;
        const QuantTensor t1 = quantize(0, R1), t2 = quantize(R1, OC - R1);
        const QuantStack parts = {t1.view(), t2.view()};
        std::vector<float> deq(size_t(OC * IC));
        dequantize_ref(deq.data(), t1.view(), 0, R1 * IC);
        dequantize_ref(deq.data() + R1 * IC, t2.view(), 0, (OC - R1) * IC);
        const Vec W = Buf(d, deq).values();
        Buf x(d, randn(BT * IC, 1, 42)), dy(d, randn(BT * OC, 1, 43)), y(d, size_t(BT * OC)), dx(d, size_t(BT * IC));
        const auto b = randn(OC, 1, 44);
        Buf ws(d, size_t(quant_panel_rows(IC, OC) * IC));
        quant_linear_forward(be(), y.data(), x.data(), parts, b.data(), ws.data(), BT, IC, OC, d);
        quant_linear_backward(be(), dx.data(), dy.data(), parts, ws.data(), BT, IC, OC, d);
        Vec ry = ref_matmul(false, true, BT, OC, IC, x.values(), W), rdx = ref_matmul(false, false, BT, IC, OC, dy.values(), W);
        for (int64_t r = 0; r < BT; r++)
          for (int64_t o = 0; o < OC; o++) ry[r * OC + o] += b[o];
        const std::string at = fmt::format("{} IC={} OC={}", quant_format_name(f), IC, OC);
        expect_close(d, y.values(), ry, 1e-4, 1e-5, "quant linear out " + at);
        expect_close(d, dx.values(), rdx, 1e-4, 1e-5, "quant linear dinp " + at);
      }
}

TEST(Embedding, ForwardAndBackwardMatchFloat64WithRepeatedTokens) {
  const int B = 3, T = 5, C = 20, Vp = 8;
  auto wte = randn(Vp * C, 1, 17), wpe = randn(T * C, 1, 18), dy = randn(B * T * C, 1, 19);
  std::vector<int32_t> tok(B * T);
  for (int i = 0; i < B * T; i++) tok[i] = (i * 7) % 5;  // repeats
  std::vector<float> out(B * T * C), dwte(Vp * C, 0.5f), dwpe(T * C, 0.5f);
  be().embedding_forward(out.data(), tok.data(), wte.data(), wpe.data(), B, T, C, DType::f32);
  // a frozen table in bf16: its values widened
  Buf wte16(DType::bf16, wte), wpe16(DType::bf16, wpe);
  std::vector<float> out16(B * T * C);
  be().embedding_forward(out16.data(), tok.data(), wte16.data(), wpe16.data(), B, T, C, DType::bf16);
  const Vec W16 = wte16.values(), P16 = wpe16.values();
  for (int i = 0; i < B * T; i++)
    for (int c = 0; c < C; c++) ASSERT_EQ(out16[i * C + c], float(W16[tok[i] * C + c] + P16[(i % T) * C + c])) << i;
  be().embedding_backward(dwte.data(), dwpe.data(), dy.data(), tok.data(), B, T, C);
  Vec ro(B * T * C), rdwte(Vp * C, 0.5), rdwpe(T * C, 0.5);
  for (int i = 0; i < B * T; i++)
    for (int c = 0; c < C; c++) {
      ro[i * C + c] = double(wte[tok[i] * C + c]) + wpe[(i % T) * C + c];
      rdwte[tok[i] * C + c] += dy[i * C + c];
      rdwpe[(i % T) * C + c] += dy[i * C + c];
    }
  EXPECT_TRUE(all_close(out, ro, 1e-6, 1e-6));
  EXPECT_TRUE(all_close(dwte, rdwte, 1e-6, 1e-6));
  EXPECT_TRUE(all_close(dwpe, rdwpe, 1e-6, 1e-6));
}

// Three spans in one call: decayed with a compute copy, not decayed with one, decayed without.
TEST(AdamW, MatchesFloat64PyTorchFormulaPerSpan) {
  const int n = 999, cut[4] = {0, 300, 700, n};
  const bool decay[3] = {true, false, true}, has_copy[3] = {true, true, false};
  auto p = randn(n, 1, 20), g = randn(n, 1, 21), m = randn(n, 0.1f, 22), v = randn(n, 0.1f, 23);
  for (auto& x : v) x = x * x;
  AdamWArgs a{3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 7, 0.25f};  // gradients read x 0.25 (clipping)
  std::vector<float> P = p, M = m, Vv = v;
  std::vector<bf16> copy(n, bf16{0x7fc1});
  std::vector<AdamWSpan> spans;
  for (int k = 0; k < 3; k++)
    spans.push_back({P.data() + cut[k], g.data() + cut[k], M.data() + cut[k], Vv.data() + cut[k], cut[k + 1] - cut[k],
                     decay[k], has_copy[k] ? copy.data() + cut[k] : nullptr});
  be().adamw(spans, a, DType::bf16);
  Vec rp(n), rm(n), rv(n);
  for (int k = 0; k < 3; k++)
    for (int i = cut[k]; i < cut[k + 1]; i++) {
      const double gs = 0.25 * g[i];
      rm[i] = 0.9 * m[i] + 0.1 * gs;
      rv[i] = 0.95 * v[i] + 0.05 * gs * gs;
      double mh = rm[i] / (1 - std::pow(0.9, 7)), vh = rv[i] / (1 - std::pow(0.95, 7));
      rp[i] = p[i] * (1 - 3e-3 * (decay[k] ? 0.1 : 0.0)) - 3e-3 * mh / (std::sqrt(vh) + 1e-8);
    }
  EXPECT_TRUE(all_close(M, rm, 1e-5, 1e-7));
  EXPECT_TRUE(all_close(Vv, rv, 1e-5, 1e-7));
  EXPECT_TRUE(all_close(P, rp, 1e-5, 1e-6));
  for (int i = 0; i < n; i++)  // the compute copy where asked for, untouched elsewhere
    ASSERT_EQ(copy[i].bits, i < cut[2] ? from_f32<bf16>(P[i]).bits : uint16_t(0x7fc1)) << i;
}

// Every size path (memset, chunked memset, streaming stores past 1 M floats), from aligned and
// unaligned starts: exactly [x, x + n) becomes 0.
TEST(Elementwise, FillZeroWritesExactlyTheRange) {
  for (int64_t n : {int64_t(37), int64_t(200003), int64_t(1) << 20, (int64_t(1) << 20) + 7})
    for (int64_t off : {0, 1, 2, 3}) {
      std::vector<float> buf(size_t(n + 8), 1.5f);
      be().fill_zero(buf.data() + off, n);
      for (int64_t i = 0; i < n + 8; i++)
        ASSERT_EQ(buf[size_t(i)], i >= off && i < off + n ? 0.0f : 1.5f) << "n " << n << " offset " << off << " at " << i;
    }
}

TEST(Elementwise, AddCastScaleSumSquaresMatchFloat64) {
  const int n = 40000;  // several reduction chunks
  auto a = randn(n, 1, 24), b = randn(n, 1, 25);
  for (DType d : kAll) {
    Buf bd(d, b);
    std::vector<float> out(n);
    be().add(out.data(), a.data(), bd.data(), n, d);
    Vec B = bd.values(), ref(n);
    for (int i = 0; i < n; i++) ref[i] = double(a[i]) + B[i];
    EXPECT_TRUE(all_close(out, ref, 1e-6, 1e-6)) << dtype_name(d);
    Buf c(d, size_t(n));
    be().cast(c.data(), a.data(), n, d);
    Vec C = c.values();
    // round to nearest: within half a unit in the last place (7 / 10 stored mantissa bits;
    // fp16's subnormals below 2^-14 have an absolute spacing of 2^-24)
    double half_ulp = d == DType::f32 ? 0 : d == DType::bf16 ? 0x1p-8 : 0x1p-11;
    double abs_floor = d == DType::f16 ? 0x1p-25 : 0.0;
    for (int i = 0; i < n; i++)
      ASSERT_LE(std::abs(C[i] - a[i]), half_ulp * std::abs(a[i]) + abs_floor) << dtype_name(d) << " " << i;
    // dropout: the mask of dropout_keep, a fraction p dropped, kept values scaled by 1/(1-p)
    // (rounded once), added into the output when accumulating
    {
      const float p = 0.3f;
      Buf x(d, b), y(d, a), acc(d, a);
      be().dropout(y.data(), x.data(), n, p, 1234, false, d);
      be().dropout(acc.data(), x.data(), n, p, 1234, true, d);
      const Vec X = x.values(), Y = y.values(), A0 = Buf(d, a).values(), ACC = acc.values();
      int kept = 0;
      for (int i = 0; i < n; i++) {
        const bool keep = dropout_keep(1234, i, p);
        kept += keep;
        const double want = keep ? X[i] / (1.0 - p) : 0.0, sum = A0[i] + want;
        ASSERT_LE(std::abs(Y[i] - want), half_ulp * std::abs(want) + abs_floor + 1e-6 * std::abs(want)) << "dropout " << i;
        ASSERT_LE(std::abs(ACC[i] - sum), half_ulp * std::abs(sum) + abs_floor + 1e-6 * (std::abs(A0[i]) + std::abs(want)))
            << "dropout += " << i;  // the fp32 sum of the two, rounded once
      }
      EXPECT_NEAR(double(kept) / n, 1.0 - p, 0.01) << "dropout keeps 1 - p";
    }
    // scale: the product of the stored value, rounded once
    Buf s(d, b);
    be().scale(s.data(), 0.37f, n, d);
    Vec S = s.values();
    for (int i = 0; i < n; i++)
      ASSERT_LE(std::abs(S[i] - 0.37 * B[i]), half_ulp * std::abs(0.37 * B[i]) + abs_floor + 1e-7 * std::abs(B[i]))
          << "scale " << dtype_name(d) << " " << i;
  }
  double sq = 0;
  for (int i = 0; i < n; i++) sq += double(a[i]) * a[i];
  EXPECT_NEAR(be().sum_squares(a.data(), n), sq, 1e-9 * sq);
  std::vector<float> x = a;
  x[777] = INFINITY;
  EXPECT_FALSE(std::isfinite(be().sum_squares(x.data(), n)));
  x[777] = NAN;
  EXPECT_FALSE(std::isfinite(be().sum_squares(x.data(), n)));
}

TEST(Dtype, RoundToNearestEvenAndSpecialValues) {
  // bf16: 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0)
  EXPECT_EQ(to_f32(from_f32<bf16>(1.0f + 0x1p-8f)), 1.0f);
  EXPECT_EQ(to_f32(from_f32<bf16>(1.0f + 3 * 0x1p-8f)), 1.0f + 0x1p-6f);
  EXPECT_TRUE(std::isnan(to_f32(from_f32<bf16>(NAN))));
  EXPECT_TRUE(std::isinf(to_f32(from_f32<bf16>(INFINITY))));
  EXPECT_EQ(to_f32(from_f32<f16>(1.0f + 0x1p-11f)), 1.0f);
  EXPECT_TRUE(std::isinf(to_f32(from_f32<f16>(70000.0f))));  // above fp16's 65504: overflow
  EXPECT_EQ(to_f32(from_f32<f16>(65504.0f)), 65504.0f);
}

}  // namespace
}  // namespace frugal
