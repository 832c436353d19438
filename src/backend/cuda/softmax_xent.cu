// Fused softmax + cross-entropy over rows of logits(N,Vp) in the storage type, one block per
// row, in fp32: an online max and sum in one pass (one exp per logit), then (with a gradient
// scale) the row's dlogits over its logits in a second. Columns >= V are padding. A row whose
// target is < 0 is ignored: loss 0, dlogits 0.
#include <cfloat>

#include "backend/cuda/kernels.h"

namespace frugal {

// (max, sum of exp(x - max)) of two parts
__device__ __forceinline__ void combine(float& m, float& s, float m2, float s2) {
  if (s2 == 0.0f) return;
  if (s == 0.0f) { m = m2; s = s2; return; }
  float mx = fmaxf(m, m2);
  s = s * expf(m - mx) + s2 * expf(m2 - mx);
  m = mx;
}

// n adjacent columns from src to dst: 16 bytes in one load and one store, or one element.
template <int n, class S>
__device__ __forceinline__ void copy_cols(S* dst, const S* src) {
  if constexpr (n > 1) copy16(dst, src);
  else *dst = *src;
}

// n: columns per load, 16 bytes' worth (16 / sizeof(S)) where Vp and the buffer allow it, else 1.
template <class S, int n>
__global__ void softmax_xent_k(S* logits, float* losses, const int32_t* targets, int64_t V, int64_t Vp,
                               float grad_scale) {
  S* x = logits + blockIdx.x * Vp;
  const int64_t first = threadIdx.x * int64_t(n), stride = int64_t(blockDim.x) * n;
  const int64_t tgt = targets[blockIdx.x];
  if (tgt < 0) {  // ignored: the whole block returns here
    if (threadIdx.x == 0) losses[blockIdx.x] = 0.0f;
    if (grad_scale == 0.0f) return;
    alignas(16) S zero[n];
    for (int k = 0; k < n; k++) zero[k] = from_f<S>(0.0f);
    for (int64_t v = first; v < Vp; v += stride) copy_cols<n>(x + v, zero);
    return;
  }
  float m = -FLT_MAX, s = 0.0f;
  for (int64_t v = first; v < V; v += stride) {
    alignas(16) S r[n];
    copy_cols<n>(r, x + v);
#pragma unroll
    for (int k = 0; k < n; k++) {
      if (v + k >= V) break;
      const float y = to_f(r[k]);
      if (y > m) {  // a new max rescales the sum so far
        s = s * expf(m - y) + 1.0f;
        m = y;
      } else {
        s += expf(y - m);
      }
    }
  }
  for (int o = 16; o > 0; o >>= 1) combine(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  __shared__ float wm[32], ws[32];
  if (threadIdx.x % 32 == 0) { wm[threadIdx.x / 32] = m; ws[threadIdx.x / 32] = s; }
  __syncthreads();
  m = -FLT_MAX;
  s = 0.0f;
  for (int w = 0; w < int(blockDim.x / 32); w++) combine(m, s, wm[w], ws[w]);
  const float lse = m + logf(s), xt = to_f(x[tgt]);
  __syncthreads();  // every thread has read x[tgt] before the row is overwritten
  if (threadIdx.x == 0) losses[blockIdx.x] = lse - xt;
  if (grad_scale == 0.0f) return;
  for (int64_t v = first; v < Vp; v += stride) {  // each thread rewrites what it reads
    alignas(16) S r[n];
    copy_cols<n>(r, x + v);
#pragma unroll
    for (int k = 0; k < n; k++) {
      const int64_t c = v + k;
      r[k] = from_f<S>(c < V ? expf(to_f(r[k]) - lse) * grad_scale - (c == tgt ? grad_scale : 0.0f) : 0.0f);
    }
    copy_cols<n>(x + v, r);
  }
}

void launch_softmax_xent(void* logits, float* losses, const int32_t* targets, int64_t N, int64_t V,
                         int64_t Vp, float grad_scale, DType dt) {
  dispatch_cuda(dt, [&](auto p) {
    using S = STORAGE(p);
    constexpr int kVec = 16 / sizeof(S);
    S* x = static_cast<S*>(logits);
    if (Vp % kVec == 0 && reinterpret_cast<uintptr_t>(logits) % 16 == 0)
      launch(softmax_xent_k<S, kVec>, unsigned(N), 512, 0, x, losses, targets, V, Vp, grad_scale);
    else
      launch(softmax_xent_k<S, 1>, unsigned(N), 512, 0, x, losses, targets, V, Vp, grad_scale);
  });
}

}  // namespace frugal
