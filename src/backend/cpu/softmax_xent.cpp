// Fused softmax + cross-entropy over rows of logits(N,Vp), in place: the probabilities are
// never kept; with a gradient scale the row becomes dlogits. Columns >= V are padding.
#include <cmath>
#include <cstring>

#include "backend/cpu/cpu.h"

namespace frugal {

void CpuBackend::softmax_xent(float* logits, float* losses, const int32_t* targets, int64_t N,
                              int64_t V, int64_t Vp, float grad_scale) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; i++) {
    float* x = logits + i * Vp;
    float maxv = -INFINITY;
    for (int64_t v = 0; v < V; v++) maxv = x[v] > maxv ? x[v] : maxv;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t v = 0; v < V; v++) sum += std::exp(x[v] - maxv);
    int64_t tgt = targets[i];
    losses[i] = std::log(sum) + maxv - x[tgt];
    if (grad_scale != 0.0f) {
      float inv = grad_scale / sum;
#pragma omp simd
      for (int64_t v = 0; v < V; v++) x[v] = std::exp(x[v] - maxv) * inv;
      x[tgt] -= grad_scale;
      std::memset(x + V, 0, (Vp - V) * sizeof(float));
    }
  }
}

}  // namespace frugal
