// SwiGLU (the Llama family's MLP activation): out = silu(gate) * up, gate and up side by side in
// each row of gu(N,2H); forward and backward in the compute dtype, computed in fp32. Built with
// -ffast-math so that expf vectorises through libmvec.
#include <cmath>

#include "backend/cpu/cpu.h"

namespace frugal {

template <class T>
static void swiglu_forward_t(T* out, const T* gu, int64_t N, int64_t H) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; n++) {
    const T* g = gu + n * 2 * H;
    const T* u = g + H;
    T* y = out + n * H;
#pragma omp simd
    for (int64_t i = 0; i < H; i++) {
      const float x = to_f32(g[i]);
      y[i] = from_f32<T>(x / (1.0f + std::exp(-x)) * to_f32(u[i]));
    }
  }
}

// d gate = dy up sig (1 + gate (1 - sig)), d up = dy silu(gate); each element's gate and up are
// read before its gradients are written, so dgu may be gu.
template <class T>
static void swiglu_backward_t(T* dgu, const T* gu, const T* dout, int64_t N, int64_t H) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; n++) {
    const T* g = gu + n * 2 * H;
    const T* dy = dout + n * H;
    T* dg = dgu + n * 2 * H;
#pragma omp simd
    for (int64_t i = 0; i < H; i++) {
      const float x = to_f32(g[i]), up = to_f32(g[H + i]), d = to_f32(dy[i]);
      const float sig = 1.0f / (1.0f + std::exp(-x));
      dg[i] = from_f32<T>(d * up * sig * (1.0f + x * (1.0f - sig)));
      dg[H + i] = from_f32<T>(d * x * sig);
    }
  }
}

void CpuBackend::swiglu_forward(void* out, const void* gu, int64_t N, int64_t H, DType dt) {
  dispatch(dt, [&](auto t) {
    using T = decltype(t);
    swiglu_forward_t(static_cast<T*>(out), static_cast<const T*>(gu), N, H);
  });
}

void CpuBackend::swiglu_backward(void* dgu, const void* gu, const void* dout, int64_t N, int64_t H, DType dt) {
  dispatch(dt, [&](auto t) {
    using T = decltype(t);
    swiglu_backward_t(static_cast<T*>(dgu), static_cast<const T*>(gu), static_cast<const T*>(dout), N, H);
  });
}

}  // namespace frugal
