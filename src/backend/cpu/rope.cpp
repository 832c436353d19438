// Rotary position embeddings (Hugging Face's rotate-half layout), in place on the q and k heads
// of a row, in the compute dtype, computed in fp32.
#include "backend/cpu/cpu.h"

namespace frugal {

template <class S>
static void rope_t(S* x, const float* cos, const float* sin, int64_t B, int64_t T, int64_t stride,
                   int64_t num_heads, int64_t HS, bool inverse) {
  const int64_t h = HS / 2;
  const float sign = inverse ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < B * T; r++) {
    const float* c = cos + (r % T) * h;
    const float* s = sin + (r % T) * h;
    for (int64_t head = 0; head < num_heads; head++) {
      S* p = x + r * stride + head * HS;
#pragma omp simd
      for (int64_t i = 0; i < h; i++) {
        const float a = to_f32(p[i]), b = to_f32(p[i + h]), sn = sign * s[i];
        p[i] = from_f32<S>(a * c[i] - b * sn);
        p[i + h] = from_f32<S>(b * c[i] + a * sn);
      }
    }
  }
}

void CpuBackend::rope(void* x, const float* cos, const float* sin, int64_t B, int64_t T, int64_t stride,
                      int64_t num_heads, int64_t HS, bool inverse, DType dt) {
  dispatch(dt, [&](auto t) { rope_t(static_cast<decltype(t)*>(x), cos, sin, B, T, stride, num_heads, HS, inverse); });
}

}  // namespace frugal
