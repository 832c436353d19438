// RMSNorm forward/backward over rows of (N,C) (the Llama family's norm): fp32 input and
// statistics, output and its gradient in the compute dtype.
#include <cmath>
#include <cstring>

#include "backend/cpu/cpu.h"

namespace frugal {

template <class T>
static void rmsnorm_forward_t(T* out, float* rstd, const float* inp, const float* w, int64_t N, int64_t C,
                              float eps) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; i++) {
    const float* x = inp + i * C;
    T* y = out + i * C;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t c = 0; c < C; c++) ss += x[c] * x[c];
    const float s = 1.0f / std::sqrt(ss / float(C) + eps);
#pragma omp simd
    for (int64_t c = 0; c < C; c++) y[c] = from_f32<T>(x[c] * s * w[c]);
    rstd[i] = s;
  }
}

void CpuBackend::rmsnorm_forward(void* out, float* rstd, const float* inp, const float* w, int64_t N,
                                 int64_t C, float eps, DType dt) {
  dispatch(dt, [&](auto t) { rmsnorm_forward_t(static_cast<decltype(t)*>(out), rstd, inp, w, N, C, eps); });
}

// dinp = rstd (w dy - norm mean(w dy norm)), norm = inp rstd; dw += sum over rows of norm dy.
template <class T>
static void rmsnorm_backward_t(float* dinp, float* part, const T* dout, const float* inp, const float* w,
                               const float* rstd, int64_t N, int64_t C, T* copy) {
#pragma omp parallel
  {
    float* pdw = part + int64_t(omp_get_thread_num()) * C;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < N; i++) {
      const float* x = inp + i * C;
      const T* dy = dout + i * C;
      float* dx = dinp + i * C;
      const float s = rstd[i];
      float dnorm_norm_mean = 0.0f;
#pragma omp simd reduction(+ : dnorm_norm_mean)
      for (int64_t c = 0; c < C; c++) dnorm_norm_mean += w[c] * to_f32(dy[c]) * x[c] * s;
      dnorm_norm_mean /= float(C);
#pragma omp simd
      for (int64_t c = 0; c < C; c++) {
        const float norm = x[c] * s, g = to_f32(dy[c]);
        pdw[c] += norm * g;
        dx[c] += (w[c] * g - norm * dnorm_norm_mean) * s;
      }
      if (copy) {
        T* dc = copy + i * C;
#pragma omp simd
        for (int64_t c = 0; c < C; c++) dc[c] = from_f32<T>(dx[c]);
      }
    }
  }
}

void CpuBackend::rmsnorm_backward(float* dinp, float* dw, const void* dout, const float* inp, const float* w,
                                  const float* rstd, int64_t N, int64_t C, DType dt, void* dinp_copy) {
  const int nt = omp_get_max_threads();
  float* part = partials(C);  // nt rows of dw partials
  std::memset(part, 0, sizeof(float) * C * nt);
  dispatch(dt, [&](auto t) {
    using T = decltype(t);
    rmsnorm_backward_t(dinp, part, static_cast<const T*>(dout), inp, w, rstd, N, C, static_cast<T*>(dinp_copy));
  });
  reduce_partials(dw, part, nt, C);
}

}  // namespace frugal
