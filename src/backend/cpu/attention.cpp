// Causal multi-head self-attention, forward and backward, with the probabilities stashed.
// Parallel over (b, h): each task owns its slices of out / dqkv, so no reductions are shared.
#include <cmath>
#include <cstring>

#include "backend/cpu/cpu.h"

namespace frugal {

void CpuBackend::attention_forward(float* out, float* probs, const float* qkv, int64_t B,
                                   int64_t T, int64_t C, int64_t NH) {
  const int64_t HS = C / NH, C3 = 3 * C;
  const float scale = 1.0f / std::sqrt(float(HS));
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; b++) {
    for (int64_t h = 0; h < NH; h++) {
      const float* base = qkv + b * T * C3 + h * HS;
      for (int64_t t = 0; t < T; t++) {
        const float* q = base + t * C3;
        float* p = probs + ((b * NH + h) * T + t) * T;
        float maxv = -INFINITY;
        for (int64_t t2 = 0; t2 <= t; t2++) {
          const float* k = base + t2 * C3 + C;
          float s = 0.0f;
#pragma omp simd reduction(+ : s)
          for (int64_t d = 0; d < HS; d++) s += q[d] * k[d];
          s *= scale;
          p[t2] = s;
          maxv = s > maxv ? s : maxv;
        }
        float sum = 0.0f;
        for (int64_t t2 = 0; t2 <= t; t2++) {
          p[t2] = std::exp(p[t2] - maxv);
          sum += p[t2];
        }
        float inv = 1.0f / sum;
        float* o = out + (b * T + t) * C + h * HS;
        std::memset(o, 0, HS * sizeof(float));
        for (int64_t t2 = 0; t2 <= t; t2++) {
          p[t2] *= inv;
          const float* v = base + t2 * C3 + 2 * C;
          float pv = p[t2];
#pragma omp simd
          for (int64_t d = 0; d < HS; d++) o[d] += pv * v[d];
        }
      }
    }
  }
}

void CpuBackend::attention_backward(float* dqkv, const float* dout, const float* qkv,
                                    const float* probs, int64_t B, int64_t T, int64_t C,
                                    int64_t NH) {
  const int64_t HS = C / NH, C3 = 3 * C;
  const float scale = 1.0f / std::sqrt(float(HS));
  float* scratch = partials(T);  // one dP row per thread
#pragma omp parallel
  {
    float* dp = scratch + int64_t(omp_get_thread_num()) * T;
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++) {
      for (int64_t h = 0; h < NH; h++) {
        const float* base = qkv + b * T * C3 + h * HS;
        float* dbase = dqkv + b * T * C3 + h * HS;
        for (int64_t t = 0; t < T; t++) {
          float* row = dbase + t * C3;
          std::memset(row, 0, HS * sizeof(float));
          std::memset(row + C, 0, HS * sizeof(float));
          std::memset(row + 2 * C, 0, HS * sizeof(float));
        }
        for (int64_t t = 0; t < T; t++) {
          const float* p = probs + ((b * NH + h) * T + t) * T;
          const float* dy = dout + (b * T + t) * C + h * HS;
          const float* q = base + t * C3;
          float* dq = dbase + t * C3;
          float dot = 0.0f;
          for (int64_t t2 = 0; t2 <= t; t2++) {
            const float* v = base + t2 * C3 + 2 * C;
            float* dv = dbase + t2 * C3 + 2 * C;
            float s = 0.0f, pv = p[t2];
#pragma omp simd reduction(+ : s)
            for (int64_t d = 0; d < HS; d++) {
              s += dy[d] * v[d];
              dv[d] += pv * dy[d];
            }
            dp[t2] = s;
            dot += s * pv;
          }
          for (int64_t t2 = 0; t2 <= t; t2++) {
            float ds = p[t2] * (dp[t2] - dot) * scale;
            const float* k = base + t2 * C3 + C;
            float* dk = dbase + t2 * C3 + C;
#pragma omp simd
            for (int64_t d = 0; d < HS; d++) {
              dq[d] += ds * k[d];
              dk[d] += ds * q[d];
            }
          }
        }
      }
    }
  }
}

}  // namespace frugal
