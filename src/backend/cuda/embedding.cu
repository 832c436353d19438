// Token + position embedding, forward and backward. The backward adds each gradient row to its
// token's row of dwte, and to its position's row of dwpe, in increasing position order, as the
// CPU backend does: the same bits as the CPU's in every run. A token may repeat, so its rows
// come grouped (the host sorts the positions by token); one block per distinct token.
#include "backend/cuda/kernels.h"

namespace frugal {

template <class S>
__global__ void embedding_forward_k(float* out, const int32_t* tokens, const S* wte,
                                    const S* wpe, int64_t BT, int64_t T, int64_t C) {
  GRID_STRIDE(i, BT * C) {
    int64_t bt = i / C, c = i % C;
    out[i] = to_f(wte[int64_t(tokens[bt]) * C + c]) + (wpe ? to_f(wpe[(bt % T) * C + c]) : 0.0f);
  }
}

// block k (256 threads): token tok[k], whose rows are pos[starts[k] .. starts[k + 1]), taken
// 256 positions at a time through shared memory, so that a thread's loads over them do not
// wait on each other (a frequent token has hundreds of rows in a batch of real text).
__global__ void embedding_backward_wte_k(float* dwte, const float* dout, const int32_t* starts, const int32_t* pos,
                                         const int32_t* tok, int64_t C) {
  __shared__ int32_t rows[256];
  const int k = blockIdx.x;
  const int32_t r0 = starts[k], r1 = starts[k + 1];
  float* d = dwte + int64_t(tok[k]) * C;
  for (int32_t b = r0; b < r1; b += 256) {
    const int n = min(256, r1 - b);
    __syncthreads();  // every thread is done with the previous positions
    if (int(threadIdx.x) < n) rows[threadIdx.x] = pos[b + threadIdx.x];
    __syncthreads();
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      float s = d[c];
#pragma unroll 8
      for (int i = 0; i < n; i++) s += dout[int64_t(rows[i]) * C + c];
      d[c] = s;
    }
  }
}

__global__ void embedding_backward_wpe_k(float* dwpe, const float* dout, int64_t B, int64_t T, int64_t C) {
  GRID_STRIDE(i, T * C) {
    float s = dwpe[i];
    for (int64_t b = 0; b < B; b++) s += dout[b * T * C + i];
    dwpe[i] = s;
  }
}

void launch_embedding_forward(float* out, const int32_t* tokens, const void* wte, const void* wpe,
                              int64_t B, int64_t T, int64_t C, DType wdt) {
  dispatch_cuda(wdt, [&](auto p) {
    using S = STORAGE(p);
    launch(embedding_forward_k<S>, grid_for(B * T * C), 256, 0, out, tokens, static_cast<const S*>(wte),
           static_cast<const S*>(wpe), B * T, T, C);
  });
}

void launch_embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* rows,
                               int64_t n_tokens, int64_t B, int64_t T, int64_t C) {
  const int32_t* pos = rows + n_tokens + 1;
  launch(embedding_backward_wte_k, unsigned(n_tokens), 256, 0, dwte, dout, rows, pos, pos + B * T, C);
  if (dwpe) launch(embedding_backward_wpe_k, grid_for(T * C), 256, 0, dwpe, dout, B, T, C);
}

}  // namespace frugal
