// Fused softmax + cross-entropy over rows of logits(N,Vp) in the storage type, one block per
// row, in fp32: an online max and sum in one pass, then (with a gradient scale) the row's
// dlogits over its logits in a second. Columns >= V are padding.
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

template <class S>
__global__ void softmax_xent_k(S* logits, float* losses, const int32_t* targets, int64_t V, int64_t Vp,
                               float grad_scale) {
  S* x = logits + blockIdx.x * Vp;
  float m = -FLT_MAX, s = 0.0f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) combine(m, s, to_f(x[v]), 1.0f);
  for (int o = 16; o > 0; o >>= 1) combine(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  __shared__ float wm[32], ws[32];
  if (threadIdx.x % 32 == 0) { wm[threadIdx.x / 32] = m; ws[threadIdx.x / 32] = s; }
  __syncthreads();
  m = -FLT_MAX;
  s = 0.0f;
  for (int w = 0; w < int(blockDim.x / 32); w++) combine(m, s, wm[w], ws[w]);
  const int64_t tgt = targets[blockIdx.x];
  const float lse = m + logf(s), xt = to_f(x[tgt]);
  __syncthreads();  // every thread has read x[tgt] before the row is overwritten
  if (threadIdx.x == 0) losses[blockIdx.x] = lse - xt;
  if (grad_scale == 0.0f) return;
  for (int64_t v = threadIdx.x; v < Vp; v += blockDim.x)  // each thread rewrites what it reads
    x[v] = from_f<S>(v < V ? expf(to_f(x[v]) - lse) * grad_scale - (v == tgt ? grad_scale : 0.0f) : 0.0f);
}

void launch_softmax_xent(void* logits, float* losses, const int32_t* targets, int64_t N, int64_t V,
                         int64_t Vp, float grad_scale, DType dt) {
  dispatch_cuda(dt, [&](auto p) {
    launch(softmax_xent_k<STORAGE(p)>, unsigned(N), 512, 0, static_cast<STORAGE(p)*>(logits), losses, targets, V, Vp,
           grad_scale);
  });
}

}  // namespace frugal
