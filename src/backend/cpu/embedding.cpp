// Token + position embedding, forward and backward.
#include <cstring>

#include "backend/cpu/cpu.h"

namespace frugal {

void CpuBackend::embedding_forward(float* out, const int32_t* tokens, const void* wte, const void* wpe,
                                   int64_t B, int64_t T, int64_t C, DType wdt) {
  dispatch(wdt, [&](auto t) {
    using S = decltype(t);
#pragma omp parallel for schedule(static)
    for (int64_t bt = 0; bt < B * T; bt++) {
      const S* e = static_cast<const S*>(wte) + int64_t(tokens[bt]) * C;
      float* o = out + bt * C;
      if (!wpe) {
#pragma omp simd
        for (int64_t c = 0; c < C; c++) o[c] = to_f32(e[c]);
        continue;
      }
      const S* p = static_cast<const S*>(wpe) + (bt % T) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; c++) o[c] = to_f32(e[c]) + to_f32(p[c]);
    }
  });
}

void CpuBackend::embedding_backward(float* dwte, float* dwpe, const float* dout,
                                    const int32_t* tokens, int64_t B, int64_t T, int64_t C) {
  // dwte: a token may repeat, so threads own channel ranges and walk all rows in order.
#pragma omp parallel for schedule(static)
  for (int64_t c0 = 0; c0 < C; c0 += 16) {
    int64_t c1 = c0 + 16 < C ? c0 + 16 : C;
    for (int64_t bt = 0; bt < B * T; bt++) {
      float* d = dwte + int64_t(tokens[bt]) * C;
      const float* g = dout + bt * C;
      for (int64_t c = c0; c < c1; c++) d[c] += g[c];
    }
  }
  if (!dwpe) return;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; t++) {
    float* d = dwpe + t * C;
    for (int64_t b = 0; b < B; b++) {
      const float* g = dout + (b * T + t) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; c++) d[c] += g[c];
    }
  }
}

}  // namespace frugal
