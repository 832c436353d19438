// The timing decorator of the op table: run.profile and bench/step_profile.
#include <chrono>
#include <string>

#include <fmt/format.h>

#include "backend/backend.h"

namespace frugal {
namespace {

// Q K^T and P V over the causal half of the scores; the backward's five products are 2.5x that.
double causal_flops(int64_t B, int64_t T, int64_t NH, int64_t HS) {
  return 2.0 * 2.0 * double(B) * double(NH) * (double(T) * double(T + 1) / 2) * double(HS);
}

class TimingBackend final : public Backend {
 public:
  TimingBackend(Backend& inner, OpTimes* times, OpTimes* gemms) : b_(inner), t_(*times), g_(gemms) {}
  const char* name() const override { return b_.name(); }
  int64_t memory_available() const override { return b_.memory_available(); }

  bool native_gemm(DType d) const override { return b_.native_gemm(d); }
  bool gpu() const override { return b_.gpu(); }
  size_t packed_bytes(bool tb, int64_t K, int64_t N, DType ab) const override { return b_.packed_bytes(tb, K, N, ab); }
  void matmul(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void* A, int64_t lda,
              const void* B, int64_t ldb, void* C, int64_t ldc, DType ab, DType c, const float* bias,
              bool acc, PackedB* packed) override {
    time("gemm", 2.0 * M * N * K, [&] { b_.matmul(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, ab, c, bias, acc, packed); },
         g_ ? fmt::format("matmul {}{} {}x{}x{}", ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K) : "");
  }
  void linear_forward(void* out, const void* inp, const void* w, const float* bias, int64_t BT,
                      int64_t IC, int64_t OC, DType dt) override {
    time("gemm", 2.0 * BT * IC * OC, [&] { b_.linear_forward(out, inp, w, bias, BT, IC, OC, dt); },
         linear_key("", IC, OC, "forward"));
  }
  void linear_backward(void* dinp, float* dw, float* db, const void* dout, const void* inp,
                       const void* w, int64_t BT, int64_t IC, int64_t OC, DType dt) override {
    time("gemm", 4.0 * BT * IC * OC, [&] { b_.linear_backward(dinp, dw, db, dout, inp, w, BT, IC, OC, dt); },
         linear_key("", IC, OC, "backward"));
  }
  void linear_gelu_forward(void* out, void* pre, const void* inp, const void* w, const float* bias,
                           int64_t BT, int64_t IC, int64_t OC, DType dt) override {
    time("gemm with gelu", 2.0 * BT * IC * OC, [&] { b_.linear_gelu_forward(out, pre, inp, w, bias, BT, IC, OC, dt); },
         linear_key(" + gelu", IC, OC, "forward"));
  }
  void linear_backward_gelu(void* dinp, float* dw, float* db, const void* dout, const void* inp,
                            const void* pre, const void* w, int64_t BT, int64_t IC, int64_t OC,
                            DType dt) override {
    time("gemm with gelu", 4.0 * BT * IC * OC,
         [&] { b_.linear_backward_gelu(dinp, dw, db, dout, inp, pre, w, BT, IC, OC, dt); },
         linear_key(" + gelu", IC, OC, "backward"));
  }
  void layernorm_forward(void* o, float* m, float* r, const float* i, const float* w, const float* b,
                         int64_t N, int64_t C, DType dt) override {
    time("layernorm", 0, [&] { b_.layernorm_forward(o, m, r, i, w, b, N, C, dt); });
  }
  void layernorm_backward(float* di, float* dw, float* db, const void* d, const float* i,
                          const float* w, const float* m, const float* r, int64_t N, int64_t C,
                          DType dt, void* dc) override {
    time("layernorm", 0, [&] { b_.layernorm_backward(di, dw, db, d, i, w, m, r, N, C, dt, dc); });
  }
  void rmsnorm_forward(void* o, float* r, const float* i, const float* w, int64_t N, int64_t C, float eps,
                       DType dt) override {
    time("rmsnorm", 0, [&] { b_.rmsnorm_forward(o, r, i, w, N, C, eps, dt); });
  }
  void rmsnorm_backward(float* di, float* dw, const void* d, const float* i, const float* w, const float* r,
                        int64_t N, int64_t C, DType dt, void* dc) override {
    time("rmsnorm", 0, [&] { b_.rmsnorm_backward(di, dw, d, i, w, r, N, C, dt, dc); });
  }
  void swiglu_forward(void* o, const void* gu, int64_t N, int64_t H, DType dt) override {
    time("swiglu", 0, [&] { b_.swiglu_forward(o, gu, N, H, dt); });
  }
  void swiglu_backward(void* dgu, const void* gu, const void* d, int64_t N, int64_t H, DType dt) override {
    time("swiglu", 0, [&] { b_.swiglu_backward(dgu, gu, d, N, H, dt); });
  }
  void rope(void* x, const float* c, const float* s, int64_t B, int64_t T, int64_t stride, int64_t heads,
            int64_t HS, bool inverse, DType dt) override {
    time("rope", 0, [&] { b_.rope(x, c, s, B, T, stride, heads, HS, inverse, dt); });
  }
  void gelu_forward(void* o, const void* i, int64_t n, DType dt) override {
    time("gelu", 0, [&] { b_.gelu_forward(o, i, n, dt); });
  }
  void gelu_backward(void* di, const void* i, const void* d, int64_t n, DType dt) override {
    time("gelu", 0, [&] { b_.gelu_backward(di, i, d, n, dt); });
  }
  void attention_forward(void* o, float* lse, const void* q, int64_t B, int64_t T, int64_t NH,
                         int64_t NKV, int64_t HS, DType dt) override {
    time("attention fwd", causal_flops(B, T, NH, HS), [&] { b_.attention_forward(o, lse, q, B, T, NH, NKV, HS, dt); });
  }
  void attention_backward(void* dq, const void* d, const void* q, const void* o, const float* lse,
                          int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t HS, DType dt) override {
    time("attention bwd", 2.5 * causal_flops(B, T, NH, HS), [&] { b_.attention_backward(dq, d, q, o, lse, B, T, NH, NKV, HS, dt); });
  }
  void attention_decode(void* o, const void* q, const void* k, const void* v, int64_t T, int64_t NH, int64_t NKV,
                        int64_t HS, DType dt, float* s) override {
    time("attention fwd", 4.0 * double(NH) * double(T) * double(HS), [&] { b_.attention_decode(o, q, k, v, T, NH, NKV, HS, dt, s); });
  }
  void embedding_forward(float* o, const int32_t* t, const void* wte, const void* wpe, int64_t B,
                         int64_t T, int64_t C, DType wdt) override {
    time("embedding", 0, [&] { b_.embedding_forward(o, t, wte, wpe, B, T, C, wdt); });
  }
  void embedding_backward(float* dwte, float* dwpe, const float* d, const int32_t* t, int64_t B,
                          int64_t T, int64_t C) override {
    time("embedding", 0, [&] { b_.embedding_backward(dwte, dwpe, d, t, B, T, C); });
  }
  void add(float* o, const float* a, const void* b, int64_t n, DType dt) override {
    time("residual add", 0, [&] { b_.add(o, a, b, n, dt); });
  }
  void cast(void* d, const float* s, int64_t n, DType dt) override {
    time("casts", 0, [&] { b_.cast(d, s, n, dt); });
  }
  void dequantize(void* o, const QuantView& q, int64_t row0, int64_t rows, int64_t col0, int64_t cols,
                  DType dt) override {
    time("dequantize", 0, [&] { b_.dequantize(o, q, row0, rows, col0, cols, dt); });
  }
  void dropout(void* o, const void* i, int64_t n, float p, uint64_t seed, bool acc, DType dt) override {
    time("lora", 0, [&] { b_.dropout(o, i, n, p, seed, acc, dt); });
  }
  void scale(void* x, float s, int64_t n, DType dt) override {
    time("lora", 0, [&] { b_.scale(x, s, n, dt); });
  }
  void softmax_xent(void* l, float* loss, const int32_t* t, int64_t N, int64_t V, int64_t Vp, float s,
                    DType dt) override {
    time("softmax xent", 0, [&] { b_.softmax_xent(l, loss, t, N, V, Vp, s, dt); });
  }
  void adamw(const std::vector<AdamWSpan>& spans, const AdamWArgs& a, DType cd) override {
    time("adamw", 0, [&] { b_.adamw(spans, a, cd); });
  }
  double sum_squares(const std::vector<FloatSpan>& spans) override {
    double r;
    time("grad norm + clip", 0, [&] { r = b_.sum_squares(spans); });
    return r;
  }
  void fill_zero(float* x, int64_t n) override { time("zero", 0, [&] { b_.fill_zero(x, n); }); }
  double sum(const float* x, int64_t n) override { return b_.sum(x, n); }
  void copy(void* dst, const void* src, size_t bytes) override { b_.copy(dst, src, bytes); }
  void synchronize() override { b_.synchronize(); }

 private:
  // shape: also into (*g_)[shape] unless empty
  template <class F>
  void time(const char* what, double flops, F&& f, const std::string& shape = {}) {
    if (b_.gpu()) b_.synchronize();
    auto t0 = std::chrono::steady_clock::now();
    f();
    if (b_.gpu()) b_.synchronize();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (OpTime* o : {&t_[what], shape.empty() ? nullptr : &(*g_)[shape]})
      if (o) {
        o->seconds += s;
        o->flops += flops;
      }
  }
  std::string linear_key(const char* with, int64_t IC, int64_t OC, const char* pass) const {
    return g_ ? fmt::format("linear{} {}x{} {}", with, IC, OC, pass) : "";
  }
  Backend& b_;
  OpTimes& t_;
  OpTimes* g_;
};

}  // namespace

std::unique_ptr<Backend> timing_backend(Backend& inner, OpTimes* times, OpTimes* gemms) {
  return std::make_unique<TimingBackend>(inner, times, gemms);
}

}  // namespace frugal
