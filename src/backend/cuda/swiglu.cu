// SwiGLU, forward and backward, in the compute dtype: out = silu(gate) * up, gate and up side by
// side in each row of gu(N,2H).
#include "backend/cuda/kernels.h"

namespace frugal {

template <class S>
__global__ void swiglu_forward_k(S* out, const S* gu, int64_t N, int64_t H) {
  GRID_STRIDE(i, N * H) {
    const int64_t n = i / H, k = i % H;
    const float x = to_f(gu[n * 2 * H + k]);
    out[i] = from_f<S>(x / (1.0f + expf(-x)) * to_f(gu[n * 2 * H + H + k]));
  }
}

// Each element's gate and up are read before its gradients are written: dgu may be gu.
template <class S>
__global__ void swiglu_backward_k(S* dgu, const S* gu, const S* dout, int64_t N, int64_t H) {
  GRID_STRIDE(i, N * H) {
    const int64_t n = i / H, k = i % H;
    const float x = to_f(gu[n * 2 * H + k]), up = to_f(gu[n * 2 * H + H + k]), d = to_f(dout[i]);
    const float sig = 1.0f / (1.0f + expf(-x));
    dgu[n * 2 * H + k] = from_f<S>(d * up * sig * (1.0f + x * (1.0f - sig)));
    dgu[n * 2 * H + H + k] = from_f<S>(d * x * sig);
  }
}

void launch_swiglu_forward(void* out, const void* gu, int64_t N, int64_t H, DType dt) {
  dispatch_cuda(dt, [&](auto p) {
    using S = STORAGE(p);
    launch(swiglu_forward_k<S>, grid_for(N * H), 256, 0, static_cast<S*>(out), static_cast<const S*>(gu), N, H);
  });
}

void launch_swiglu_backward(void* dgu, const void* gu, const void* dout, int64_t N, int64_t H, DType dt) {
  dispatch_cuda(dt, [&](auto p) {
    using S = STORAGE(p);
    launch(swiglu_backward_k<S>, grid_for(N * H), 256, 0, static_cast<S*>(dgu), static_cast<const S*>(gu),
           static_cast<const S*>(dout), N, H);
  });
}

}  // namespace frugal
