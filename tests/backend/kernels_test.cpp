// Every CPU kernel, forward and backward, against float64 references on fresh random inputs;
// backward also against central finite differences of the float64 forward.
#include <functional>

#include "backend/backend.h"
#include "support/support.h"

namespace frugal {
namespace {

using test::all_close;
using test::randn;
using Vec = std::vector<double>;

Backend& be() { return cpu_backend(); }

Vec to_d(const std::vector<float>& v) { return Vec(v.begin(), v.end()); }

// d/dx of f at x by central differences (f is a float64 scalar function).
Vec fd_grad(const std::function<double(const Vec&)>& f, Vec x, double h = 1e-6) {
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

Vec ref_attention(const Vec& qkv, int B, int T, int C, int NH) {
  int HS = C / NH;
  Vec out(size_t(B) * T * C, 0.0);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < NH; h++)
      for (int t = 0; t < T; t++) {
        Vec s(t + 1);
        double mx = -1e300;
        for (int u = 0; u <= t; u++) {
          double d = 0;
          for (int k = 0; k < HS; k++)
            d += qkv[(b * T + t) * 3 * C + h * HS + k] * qkv[(b * T + u) * 3 * C + C + h * HS + k];
          s[u] = d / std::sqrt(double(HS));
          mx = std::max(mx, s[u]);
        }
        double z = 0;
        for (auto& e : s) z += (e = std::exp(e - mx));
        for (int u = 0; u <= t; u++)
          for (int k = 0; k < HS; k++)
            out[(b * T + t) * C + h * HS + k] += s[u] / z * qkv[(b * T + u) * 3 * C + 2 * C + h * HS + k];
      }
  return out;
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
TEST(Matmul, AllTransposesMatchFloat64) {
  const int M = 37, N = 53, K = 29;
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) {
      auto A = randn(M * K, 1, 1), Bm = randn(K * N, 1, 2), Cm = randn(M * N, 1, 3);
      std::vector<float> out = Cm;
      be().matmul(ta, tb, M, N, K, 0.5f, A.data(), ta ? M : K, Bm.data(), tb ? K : N, 2.0f,
                  out.data(), N);
      Vec ref(M * N);
      for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
          double s = 0;
          for (int k = 0; k < K; k++)
            s += double(ta ? A[k * M + i] : A[i * K + k]) * double(tb ? Bm[j * K + k] : Bm[k * N + j]);
          ref[i * N + j] = 0.5 * s + 2.0 * Cm[i * N + j];
        }
      EXPECT_TRUE(all_close(out, ref, 1e-5, 1e-5)) << "trans_a " << ta << " trans_b " << tb;
    }
}

TEST(Linear, ForwardAndBackwardMatchFloat64) {
  const int BT = 19, IC = 24, OC = 70;
  auto x = randn(BT * IC, 1, 4), w = randn(OC * IC, 0.2f, 5), b = randn(OC, 1, 6), dy = randn(BT * OC, 1, 7);
  std::vector<float> y(BT * OC), dx(BT * IC), dw(OC * IC, 1.0f), db(OC, 1.0f);  // dw, db accumulate
  be().linear_forward(y.data(), x.data(), w.data(), b.data(), BT, IC, OC);
  be().linear_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), BT, IC, OC);
  Vec ry(BT * OC), rdx(BT * IC, 0.0), rdw(OC * IC, 1.0), rdb(OC, 1.0);
  for (int r = 0; r < BT; r++)
    for (int o = 0; o < OC; o++) {
      double s = b[o];
      for (int i = 0; i < IC; i++) {
        s += double(x[r * IC + i]) * w[o * IC + i];
        rdx[r * IC + i] += double(dy[r * OC + o]) * w[o * IC + i];
        rdw[o * IC + i] += double(dy[r * OC + o]) * x[r * IC + i];
      }
      ry[r * OC + o] = s;
      rdb[o] += dy[r * OC + o];
    }
  EXPECT_TRUE(all_close(y, ry, 1e-5, 1e-5));
  EXPECT_TRUE(all_close(dx, rdx, 1e-5, 1e-5));
  EXPECT_TRUE(all_close(dw, rdw, 1e-5, 1e-5));
  EXPECT_TRUE(all_close(db, rdb, 1e-5, 1e-5));
}

TEST(LayerNorm, ForwardMatchesFloat64AndBackwardMatchesFiniteDifferences) {
  const int N = 7, C = 13;
  auto x = randn(N * C, 2, 8), w = randn(C, 1, 9), b = randn(C, 1, 10), dy = randn(N * C, 1, 11);
  std::vector<float> y(N * C), mean(N), rstd(N), dx(N * C, 0.0f), dw(C, 0.0f), db(C, 0.0f);
  be().layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  EXPECT_TRUE(all_close(y, ref_layernorm(to_d(x), to_d(w), to_d(b), N, C), 1e-5, 1e-5));
  be().layernorm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(),
                          mean.data(), rstd.data(), N, C);
  Vec X = to_d(x), W = to_d(w), Bv = to_d(b), G = to_d(dy);
  auto gx = fd_grad([&](const Vec& v) { return dot(G, ref_layernorm(v, W, Bv, N, C)); }, X);
  auto gw = fd_grad([&](const Vec& v) { return dot(G, ref_layernorm(X, v, Bv, N, C)); }, W);
  auto gb = fd_grad([&](const Vec& v) { return dot(G, ref_layernorm(X, W, v, N, C)); }, Bv);
  EXPECT_TRUE(all_close(dx, gx, 1e-4, 1e-5));
  EXPECT_TRUE(all_close(dw, gw, 1e-4, 1e-5));
  EXPECT_TRUE(all_close(db, gb, 1e-4, 1e-5));
}

