// Token + position embedding, forward and backward. dwte accumulates with atomics (a token may
// repeat), so its sums are not bit-reproducible; dwpe is summed over the batch in order.
#include "backend/cuda/kernels.h"

namespace frugal {

__global__ void embedding_forward_k(float* out, const int32_t* tokens, const float* wte,
                                    const float* wpe, int64_t BT, int64_t T, int64_t C) {
  GRID_STRIDE(i, BT * C) {
    int64_t bt = i / C, c = i % C;
    out[i] = wte[int64_t(tokens[bt]) * C + c] + wpe[(bt % T) * C + c];
  }
}

__global__ void embedding_backward_wte_k(float* dwte, const float* dout, const int32_t* tokens,
                                         int64_t BT, int64_t C) {
  GRID_STRIDE(i, BT * C) atomicAdd(dwte + int64_t(tokens[i / C]) * C + i % C, dout[i]);
}

__global__ void embedding_backward_wpe_k(float* dwpe, const float* dout, int64_t B, int64_t T, int64_t C) {
  GRID_STRIDE(i, T * C) {
    float s = 0.0f;
    for (int64_t b = 0; b < B; b++) s += dout[b * T * C + i];
    dwpe[i] += s;
  }
}

void launch_embedding_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                              int64_t B, int64_t T, int64_t C) {
  launch(embedding_forward_k, grid_for(B * T * C), 256, 0, out, tokens, wte, wpe, B * T, T, C);
}

void launch_embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                               int64_t B, int64_t T, int64_t C) {
  launch(embedding_backward_wte_k, grid_for(B * T * C), 256, 0, dwte, dout, tokens, B * T, C);
  launch(embedding_backward_wpe_k, grid_for(T * C), 256, 0, dwpe, dout, B, T, C);
}

}  // namespace frugal
