// LayerNorm forward/backward over rows of (N,C), eps 1e-5.
#include <cmath>
#include <cstring>

#include "backend/cpu/cpu.h"

namespace frugal {

void CpuBackend::layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                                   const float* w, const float* b, int64_t N, int64_t C) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; i++) {
    const float* x = inp + i * C;
    float* y = out + i * C;
    float m = 0.0f;
#pragma omp simd reduction(+ : m)
    for (int64_t c = 0; c < C; c++) m += x[c];
    m /= float(C);
    float v = 0.0f;
#pragma omp simd reduction(+ : v)
    for (int64_t c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
    v /= float(C);
    float s = 1.0f / std::sqrt(v + 1e-5f);
#pragma omp simd
    for (int64_t c = 0; c < C; c++) y[c] = (x[c] - m) * s * w[c] + b[c];
    mean[i] = m;
    rstd[i] = s;
  }
}

void CpuBackend::layernorm_backward(float* dinp, float* dw, float* db, const float* dout,
                                    const float* inp, const float* w, const float* mean,
                                    const float* rstd, int64_t N, int64_t C) {
  int nt = omp_get_max_threads();
  float* part = partials(2 * C);
  std::memset(part, 0, sizeof(float) * 2 * C * nt);
#pragma omp parallel
  {
    int tid = omp_get_thread_num();
    float* pdw = part + int64_t(tid) * C;
    float* pdb = part + int64_t(nt + tid) * C;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < N; i++) {
      const float* x = inp + i * C;
      const float* dy = dout + i * C;
      float* dx = dinp + i * C;
      float m = mean[i], s = rstd[i];
      float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
#pragma omp simd reduction(+ : dnorm_mean, dnorm_norm_mean)
      for (int64_t c = 0; c < C; c++) {
        float norm = (x[c] - m) * s;
        float dnorm = w[c] * dy[c];
        dnorm_mean += dnorm;
        dnorm_norm_mean += dnorm * norm;
      }
      dnorm_mean /= float(C);
      dnorm_norm_mean /= float(C);
#pragma omp simd
      for (int64_t c = 0; c < C; c++) {
        float norm = (x[c] - m) * s;
        pdb[c] += dy[c];
        pdw[c] += norm * dy[c];
        dx[c] += (w[c] * dy[c] - dnorm_mean - norm * dnorm_norm_mean) * s;
      }
    }
  }
  // part holds nt rows of dw then nt rows of db
  reduce_partials(dw, part, nt, C);
  reduce_partials(db, part + int64_t(nt) * C, nt, C);
}

}  // namespace frugal
