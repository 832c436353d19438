// LayerNorm forward/backward over rows of (N,C), eps 1e-5: one warp per row. Backward sums
// dw and db without atomics: each warp over its rows in its own part of shared memory (a lane
// owns the channels c = lane mod 32), the block's warps in order into its row of partial sums,
// and the blocks' rows in order into dw and db.
#include "backend/cuda/kernels.h"

namespace frugal {

template <class S>
__global__ void layernorm_forward_k(S* out, float* mean, float* rstd, const float* inp,
                                    const float* w, const float* b, int64_t N, int64_t C) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const float* x = inp + row * C;
  float s = 0.0f;
  for (int64_t c = lane; c < C; c += 32) s += x[c];
  const float m = warp_sum(s) / float(C);
  float v = 0.0f;
  for (int64_t c = lane; c < C; c += 32) v += (x[c] - m) * (x[c] - m);
  const float r = 1.0f / sqrtf(warp_sum(v) / float(C) + 1e-5f);
  S* y = out + row * C;
  for (int64_t c = lane; c < C; c += 32) y[c] = from_f<S>((x[c] - m) * r * w[c] + b[c]);
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = r;
  }
}

template <class S>
__global__ void layernorm_backward_k(float* dinp, float* part, const S* dout, const float* inp, const float* w,
                                     const float* mean, const float* rstd, int64_t N, int64_t C, S* copy) {
  DYNAMIC_SHARED(float, sh);  // per warp: dw(C), db(C) of its rows
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* pdw = sh + 2 * C * warp;
  float* pdb = pdw + C;
  for (int64_t c = lane; c < C; c += 32) pdw[c] = pdb[c] = 0.0f;  // by the lane that adds to them
  for (int64_t row = blockIdx.x * int64_t(warps) + warp; row < N; row += int64_t(gridDim.x) * warps) {
    const float* x = inp + row * C;
    const S* dy = dout + row * C;
    float* dx = dinp + row * C;
    const float m = mean[row], s = rstd[row];
    float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
    for (int64_t c = lane; c < C; c += 32) {
      float norm = (x[c] - m) * s, dnorm = w[c] * to_f(dy[c]);
      dnorm_mean += dnorm;
      dnorm_norm_mean += dnorm * norm;
    }
    dnorm_mean = warp_sum(dnorm_mean) / float(C);
    dnorm_norm_mean = warp_sum(dnorm_norm_mean) / float(C);
    for (int64_t c = lane; c < C; c += 32) {
      float norm = (x[c] - m) * s, g = to_f(dy[c]);
      pdb[c] += g;
      pdw[c] += norm * g;
      const float v = dx[c] + (w[c] * g - dnorm_mean - norm * dnorm_norm_mean) * s;
      dx[c] = v;
      if (copy) copy[row * C + c] = from_f<S>(v);
    }
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < 2 * C; c += blockDim.x) {
    float t = 0.0f;
    for (int k = 0; k < warps; k++) t += sh[2 * C * k + c];
    part[blockIdx.x * 2 * C + c] = t;
  }
}

void launch_layernorm_forward(void* out, float* mean, float* rstd, const float* inp, const float* w,
                              const float* b, int64_t N, int64_t C, DType dt) {
  dispatch_cuda(dt, [&](auto p) {
    launch(layernorm_forward_k<STORAGE(p)>, unsigned((N + 7) / 8), 256, 0, static_cast<STORAGE(p)*>(out), mean, rstd, inp, w, b, N, C);
  });
}

// As many warps per block (up to 8) as leave each its 2 C floats within 200 KiB of shared memory.
void launch_layernorm_backward(float* dinp, float* dw, float* db, float* part, const void* dout, const float* inp,
                               const float* w, const float* mean, const float* rstd, int64_t N, int64_t C, DType dt,
                               void* dinp_copy) {
  const int64_t parts = partial_rows(N, kLayerNormParts);
  const int warps = int(std::clamp<int64_t>((200 << 10) / (8 * C), 1, 8));
  dispatch_cuda(dt, [&](auto p) {
    using S = STORAGE(p);
    launch(layernorm_backward_k<S>, unsigned(parts), 32 * warps, size_t(2 * C * warps) * sizeof(float), dinp, part,
           static_cast<const S*>(dout), inp, w, mean, rstd, N, C, static_cast<S*>(dinp_copy));
  });
  launch_sum_parts(dw, part, parts, C, 2 * C);
  launch_sum_parts(db, part + C, parts, C, 2 * C);
}

}  // namespace frugal
