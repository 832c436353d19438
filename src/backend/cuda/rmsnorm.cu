// RMSNorm forward/backward over rows of (N,C), the Llama family's norm: one warp per row, as
// LayerNorm. Backward sums dw without atomics: each warp over its rows in its own part of shared
// memory, the block's warps in order into its row of partial sums, and the blocks' rows in order
// into dw.
#include "backend/cuda/kernels.h"

namespace frugal {

template <class S>
__global__ void rmsnorm_forward_k(S* out, float* rstd, const float* inp, const float* w, int64_t N, int64_t C,
                                  float eps) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const float* x = inp + row * C;
  float ss = 0.0f;
  for (int64_t c = lane; c < C; c += 32) ss += x[c] * x[c];
  const float r = 1.0f / sqrtf(warp_sum(ss) / float(C) + eps);
  S* y = out + row * C;
  for (int64_t c = lane; c < C; c += 32) y[c] = from_f<S>(x[c] * r * w[c]);
  if (lane == 0) rstd[row] = r;
}

template <class S>
__global__ void rmsnorm_backward_k(float* dinp, float* part, const S* dout, const float* inp, const float* w,
                                   const float* rstd, int64_t N, int64_t C, S* copy) {
  DYNAMIC_SHARED(float, sh);  // per warp: dw(C) of its rows
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* pdw = sh + C * warp;
  for (int64_t c = lane; c < C; c += 32) pdw[c] = 0.0f;  // by the lane that adds to them
  for (int64_t row = blockIdx.x * int64_t(warps) + warp; row < N; row += int64_t(gridDim.x) * warps) {
    const float* x = inp + row * C;
    const S* dy = dout + row * C;
    float* dx = dinp + row * C;
    const float s = rstd[row];
    float dnorm_norm_mean = 0.0f;
    for (int64_t c = lane; c < C; c += 32) dnorm_norm_mean += w[c] * to_f(dy[c]) * x[c] * s;
    dnorm_norm_mean = warp_sum(dnorm_norm_mean) / float(C);
    for (int64_t c = lane; c < C; c += 32) {
      const float norm = x[c] * s, g = to_f(dy[c]);
      pdw[c] += norm * g;
      const float v = dx[c] + (w[c] * g - norm * dnorm_norm_mean) * s;
      dx[c] = v;
      if (copy) copy[row * C + c] = from_f<S>(v);
    }
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float t = 0.0f;
    for (int k = 0; k < warps; k++) t += sh[C * k + c];
    part[blockIdx.x * C + c] = t;
  }
}

void launch_rmsnorm_forward(void* out, float* rstd, const float* inp, const float* w, int64_t N, int64_t C,
                            float eps, DType dt) {
  dispatch_cuda(dt, [&](auto p) {
    launch(rmsnorm_forward_k<STORAGE(p)>, unsigned((N + 7) / 8), 256, 0, static_cast<STORAGE(p)*>(out), rstd, inp, w,
           N, C, eps);
  });
}

// As many warps per block (up to 8) as leave each its C floats within 200 KiB of shared memory.
void launch_rmsnorm_backward(float* dinp, float* dw, float* part, const void* dout, const float* inp,
                             const float* w, const float* rstd, int64_t N, int64_t C, DType dt, void* dinp_copy) {
  const int64_t parts = partial_rows(N, kLayerNormParts);
  const int warps = int(std::clamp<int64_t>((200 << 10) / (4 * C), 1, 8));
  dispatch_cuda(dt, [&](auto p) {
    using S = STORAGE(p);
    launch(rmsnorm_backward_k<S>, unsigned(parts), 32 * warps, size_t(C * warps) * sizeof(float), dinp, part,
           static_cast<const S*>(dout), inp, w, rstd, N, C, static_cast<S*>(dinp_copy));
  });
  launch_sum_parts(dw, part, parts, C, C);
}

}  // namespace frugal
