// Elementwise and reduction ops over flat buffers: add, cast, sum of squares, AdamW.
#include <cmath>
#include <algorithm>
#include <cstring>
#include <immintrin.h>
#include <type_traits>

#include "backend/cpu/cpu.h"

namespace frugal {

Backend& cpu_backend() {
  static CpuBackend b;
  return b;
}

void CpuBackend::add(float* out, const float* a, const void* b, int64_t n, DType dt) {
  dispatch(dt, [&](auto t) {
    const auto* bt = static_cast<const decltype(t)*>(b);
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + to_f32(bt[i]);
  });
}

void CpuBackend::cast(void* dst, const float* src, int64_t n, DType dt) {
  dispatch(dt, [&](auto t) {
    using T = decltype(t);
    T* d = static_cast<T*>(dst);
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) d[i] = from_f32<T>(src[i]);
  });
}

void CpuBackend::dropout(void* out, const void* in, int64_t n, float p, uint64_t seed, bool accumulate, DType dt) {
  const float k = 1.0f / (1.0f - p);
  dispatch(dt, [&](auto t) {
    using T = decltype(t);
    const T* x = static_cast<const T*>(in);
    T* y = static_cast<T*>(out);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
      const float v = dropout_keep(seed, i, p) ? to_f32(x[i]) * k : 0.0f;
      y[i] = from_f32<T>(accumulate ? to_f32(y[i]) + v : v);
    }
  });
}

void CpuBackend::scale(void* x, float s, int64_t n, DType dt) {
  dispatch(dt, [&](auto t) {
    using T = decltype(t);
    T* d = static_cast<T*>(x);
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) d[i] = from_f32<T>(to_f32(d[i]) * s);
  });
}

// In chunks over the threads: one thread's memset does not fill the memory bandwidth of two
// (the gradients' zeroing took 5 % of a gpt2 bf16 step, not halving with the second thread).
void CpuBackend::fill_zero(float* x, int64_t n) {
  constexpr int64_t kChunk = int64_t(1) << 16;  // floats
  if (n <= 0) return;  // an empty slice may be null
  if (n < 2 * kChunk) return (void)std::memset(x, 0, size_t(n) * sizeof(float));
  if (n >= (int64_t(1) << 20)) {  // past L2 (4 MB): streaming stores, which do not read each line
    // before writing it: gpt2's 124 M gradients 25 -> 11 ms a step; the default run (units of
    // 1.8 M) 150 steps 28.6 -> 27.7 s
    const int64_t head = int64_t((16 - reinterpret_cast<uintptr_t>(x) % 16) % 16 / sizeof(float));  // to 16 bytes
    std::memset(x, 0, size_t(head) * sizeof(float));
    const int64_t body = (n - head) / 4 * 4;
#pragma omp parallel
    {
#pragma omp for schedule(static) nowait
      for (int64_t i = head; i < head + body; i += 4) _mm_stream_ps(x + i, _mm_setzero_ps());
      _mm_sfence();  // each thread's streaming stores done before the region's end
    }
    std::memset(x + head + body, 0, size_t(n - head - body) * sizeof(float));
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i += kChunk) std::memset(x + i, 0, size_t(std::min(kChunk, n - i)) * sizeof(float));
}

double CpuBackend::sum(const float* x, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; i++) s += x[i];
  return s;
}

double CpuBackend::sum_squares(const std::vector<FloatSpan>& spans) {
  double total = 0.0;
  for (const FloatSpan& sp : spans) {  // spans in order, each in fixed chunks summed in order:
    const float* x = sp.x;             // the same result for any thread count
    const int64_t n = sp.n, chunk = 1 << 14, num_chunks = (n + chunk - 1) / chunk;
    if (sq_partials_.size() < size_t(num_chunks)) sq_partials_.resize(num_chunks);
    double* part = sq_partials_.data();
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < num_chunks; k++) {
      int64_t i0 = k * chunk, i1 = i0 + chunk < n ? i0 + chunk : n;
      double s = 0.0;
#pragma omp simd reduction(+ : s)
      for (int64_t i = i0; i < i1; i++) s += double(x[i]) * double(x[i]);
      part[k] = s;
    }
    double span_total = 0.0;
    for (int64_t k = 0; k < num_chunks; k++) span_total += part[k];
    total += span_total;
  }
  return total;
}

// copy: the compute copy to refresh (C = float: none). Vectorised (the build's -fno-math-errno
// lets sqrt vectorise): 2.5x the scalar loop, at memory bandwidth. Its rounding is pinned, so that
// results do not depend on whether the compiler vectorises: the two fused multiply-adds written
// out, no other contraction (fp-contract=off), as GCC contracted the scalar loop before.
template <class C>
__attribute__((optimize("fp-contract=off")))
static void adamw_t(float* param, const float* grad, float* m, float* v, int64_t n, const AdamWArgs& a, C* copy) {
  const float bc1 = 1.0f - std::pow(a.beta1, float(a.step));
  const float bc2_sqrt = std::sqrt(1.0f - std::pow(a.beta2, float(a.step)));
  const float step_size = a.lr / bc1, decay = 1.0f - a.lr * a.weight_decay;
  const float b1 = a.beta1, b2 = a.beta2, ob1 = 1.0f - b1, ob2 = 1.0f - b2, scale = a.grad_scale, eps = a.eps;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; i++) {
    float g = grad[i] * scale;
    float mi = std::fma(b1, m[i], ob1 * g);
    float vi = std::fma(b2, v[i], ob2 * g * g);
    m[i] = mi;
    v[i] = vi;
    float p = param[i] * decay - step_size * mi / (std::sqrt(vi) / bc2_sqrt + eps);
    param[i] = p;
    if constexpr (!std::is_same_v<C, float>) copy[i] = from_f32<C>(p);
  }
}

void CpuBackend::adamw(const std::vector<AdamWSpan>& spans, const AdamWArgs& a, DType copy_dt) {
  for (const AdamWSpan& s : spans) {
    AdamWArgs as = a;
    if (!s.decay) as.weight_decay = 0.0f;
    if (!s.copy) {
      adamw_t<float>(s.param, s.grad, s.m, s.v, s.n, as, nullptr);
      continue;
    }
    dispatch(copy_dt, [&](auto t) {
      using C = decltype(t);
      adamw_t(s.param, s.grad, s.m, s.v, s.n, as, static_cast<C*>(s.copy));
    });
  }
}

}  // namespace frugal
