// Fused softmax + cross-entropy over rows of logits(N,Vp) in the compute dtype, in fp32: the
// probabilities are never kept; with a gradient scale the row's dlogits overwrite its logits in
// the same pass. Columns >= V are padding. A row whose target is < 0 is ignored: loss 0, dlogits 0.
#include <cmath>
#include <vector>

#include "backend/cpu/cpu.h"

namespace frugal {

template <class T>
static void softmax_xent_t(T* logits, float* losses, const int32_t* targets, int64_t N, int64_t V,
                           int64_t Vp, float grad_scale) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; i++) {
    T* x = logits + i * Vp;
    const int64_t tgt = targets[i];
    if (tgt < 0) {  // ignored
      losses[i] = 0.0f;
      if (grad_scale != 0.0f)
        for (int64_t v = 0; v < Vp; v++) x[v] = from_f32<T>(0.0f);
      continue;
    }
    float maxv = -INFINITY;
    for (int64_t v = 0; v < V; v++) maxv = std::max(maxv, to_f32(x[v]));
    // the row's exponentials, kept for its gradient (200 KB at V = 50257: in L2)
    thread_local std::vector<float> e;
    e.resize(size_t(V));
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t v = 0; v < V; v++) sum += e[v] = std::exp(to_f32(x[v]) - maxv);
    const float xt = to_f32(x[tgt]);  // read before the row is overwritten
    losses[i] = std::log(sum) + maxv - xt;
    if (grad_scale == 0.0f) continue;
    const float inv = grad_scale / sum;
#pragma omp simd
    for (int64_t v = 0; v < V; v++) x[v] = from_f32<T>(e[v] * inv);
    x[tgt] = from_f32<T>(std::exp(xt - maxv) * inv - grad_scale);
    for (int64_t v = V; v < Vp; v++) x[v] = from_f32<T>(0.0f);
  }
}

void CpuBackend::softmax_xent(void* logits, float* losses, const int32_t* targets, int64_t N,
                              int64_t V, int64_t Vp, float grad_scale, DType dt) {
  dispatch(dt, [&](auto t) {
    using T = decltype(t);
    softmax_xent_t(static_cast<T*>(logits), losses, targets, N, V, Vp, grad_scale);
  });
}

}  // namespace frugal