TEST(Gelu, ForwardMatchesFloat64AndBackwardMatchesFiniteDifferences) {
  const int n = 1000;  // long enough for the vector path and a tail
  auto x = randn(n, 3, 12), dy = randn(n, 1, 13);
  std::vector<float> y(n), dx(n);
  be().gelu_forward(y.data(), x.data(), n);
  be().gelu_backward(dx.data(), x.data(), dy.data(), n);
  Vec ry(n), rdx(n);
  for (int i = 0; i < n; i++) {
    ry[i] = ref_gelu(x[i]);
    rdx[i] = dy[i] * (ref_gelu(x[i] + 1e-6) - ref_gelu(x[i] - 1e-6)) / 2e-6;
  }
  EXPECT_TRUE(all_close(y, ry, 1e-5, 1e-6));
  EXPECT_TRUE(all_close(dx, rdx, 1e-4, 1e-5));
}

TEST(Attention, ForwardMatchesFloat64AndBackwardMatchesFiniteDifferences) {
  for (auto [B, T, C, NH] : {std::array{2, 7, 12, 3}, std::array{1, 16, 16, 2}}) {
    auto qkv = randn(size_t(B) * T * 3 * C, 1, 14), dy = randn(size_t(B) * T * C, 1, 15);
    std::vector<float> out(B * T * C), probs(size_t(B) * NH * T * T), dqkv(qkv.size());
    be().attention_forward(out.data(), probs.data(), qkv.data(), B, T, C, NH);
    EXPECT_TRUE(all_close(out, ref_attention(to_d(qkv), B, T, C, NH), 1e-5, 1e-5));
    be().attention_backward(dqkv.data(), dy.data(), qkv.data(), probs.data(), B, T, C, NH);
    Vec G = to_d(dy);
    auto g = fd_grad([&](const Vec& v) { return dot(G, ref_attention(v, B, T, C, NH)); }, to_d(qkv));
    EXPECT_TRUE(all_close(dqkv, g, 1e-4, 1e-5)) << "B T C NH " << B << " " << T << " " << C << " " << NH;
  }
}

TEST(SoftmaxXent, LossMatchesFloat64AndGradientMatchesFiniteDifferences) {
  const int N = 6, V = 11, Vp = 16;
  auto logits = randn(N * Vp, 3, 16);
  for (int i = 0; i < N; i++)
    for (int v = V; v < Vp; v++) logits[i * Vp + v] = 1e3f;  // padding must not matter
  std::vector<int32_t> tg = {0, 10, 3, 3, 7, 1};
  std::vector<float> losses(N), work = logits;
  const float scale = 0.25f;
  be().softmax_xent(work.data(), losses.data(), tg.data(), N, V, Vp, scale);
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
  // Without a gradient scale the logits are left as they were.
  std::vector<float> keep = logits;
  be().softmax_xent(keep.data(), losses.data(), tg.data(), N, V, Vp, 0.0f);
  EXPECT_EQ(keep, logits);
}

TEST(Embedding, ForwardAndBackwardMatchFloat64WithRepeatedTokens) {
  const int B = 3, T = 5, C = 20, Vp = 8;
  auto wte = randn(Vp * C, 1, 17), wpe = randn(T * C, 1, 18), dy = randn(B * T * C, 1, 19);
  std::vector<int32_t> tok(B * T);
  for (int i = 0; i < B * T; i++) tok[i] = (i * 7) % 5;  // repeats
  std::vector<float> out(B * T * C), dwte(Vp * C, 0.5f), dwpe(T * C, 0.5f);
  be().embedding_forward(out.data(), tok.data(), wte.data(), wpe.data(), B, T, C);
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

TEST(AdamW, MatchesFloat64PyTorchFormula) {
  const int n = 999;
  auto p = randn(n, 1, 20), g = randn(n, 1, 21), m = randn(n, 0.1f, 22), v = randn(n, 0.1f, 23);
  for (auto& x : v) x = x * x;
  AdamWArgs a{3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 7};
  std::vector<float> P = p, M = m, Vv = v;
  be().adamw(P.data(), g.data(), M.data(), Vv.data(), n, a);
  Vec rp(n), rm(n), rv(n);
  for (int i = 0; i < n; i++) {
    rm[i] = 0.9 * m[i] + 0.1 * g[i];
    rv[i] = 0.95 * v[i] + 0.05 * double(g[i]) * g[i];
    double mh = rm[i] / (1 - std::pow(0.9, 7)), vh = rv[i] / (1 - std::pow(0.95, 7));
    rp[i] = p[i] * (1 - 3e-3 * 0.1) - 3e-3 * mh / (std::sqrt(vh) + 1e-8);
  }
  EXPECT_TRUE(all_close(M, rm, 1e-5, 1e-7));
  EXPECT_TRUE(all_close(Vv, rv, 1e-5, 1e-7));
  EXPECT_TRUE(all_close(P, rp, 1e-5, 1e-6));
}

TEST(Elementwise, AddScaleSumSquaresMatchFloat64) {
  const int n = 40000;  // several reduction chunks
  auto a = randn(n, 1, 24), b = randn(n, 1, 25);
  std::vector<float> out(n);
  be().add(out.data(), a.data(), b.data(), n);
  Vec ref(n);
  double sq = 0;
  for (int i = 0; i < n; i++) {
    ref[i] = double(a[i]) + b[i];
    sq += double(a[i]) * a[i];
  }
  EXPECT_TRUE(all_close(out, ref, 1e-6, 1e-6));
  EXPECT_NEAR(be().sum_squares(a.data(), n), sq, 1e-9 * sq);
  be().scale(out.data(), n, 0.5f);
  for (auto& r : ref) r *= 0.5;
  EXPECT_TRUE(all_close(out, ref, 1e-6, 1e-6));
}

}  // namespace
}  // namespace frugal
