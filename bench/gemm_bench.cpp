// GEMM path choice for fp32: dnnl_sgemm (oneDNN's BLAS-like API, gemm:jit) against oneDNN's
// matmul primitive with plain layouts (brg), on the GPT-2-small shapes of one training step
// at B*T = 1024. Every result is validated against a float64 dot product at 16 random
// entries before it is timed. Prints GFLOP/s of both and the ratio; see RESULTS.md.
//   usage: gemm_bench [BT] [reps]
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

using namespace dnnl;

struct Shape { const char* name; const char* op; bool ta, tb; int64_t M, N, K; };

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
  std::printf("%-8s %-4s %6s %6s %6s %12s %12s %7s\n", "layer", "op", "M", "N", "K",
              "sgemm GF/s", "matmul GF/s", "ratio");
  double t_sgemm = 0, t_matmul = 0;
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
    matmul prim(matmul::primitive_desc(matmul::desc(ad, bd, cd), eng));  // oneDNN 2.x API
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
    double flops = 2.0 * s.M * s.N * s.K;
    std::printf("%-8s %-4s %6ld %6ld %6ld %12.1f %12.1f %7.2f\n", s.name, s.op, long(s.M), long(s.N),
                long(s.K), flops / ts / 1e9, flops / tm / 1e9, tm / ts);
    int mult = std::string(s.name) == "lmhead" ? 1 : layers;
    t_sgemm += mult * ts;
    t_matmul += mult * tm;
  }
  std::printf("one step's GEMMs (12 layers + lm head, BT=%ld): dnnl_sgemm %.2f s, matmul primitive %.2f s, ratio %.2f\n",
              long(BT), t_sgemm, t_matmul, t_matmul / t_sgemm);
  return 0;
}
