// GEMM path choice, on the GPT-2-small shapes of one training step at B*T = 1024:
//  fp32: dnnl_sgemm (oneDNN's BLAS-like API, gemm:jit) against oneDNN's matmul primitive with
//        plain layouts (brg);
//  bf16: the matmul primitive with plain layouts (what frugal runs) against the same with the
//        B operand in oneDNN's blocked layout (format_tag::any, reordered once: the cost of the
//        reorder is printed separately, it would be paid once per step per weight).
// Every result is validated against a float64 dot product at 16 random entries (of the
// bf16-rounded inputs for bf16) before it is timed. See RESULTS.md.
//   usage: gemm_bench [BT] [reps]      GFLOP/s per shape and implementation
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <random>
#include <vector>

using namespace dnnl;

struct Shape { const char* name; const char* op; bool ta, tb; int64_t M, N, K; };

static matmul::primitive_desc matmul_pd(const engine& eng, const memory::desc& a, const memory::desc& b,
                                        const memory::desc& c) {
#if DNNL_VERSION_MAJOR >= 3
  return matmul::primitive_desc(eng, a, b, c);
#else
  return matmul::primitive_desc(matmul::desc(a, b, c), eng);
#endif
}

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <class F>
static double median_seconds(F&& f, int reps) {
  f();  // warm-up (and primitive creation)
  std::vector<double> t;
  for (int i = 0; i < reps; i++) {
    double t0 = now();
    f();
    t.push_back(now() - t0);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

static bool validate(const Shape& s, const float* A, const float* B, const float* C) {
  std::mt19937 g(1);
  for (int k = 0; k < 16; k++) {
    int64_t i = g() % s.M, j = g() % s.N;
    double ref = 0;
    for (int64_t p = 0; p < s.K; p++)
      ref += double(s.ta ? A[p * s.M + i] : A[i * s.K + p]) * double(s.tb ? B[j * s.K + p] : B[p * s.N + j]);
    if (std::abs(ref - C[i * s.N + j]) > 1e-4 * (1 + std::abs(ref))) return false;
  }
  return true;
}

int main(int argc, char** argv) {
  const int64_t BT = argc > 1 ? std::atoll(argv[1]) : 1024, C = 768, Vp = 50304;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 5;
  // Y = X W^T with W (OC, IC): fwd NT; dX = dY W: NN; dW = dY^T X: TN.
  std::vector<Shape> shapes;
  for (auto [name, IC, OC] : {std::tuple{"qkv", C, 3 * C}, {"attproj", C, C}, {"fc", C, 4 * C},
                              {"fcproj", 4 * C, C}, {"lmhead", C, Vp}}) {
    shapes.push_back({name, "fwd", false, true, BT, OC, IC});
    shapes.push_back({name, "dX", false, false, BT, IC, OC});
    shapes.push_back({name, "dW", true, false, OC, IC, BT});
  }
  engine eng(engine::kind::cpu, 0);
  stream strm(eng);
  std::mt19937 g(0);
  std::normal_distribution<float> nd;
  std::printf("%-8s %-4s %6s %6s %6s %11s %11s %11s %11s %9s\n", "layer", "op", "M", "N", "K",
              "sgemm f32", "matmul f32", "bf16 plain", "bf16 blockB", "reorder");
  double t_sgemm = 0, t_matmul = 0, t_bf16 = 0, t_bf16b = 0;
  int layers = 12;
  for (auto& s : shapes) {
    std::vector<float> A(s.M * s.K), B(s.K * s.N), C1(s.M * s.N), C2(s.M * s.N);
    for (auto& x : A) x = nd(g);
    for (auto& x : B) x = nd(g);
    auto run_sgemm = [&] {
      dnnl_sgemm(s.ta ? 'T' : 'N', s.tb ? 'T' : 'N', s.M, s.N, s.K, 1.0f, A.data(), s.ta ? s.M : s.K,
                 B.data(), s.tb ? s.K : s.N, 0.0f, C1.data(), s.N);
    };
    memory::desc ad({s.M, s.K}, memory::data_type::f32, s.ta ? memory::format_tag::ba : memory::format_tag::ab);
    memory::desc bd({s.K, s.N}, memory::data_type::f32, s.tb ? memory::format_tag::ba : memory::format_tag::ab);
    memory::desc cd({s.M, s.N}, memory::data_type::f32, memory::format_tag::ab);
    matmul prim(matmul_pd(eng, ad, bd, cd));
    memory am(ad, eng, A.data()), bm(bd, eng, B.data()), cm(cd, eng, C2.data());
    auto run_matmul = [&] {
      prim.execute(strm, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
      strm.wait();
    };
    double ts = median_seconds(run_sgemm, reps), tm = median_seconds(run_matmul, reps);
    if (!validate(s, A.data(), B.data(), C1.data()) || !validate(s, A.data(), B.data(), C2.data())) {
      std::printf("%s %s: wrong result\n", s.name, s.op);
      return 1;
    }
    // bf16: round the inputs, then plain and blocked-B primitives
    auto bf = [](float x) {
      uint32_t u;
      std::memcpy(&u, &x, 4);
      u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
      std::memcpy(&x, &u, 4);
      return x;
    };
    std::vector<uint16_t> A16(A.size()), B16(B.size());
    for (size_t i = 0; i < A.size(); i++) { A[i] = bf(A[i]); uint32_t u; std::memcpy(&u, &A[i], 4); A16[i] = uint16_t(u >> 16); }
    for (size_t i = 0; i < B.size(); i++) { B[i] = bf(B[i]); uint32_t u; std::memcpy(&u, &B[i], 4); B16[i] = uint16_t(u >> 16); }
    using dt = memory::data_type;
    memory::desc ad16({s.M, s.K}, dt::bf16, s.ta ? memory::format_tag::ba : memory::format_tag::ab);
    memory::desc bd16({s.K, s.N}, dt::bf16, s.tb ? memory::format_tag::ba : memory::format_tag::ab);
    memory::desc bany({s.K, s.N}, dt::bf16, memory::format_tag::any);
    matmul plain(matmul_pd(eng, ad16, bd16, cd));
    auto blocked_pd = matmul_pd(eng, ad16, bany, cd);
    matmul blocked(blocked_pd);
    memory a16(ad16, eng, A16.data()), b16(bd16, eng, B16.data()), bblk(blocked_pd.weights_desc(), eng);
    auto run_plain = [&] {
      plain.execute(strm, {{DNNL_ARG_SRC, a16}, {DNNL_ARG_WEIGHTS, b16}, {DNNL_ARG_DST, cm}});
      strm.wait();
    };
    reorder rb(b16, bblk);
    auto run_reorder = [&] { rb.execute(strm, b16, bblk); strm.wait(); };
    auto run_blocked = [&] {
      blocked.execute(strm, {{DNNL_ARG_SRC, a16}, {DNNL_ARG_WEIGHTS, bblk}, {DNNL_ARG_DST, cm}});
      strm.wait();
    };
    double tp = median_seconds(run_plain, reps);
    bool ok = validate(s, A.data(), B.data(), C2.data());
    const std::vector<float> c_plain = C2;
    double tr = median_seconds(run_reorder, reps), tb = median_seconds(run_blocked, reps);
    const bool same = std::memcmp(c_plain.data(), C2.data(), C2.size() * 4) == 0;
    if (!ok || !validate(s, A.data(), B.data(), C2.data())) {
      std::printf("%s %s: wrong bf16 result\n", s.name, s.op);
      return 1;
    }
    double flops = 2.0 * s.M * s.N * s.K;
    std::printf("%-8s %-4s %6ld %6ld %6ld %11.1f %11.1f %11.1f %11.1f %7.2fms %s\n", s.name, s.op, long(s.M),
                long(s.N), long(s.K), flops / ts / 1e9, flops / tm / 1e9, flops / tp / 1e9, flops / tb / 1e9, tr * 1e3,
                same ? "same bits" : "other bits");
    int mult = std::string(s.name) == "lmhead" ? 1 : layers;
    t_sgemm += mult * ts;
    t_matmul += mult * tm;
    t_bf16 += mult * tp;
    t_bf16b += mult * tb;
  }
  std::printf("one step's GEMMs (12 layers + lm head, BT=%ld): fp32 dnnl_sgemm %.2f s, fp32 matmul %.2f s, "
              "bf16 plain %.2f s, bf16 blocked B %.2f s (reorders not counted)\n",
              long(BT), t_sgemm, t_matmul, t_bf16, t_bf16b);
  return 0;
}
