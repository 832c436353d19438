// GELU (tanh approximation), forward and backward, in the compute dtype.
#include "backend/cuda/kernels.h"

namespace frugal {

static constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2/pi)

template <class S>
__global__ void gelu_forward_k(S* out, const S* inp, int64_t n) {
  GRID_STRIDE(i, n) {
    float x = to_f(inp[i]);
    out[i] = from_f<S>(0.5f * x * (1.0f + tanhf(kGeluScale * (x + 0.044715f * x * x * x))));
  }
}

template <class S>
__global__ void gelu_backward_k(S* dinp, const S* inp, const S* dout, int64_t n) {
  GRID_STRIDE(i, n) {
    float x = to_f(inp[i]);
    float th = tanhf(kGeluScale * (x + 0.044715f * x * x * x));
    float sech2 = 1.0f - th * th;
    float grad = 0.5f * (1.0f + th) + 0.5f * x * sech2 * kGeluScale * (1.0f + 3.0f * 0.044715f * x * x);
    dinp[i] = from_f<S>(grad * to_f(dout[i]));
  }
}

void launch_gelu_forward(void* out, const void* inp, int64_t n, DType dt) {
  dispatch_cuda(dt, [&](auto p) {
    using S = STORAGE(p);
    launch(gelu_forward_k<S>, grid_for(n), 256, 0, static_cast<S*>(out), static_cast<const S*>(inp), n);
  });
}

void launch_gelu_backward(void* dinp, const void* inp, const void* dout, int64_t n, DType dt) {
  dispatch_cuda(dt, [&](auto p) {
    using S = STORAGE(p);
    launch(gelu_backward_k<S>, grid_for(n), 256, 0, static_cast<S*>(dinp), static_cast<const S*>(inp), static_cast<const S*>(dout), n);
  });
}

}  // namespace frugal
