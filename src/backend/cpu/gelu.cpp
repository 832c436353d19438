// GELU (tanh approximation), forward and backward, in the compute dtype. Built with
// -ffast-math so that tanhf vectorises through libmvec.
#include <cmath>

#include "backend/cpu/cpu.h"

namespace frugal {

static constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2/pi)

template <class T>
static void gelu_forward_t(T* out, const T* inp, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; i++) {
    float x = to_f32(inp[i]);
    out[i] = from_f32<T>(0.5f * x * (1.0f + std::tanh(kGeluScale * (x + 0.044715f * x * x * x))));
  }
}

template <class T>
static void gelu_backward_t(T* dinp, const T* inp, const T* dout, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; i++) {
    float x = to_f32(inp[i]);
    float th = std::tanh(kGeluScale * (x + 0.044715f * x * x * x));
    float sech2 = 1.0f - th * th;
    float grad = 0.5f * (1.0f + th) + 0.5f * x * sech2 * kGeluScale * (1.0f + 3.0f * 0.044715f * x * x);
    dinp[i] = from_f32<T>(grad * to_f32(dout[i]));
  }
}

void CpuBackend::gelu_forward(void* out, const void* inp, int64_t n, DType dt) {
  dispatch(dt, [&](auto t) {
    using T = decltype(t);
    gelu_forward_t(static_cast<T*>(out), static_cast<const T*>(inp), n);
  });
}

void CpuBackend::gelu_backward(void* dinp, const void* inp, const void* dout, int64_t n, DType dt) {
  dispatch(dt, [&](auto t) {
    using T = decltype(t);
    gelu_backward_t(static_cast<T*>(dinp), static_cast<const T*>(inp), static_cast<const T*>(dout), n);
  });
}

}  // namespace frugal
