// Fused softmax + cross-entropy over rows of logits(N,Vp): the probabilities are never kept;
// with a gradient scale dlogits (in place, or in a 16-bit dtype) is written in the same pass.
// Columns >= V are padding.
#include <cmath>

#include "backend/cpu/cpu.h"

namespace frugal {

template <class T>
static void softmax_xent_t(float* logits, float* losses, const int32_t* targets, int64_t N, int64_t V,
                           int64_t Vp, float grad_scale, T* dlogits) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; i++) {
    const float* x = logits + i * Vp;
    float maxv = -INFINITY;
    for (int64_t v = 0; v < V; v++) maxv = x[v] > maxv ? x[v] : maxv;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t v = 0; v < V; v++) sum += std::exp(x[v] - maxv);
    const int64_t tgt = targets[i];
    losses[i] = std::log(sum) + maxv - x[tgt];
    if (grad_scale == 0.0f) continue;
    const float inv = grad_scale / sum, xt = x[tgt];  // x may be the row being written
    T* d = dlogits + i * Vp;
#pragma omp simd
    for (int64_t v = 0; v < V; v++) d[v] = from_f32<T>(std::exp(x[v] - maxv) * inv);
    d[tgt] = from_f32<T>(std::exp(xt - maxv) * inv - grad_scale);
    for (int64_t v = V; v < Vp; v++) d[v] = from_f32<T>(0.0f);
  }
}

void CpuBackend::softmax_xent(float* logits, float* losses, const int32_t* targets, int64_t N,
                              int64_t V, int64_t Vp, float grad_scale, void* dlogits, DType dt) {
  dispatch(dt, [&](auto t) {
    using T = decltype(t);
    softmax_xent_t(logits, losses, targets, N, V, Vp, grad_scale, static_cast<T*>(dlogits));
  });
}

}  // namespace frugal
