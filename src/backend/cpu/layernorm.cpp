// LayerNorm forward/backward over rows of (N,C), eps 1e-5; fp32 input and statistics, output
// and its gradient in the compute dtype.
#include <cmath>
#include <cstring>

#include "backend/cpu/cpu.h"

namespace frugal {

template <class T>
static void layernorm_forward_t(T* out, float* mean, float* rstd, const float* inp, const float* w,
                                const float* b, int64_t N, int64_t C) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; i++) {
    const float* x = inp + i * C;
    T* y = out + i * C;
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
    for (int64_t c = 0; c < C; c++) y[c] = from_f32<T>((x[c] - m) * s * w[c] + b[c]);
    mean[i] = m;
    rstd[i] = s;
  }
}

void CpuBackend::layernorm_forward(void* out, float* mean, float* rstd, const float* inp,
                                   const float* w, const float* b, int64_t N, int64_t C, DType dt) {
  dispatch(dt, [&](auto t) { layernorm_forward_t(static_cast<decltype(t)*>(out), mean, rstd, inp, w, b, N, C); });
}

template <class T>
static void layernorm_backward_t(float* dinp, float* part, int nt, const T* dout, const float* inp,
                                 const float* w, const float* mean, const float* rstd, int64_t N,
                                 int64_t C, T* copy) {
#pragma omp parallel
  {
    int tid = omp_get_thread_num();
    float* pdw = part + int64_t(tid) * C;
    float* pdb = part + int64_t(nt + tid) * C;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < N; i++) {
      const float* x = inp + i * C;
      const T* dy = dout + i * C;
      float* dx = dinp + i * C;
      float m = mean[i], s = rstd[i];
      float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
#pragma omp simd reduction(+ : dnorm_mean, dnorm_norm_mean)
      for (int64_t c = 0; c < C; c++) {
        float norm = (x[c] - m) * s;
        float dnorm = w[c] * to_f32(dy[c]);
        dnorm_mean += dnorm;
        dnorm_norm_mean += dnorm * norm;
      }
      dnorm_mean /= float(C);
      dnorm_norm_mean /= float(C);
#pragma omp simd
      for (int64_t c = 0; c < C; c++) {
        float norm = (x[c] - m) * s, g = to_f32(dy[c]);
        pdb[c] += g;
        pdw[c] += norm * g;
        dx[c] += (w[c] * g - dnorm_mean - norm * dnorm_norm_mean) * s;
      }
      if (copy) {
        T* dc = copy + i * C;
#pragma omp simd
        for (int64_t c = 0; c < C; c++) dc[c] = from_f32<T>(dx[c]);
      }
    }
  }
}

void CpuBackend::layernorm_backward(float* dinp, float* dw, float* db, const void* dout,
                                    const float* inp, const float* w, const float* mean,
                                    const float* rstd, int64_t N, int64_t C, DType dt,
                                    void* dinp_copy) {
  int nt = omp_get_max_threads();
  float* part = partials(2 * C);  // nt rows of dw partials, then nt rows of db partials
  std::memset(part, 0, sizeof(float) * 2 * C * nt);
  dispatch(dt, [&](auto t) {
    using T = decltype(t);
    layernorm_backward_t(dinp, part, nt, static_cast<const T*>(dout), inp, w, mean, rstd, N, C, static_cast<T*>(dinp_copy));
  });
  reduce_partials(dw, part, nt, C);
  reduce_partials(db, part + int64_t(nt) * C, nt, C);
}

}  // namespace frugal
