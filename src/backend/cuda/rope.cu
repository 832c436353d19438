// Rotary position embeddings (Hugging Face's rotate-half layout), in place on the q and k heads
// of each row, in the compute dtype: one thread per pair of channels (i, i + HS/2).
#include "backend/cuda/kernels.h"

namespace frugal {

template <class S>
__global__ void rope_k(S* x, const float* cos, const float* sin, int64_t BT, int64_t T, int64_t stride,
                       int64_t num_heads, int64_t HS, float sign) {
  const int64_t h = HS / 2;
  GRID_STRIDE(j, BT * num_heads * h) {
    const int64_t i = j % h, head = (j / h) % num_heads, r = j / (h * num_heads), t = r % T;
    S* p = x + r * stride + head * HS;
    const float a = to_f(p[i]), b = to_f(p[i + h]), c = cos[t * h + i], sn = sign * sin[t * h + i];
    p[i] = from_f<S>(a * c - b * sn);
    p[i + h] = from_f<S>(b * c + a * sn);
  }
}

void launch_rope(void* x, const float* cos, const float* sin, int64_t B, int64_t T, int64_t stride,
                 int64_t num_heads, int64_t HS, bool inverse, DType dt) {
  dispatch_cuda(dt, [&](auto p) {
    using S = STORAGE(p);
    launch(rope_k<S>, grid_for(B * T * num_heads * (HS / 2)), 256, 0, static_cast<S*>(x), cos, sin, B * T, T, stride,
           num_heads, HS, inverse ? -1.0f : 1.0f);
  });
}

}  // namespace frugal
