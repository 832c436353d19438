// The CPU backend: oneDNN's dnnl_sgemm for GEMMs (chosen by measurement, bench/RESULTS.md),
// OpenMP + AVX-512 loops for the rest. One op family per file; this header only declares the
// class. Reductions across rows go through per-thread partials summed in thread order, so
// results are bit-identical for a given thread count.
#pragma once
#include <omp.h>

#include <vector>

#include "backend/backend.h"

namespace frugal {

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  void matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
              const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
              int64_t ldc) override;
  void linear_forward(float* out, const float* inp, const float* weight, const float* bias,
                      int64_t BT, int64_t IC, int64_t OC) override;
  void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                       const float* inp, const float* weight, int64_t BT, int64_t IC,
                       int64_t OC) override;
  void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* w,
                         const float* b, int64_t N, int64_t C) override;
  void layernorm_backward(float* dinp, float* dw, float* db, const float* dout, const float* inp,
                          const float* w, const float* mean, const float* rstd, int64_t N,
                          int64_t C) override;
  void gelu_forward(float* out, const float* inp, int64_t n) override;
  void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n) override;
  void attention_forward(float* out, float* probs, const float* qkv, int64_t B, int64_t T,
                         int64_t C, int64_t NH) override;
  void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* probs,
                          int64_t B, int64_t T, int64_t C, int64_t NH) override;
  void embedding_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                         int64_t B, int64_t T, int64_t C) override;
  void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                          int64_t B, int64_t T, int64_t C) override;
  void add(float* out, const float* a, const float* b, int64_t n) override;
  void softmax_xent(float* logits, float* losses, const int32_t* targets, int64_t N, int64_t V,
                    int64_t Vp, float grad_scale) override;
  void adamw(float* param, const float* grad, float* m, float* v, int64_t n,
             const AdamWArgs& a) override;
  double sum_squares(const float* x, int64_t n) override;
  void scale(float* x, int64_t n, float s) override;

 private:
  std::vector<double> sq_partials_;  // per-chunk sums of squares (grows once)
  std::vector<float> partials_;  // per-thread reduction scratch (a few KiB; grows once)
  float* partials(int64_t per_thread) {
    size_t need = size_t(per_thread) * omp_get_max_threads();
    if (partials_.size() < need) partials_.resize(need);
    return partials_.data();
  }
};

// Sum per-thread partial rows p(nt, n) into acc(n) (+=), in thread order.
inline void reduce_partials(float* acc, const float* p, int nt, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    float s = 0.0f;
    for (int t = 0; t < nt; t++) s += p[t * n + i];
    acc[i] += s;
  }
}

}  // namespace frugal
