// Causal multi-head self-attention, forward and backward, with the probabilities stashed in
// the compute dtype. Parallel over (b, h): each task owns its slices of out / dqkv, and
// accumulates in fp32 scratch of its thread before storing.
#include <cmath>
#include <cstring>

#include "backend/cpu/cpu.h"

namespace frugal {

template <class S>
static void attention_forward_t(S* out, S* probs, const S* qkv, float* scratch, int64_t B, int64_t Tn,
                                int64_t C, int64_t NH) {
  const int64_t T = Tn, HS = C / NH, C3 = 3 * C;
  const float scale = 1.0f / std::sqrt(float(HS));
#pragma omp parallel
  {
    float* p = scratch + int64_t(omp_get_thread_num()) * (T + HS + HS);
    float* o = p + T;
    float* q = o + HS;
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++) {
      for (int64_t h = 0; h < NH; h++) {
        const S* base = qkv + b * T * C3 + h * HS;
        for (int64_t t = 0; t < T; t++) {
          for (int64_t d = 0; d < HS; d++) q[d] = to_f32(base[t * C3 + d]);
          float maxv = -INFINITY;
          for (int64_t t2 = 0; t2 <= t; t2++) {
            const S* k = base + t2 * C3 + C;
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int64_t d = 0; d < HS; d++) s += q[d] * to_f32(k[d]);
            s *= scale;
            p[t2] = s;
            maxv = s > maxv ? s : maxv;
          }
          float sum = 0.0f;
          for (int64_t t2 = 0; t2 <= t; t2++) {
            p[t2] = std::exp(p[t2] - maxv);
            sum += p[t2];
          }
          float inv = 1.0f / sum;
          std::memset(o, 0, HS * sizeof(float));
          S* prow = probs + ((b * NH + h) * T + t) * T;
          for (int64_t t2 = 0; t2 <= t; t2++) {
            S stored = from_f32<S>(p[t2] * inv);
            prow[t2] = stored;
            float pv = to_f32(stored);  // use what backward will see
            const S* v = base + t2 * C3 + 2 * C;
#pragma omp simd
            for (int64_t d = 0; d < HS; d++) o[d] += pv * to_f32(v[d]);
          }
          S* orow = out + (b * T + t) * C + h * HS;
          for (int64_t d = 0; d < HS; d++) orow[d] = from_f32<S>(o[d]);
        }
      }
    }
  }
}

template <class S>
static void attention_backward_t(S* dqkv, const S* dout, const S* qkv, const S* probs, float* scratch,
                                 int64_t B, int64_t Tn, int64_t C, int64_t NH) {
  const int64_t T = Tn, HS = C / NH, C3 = 3 * C;
  const float scale = 1.0f / std::sqrt(float(HS));
#pragma omp parallel
  {
    // per thread: dP row (T), then dq (T,HS), dk (T,HS), dv (T,HS) of one (b, h), all fp32
    float* dp = scratch + int64_t(omp_get_thread_num()) * (T + 3 * T * HS);
    float* dq = dp + T;
    float* dk = dq + T * HS;
    float* dv = dk + T * HS;
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++) {
      for (int64_t h = 0; h < NH; h++) {
        const S* base = qkv + b * T * C3 + h * HS;
        std::memset(dq, 0, 3 * T * HS * sizeof(float));
        for (int64_t t = 0; t < T; t++) {
          const S* p = probs + ((b * NH + h) * T + t) * T;
          const S* dy = dout + (b * T + t) * C + h * HS;
          const S* q = base + t * C3;
          float dot = 0.0f;
          for (int64_t t2 = 0; t2 <= t; t2++) {
            const S* v = base + t2 * C3 + 2 * C;
            float* dvr = dv + t2 * HS;
            float s = 0.0f, pv = to_f32(p[t2]);
#pragma omp simd reduction(+ : s)
            for (int64_t d = 0; d < HS; d++) {
              float g = to_f32(dy[d]);
              s += g * to_f32(v[d]);
              dvr[d] += pv * g;
            }
            dp[t2] = s;
            dot += s * pv;
          }
          float* dqr = dq + t * HS;
          for (int64_t t2 = 0; t2 <= t; t2++) {
            float ds = to_f32(p[t2]) * (dp[t2] - dot) * scale;
            const S* k = base + t2 * C3 + C;
            float* dkr = dk + t2 * HS;
#pragma omp simd
            for (int64_t d = 0; d < HS; d++) {
              dqr[d] += ds * to_f32(k[d]);
              dkr[d] += ds * to_f32(q[d]);
            }
          }
        }
        S* dbase = dqkv + b * T * C3 + h * HS;
        for (int64_t t = 0; t < T; t++)
          for (int64_t d = 0; d < HS; d++) {
            dbase[t * C3 + d] = from_f32<S>(dq[t * HS + d]);
            dbase[t * C3 + C + d] = from_f32<S>(dk[t * HS + d]);
            dbase[t * C3 + 2 * C + d] = from_f32<S>(dv[t * HS + d]);
          }
      }
    }
  }
}

void CpuBackend::attention_forward(void* out, void* probs, const void* qkv, int64_t B, int64_t T,
                                   int64_t C, int64_t NH, DType dt) {
  float* scratch = partials(T + 2 * (C / NH));
  dispatch(dt, [&](auto t) {
    using S = decltype(t);
    attention_forward_t(static_cast<S*>(out), static_cast<S*>(probs), static_cast<const S*>(qkv), scratch, B, T, C, NH);
  });
}

void CpuBackend::attention_backward(void* dqkv, const void* dout, const void* qkv, const void* probs,
                                    int64_t B, int64_t T, int64_t C, int64_t NH, DType dt) {
  float* scratch = partials(T + 3 * T * (C / NH));
  dispatch(dt, [&](auto t) {
    using S = decltype(t);
    attention_backward_t(static_cast<S*>(dqkv), static_cast<const S*>(dout), static_cast<const S*>(qkv),
                         static_cast<const S*>(probs), scratch, B, T, C, NH);
  });
}

}  // namespace frugal
