// Where a training step's time goes: runs steps of a model through a timing decorator of the
// CPU backend (or the CUDA backend, synchronised around every op) and prints seconds per op
// family, GEMM against the rest.
//   usage: step_profile [preset] [B] [T] [steps] [fp32|bf16|fp16] [recompute] [cpu|cuda]
//   (default: gpt2 4 256 3 fp32 none cpu)
#include <omp.h>

#include <chrono>
#include <map>

#include "train/train.h"

using namespace frugal;

namespace {

class TimingBackend final : public Backend {
 public:
  explicit TimingBackend(Backend& inner) : b_(inner) {}
  const char* name() const override { return "timing"; }
  std::map<std::string, double> seconds;
  double gemm_flops = 0;

  bool native_gemm(DType d) const override { return b_.native_gemm(d); }
  bool gpu() const override { return b_.gpu(); }
  void matmul(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void* A, int64_t lda,
              const void* B, int64_t ldb, void* C, int64_t ldc, DType ab, DType c, const float* bias,
              bool acc) override {
    gemm_flops += 2.0 * M * N * K;
    time("gemm", [&] { b_.matmul(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, ab, c, bias, acc); });
  }
  void linear_forward(void* out, const void* inp, const void* w, const float* bias, int64_t BT,
                      int64_t IC, int64_t OC, DType dt) override {
    gemm_flops += 2.0 * BT * IC * OC;
    time("gemm", [&] { b_.linear_forward(out, inp, w, bias, BT, IC, OC, dt); });
  }
  void linear_backward(void* dinp, float* dw, float* db, const void* dout, const void* inp,
                       const void* w, int64_t BT, int64_t IC, int64_t OC, DType dt) override {
    gemm_flops += 4.0 * BT * IC * OC;
    time("gemm", [&] { b_.linear_backward(dinp, dw, db, dout, inp, w, BT, IC, OC, dt); });
  }
  void linear_gelu_forward(void* out, void* pre, const void* inp, const void* w, const float* bias,
                           int64_t BT, int64_t IC, int64_t OC, DType dt) override {
    gemm_flops += 2.0 * BT * IC * OC;
    time("gemm with gelu", [&] { b_.linear_gelu_forward(out, pre, inp, w, bias, BT, IC, OC, dt); });
  }
  void linear_backward_gelu(void* dinp, float* dw, float* db, const void* dout, const void* inp,
                            const void* pre, const void* w, int64_t BT, int64_t IC, int64_t OC,
                            DType dt) override {
    gemm_flops += 4.0 * BT * IC * OC;
    time("gemm with gelu", [&] { b_.linear_backward_gelu(dinp, dw, db, dout, inp, pre, w, BT, IC, OC, dt); });
  }
  void layernorm_forward(void* o, float* m, float* r, const float* i, const float* w, const float* b,
                         int64_t N, int64_t C, DType dt) override {
    time("layernorm", [&] { b_.layernorm_forward(o, m, r, i, w, b, N, C, dt); });
  }
  void layernorm_backward(float* di, float* dw, float* db, const void* d, const float* i,
                          const float* w, const float* m, const float* r, int64_t N, int64_t C,
                          DType dt, void* dc) override {
    time("layernorm", [&] { b_.layernorm_backward(di, dw, db, d, i, w, m, r, N, C, dt, dc); });
  }
  void rmsnorm_forward(void* o, float* r, const float* i, const float* w, int64_t N, int64_t C, float eps,
                       DType dt) override {
    time("rmsnorm", [&] { b_.rmsnorm_forward(o, r, i, w, N, C, eps, dt); });
  }
  void rmsnorm_backward(float* di, float* dw, const void* d, const float* i, const float* w, const float* r,
                        int64_t N, int64_t C, DType dt, void* dc) override {
    time("rmsnorm", [&] { b_.rmsnorm_backward(di, dw, d, i, w, r, N, C, dt, dc); });
  }
  void swiglu_forward(void* o, const void* gu, int64_t N, int64_t H, DType dt) override {
    time("swiglu", [&] { b_.swiglu_forward(o, gu, N, H, dt); });
  }
  void swiglu_backward(void* dgu, const void* gu, const void* d, int64_t N, int64_t H, DType dt) override {
    time("swiglu", [&] { b_.swiglu_backward(dgu, gu, d, N, H, dt); });
  }
  void rope(void* x, const float* c, const float* s, int64_t B, int64_t T, int64_t stride, int64_t heads,
            int64_t HS, bool inverse, DType dt) override {
    time("rope", [&] { b_.rope(x, c, s, B, T, stride, heads, HS, inverse, dt); });
  }
  void gelu_forward(void* o, const void* i, int64_t n, DType dt) override {
    time("gelu", [&] { b_.gelu_forward(o, i, n, dt); });
  }
  void gelu_backward(void* di, const void* i, const void* d, int64_t n, DType dt) override {
    time("gelu", [&] { b_.gelu_backward(di, i, d, n, dt); });
  }
  void attention_forward(void* o, float* lse, const void* q, int64_t B, int64_t T, int64_t NH,
                         int64_t NKV, int64_t HS, DType dt) override {
    time("attention fwd", [&] { b_.attention_forward(o, lse, q, B, T, NH, NKV, HS, dt); });
  }
  void attention_backward(void* dq, const void* d, const void* q, const void* o, const float* lse,
                          int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t HS, DType dt) override {
    time("attention bwd", [&] { b_.attention_backward(dq, d, q, o, lse, B, T, NH, NKV, HS, dt); });
  }
  void embedding_forward(float* o, const int32_t* t, const float* wte, const float* wpe, int64_t B,
                         int64_t T, int64_t C) override {
    time("embedding", [&] { b_.embedding_forward(o, t, wte, wpe, B, T, C); });
  }
  void embedding_backward(float* dwte, float* dwpe, const float* d, const int32_t* t, int64_t B,
                          int64_t T, int64_t C) override {
    time("embedding", [&] { b_.embedding_backward(dwte, dwpe, d, t, B, T, C); });
  }
  void add(float* o, const float* a, const void* b, int64_t n, DType dt) override {
    time("residual add", [&] { b_.add(o, a, b, n, dt); });
  }
  void cast(void* d, const float* s, int64_t n, DType dt) override {
    time("casts", [&] { b_.cast(d, s, n, dt); });
  }
  void softmax_xent(void* l, float* loss, const int32_t* t, int64_t N, int64_t V, int64_t Vp, float s,
                    DType dt) override {
    time("softmax xent", [&] { b_.softmax_xent(l, loss, t, N, V, Vp, s, dt); });
  }
  void adamw(const std::vector<AdamWSpan>& spans, const AdamWArgs& a, DType cd) override {
    time("adamw", [&] { b_.adamw(spans, a, cd); });
  }
  double sum_squares(const std::vector<FloatSpan>& spans) override {
    double r;
    time("grad norm + clip", [&] { r = b_.sum_squares(spans); });
    return r;
  }
  void fill_zero(float* x, int64_t n) override { time("zero", [&] { b_.fill_zero(x, n); }); }
  double sum(const float* x, int64_t n) override { return b_.sum(x, n); }
  void copy(void* dst, const void* src, size_t bytes) override { b_.copy(dst, src, bytes); }
  void synchronize() override { b_.synchronize(); }

 private:
  template <class F>
  void time(const char* what, F&& f) {
    if (b_.gpu()) b_.synchronize();
    auto t0 = std::chrono::steady_clock::now();
    f();
    if (b_.gpu()) b_.synchronize();
    seconds[what] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  Backend& b_;
};

}  // namespace

int run(int argc, char** argv) {
  std::string preset = argc > 1 ? argv[1] : "gpt2";
  int B = argc > 2 ? std::atoi(argv[2]) : 4, T = argc > 3 ? std::atoi(argv[3]) : 256;
  int steps = argc > 4 ? std::atoi(argv[4]) : 3;
  PrecisionSettings prec;
  std::string dtn = argc > 5 ? argv[5] : "fp32";
  prec.compute = dtn == "bf16" ? DType::bf16 : dtn == "fp16" ? DType::f16 : DType::f32;
  ModelConfig cfg = model_preset(preset, "step_profile");
  const std::string on = argc > 7 ? argv[7] : "cpu";
  TimingBackend tb(on == "cuda" ? cuda_backend() : cpu_backend());
  Model model(cfg, tb, prec.compute);
  model.init(1);
  TrainSettings t;
  t.micro_batch = B;
  t.seq_len = T;
  t.steps = steps + 1;
  auto comm = make_local_comm();
  const auto plan = RecomputePolicy::parse(argc > 6 ? argv[6] : "none", "step_profile").per_block(cfg.n_layer);
  Stepper stepper(model, tb, *comm, t, 1, prec, plan);
  Rng rng(2);
  auto next = [&](int32_t* in, int32_t* tg) {
    for (int i = 0; i < B * T; i++) {
      in[i] = int32_t(rng.below(uint64_t(cfg.vocab_size)));
      tg[i] = int32_t(rng.below(uint64_t(cfg.vocab_size)));
    }
  };
  stepper.step(0, next);  // warm-up
  tb.seconds.clear();
  tb.gemm_flops = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (int s = 1; s <= steps; s++) stepper.step(s, next);
  double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / steps;
  std::printf("%s %s B=%d T=%d on %s, %d threads: %.4f s/step, %.1f tokens/s\n", preset.c_str(),
              dtype_name(prec.compute), B, T, on.c_str(), omp_get_max_threads(), total, B * T / total);
  double accounted = 0;
  for (auto& [k, v] : tb.seconds) {
    std::printf("  %-18s %8.4f s  %5.1f%%\n", k.c_str(), v / steps, 100 * v / steps / total);
    accounted += v / steps;
  }
  std::printf("  %-18s %8.4f s  %5.1f%%\n", "other (host)", total - accounted, 100 * (total - accounted) / total);
  const double gemm_s = tb.seconds["gemm"] + tb.seconds["gemm with gelu"];
  std::printf("GEMM: %.1f GFLOP/s over %.4f s; model: %.1f GFLOP/s\n", tb.gemm_flops / gemm_s / 1e9,
              gemm_s / steps, cfg.flops_per_token(T) * B * T / total / 1e9);
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UserError& e) {
    std::fprintf(stderr, "step_profile: %s\n", e.what());
    return 1;
  }
}
