// Dequantization of quantized weights (core/quant.h) into the storage type: the CPU backend's
// values (bitsandbytes' for nf4) bit for bit. A window (rows, cols) of the quantized matrix, one
// thread per 8 adjacent values of a window row (one 4- or 8-byte load of codes, 16-byte stores)
// where the columns and buffers are aligned for it, else one thread per value. The NF4 levels
// sit in shared memory (divergent indices), the dynamic map in constant memory (a warp's values
// span at most 4 absmaxes).
#include "backend/cuda/kernels.h"

namespace frugal {

__constant__ float kNf4Dev[16] = {FRUGAL_NF4_CODE};
__constant__ float kDynamicDev[256] = {FRUGAL_DYNAMIC_CODE};

// nf4: block b's absmax, the product rounded before the sum (never one fused multiply-add)
__device__ __forceinline__ float nf4_absmax_dev(const QuantView& q, int64_t b) {
  return __fadd_rn(__fmul_rn(kDynamicDev[q.absmax[b]], q.scale[b / kNf4Block2]), q.offset);
}

// out(rows, cols) = rows [row0, row0 + rows), columns [col0, col0 + cols) of q; vec: 8 values per
// thread (q.cols, col0 and cols multiples of 8: a thread's values then share a block), or 1
template <class S, int vec>
__global__ void dequantize_k(S* out, QuantView q, int64_t row0, int64_t rows, int64_t col0, int64_t cols) {
  __shared__ float levels[16];
  if (threadIdx.x < 16) levels[threadIdx.x] = kNf4Dev[threadIdx.x];
  __syncthreads();
  const int64_t per_row = cols / vec;
  GRID_STRIDE(t, rows * per_row) {
    const int64_t r = t / per_row, c = t % per_row * vec;
    const int64_t e = (row0 + r) * q.cols + col0 + c;  // the first value's index in q
    S* o = out + r * cols + c;
    if constexpr (vec == 8) {
      alignas(16) S v[8];
      if (q.format == QuantFormat::nf4) {
        const float am = nf4_absmax_dev(q, e / kQuantBlock);
        const uint32_t w = *reinterpret_cast<const uint32_t*>(q.q + e / 2);  // 8 codes
#pragma unroll
        for (int k = 0; k < 4; k++) {
          const uint32_t byte = w >> (8 * k) & 0xffu;
          v[2 * k] = from_f<S>(levels[byte >> 4] * am);
          v[2 * k + 1] = from_f<S>(levels[byte & 15u] * am);
        }
      } else {
        const float s = q.scale[e / kQuantBlock];
        const uint64_t w = *reinterpret_cast<const uint64_t*>(q.q + e);  // 8 int8 values
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = from_f<S>(float(int8_t(w >> (8 * k) & 0xffu)) * s);
      }
      copy16(o, v);
      if constexpr (sizeof(S) == 4) copy16(o + 4, v + 4);
    } else {
      if (q.format == QuantFormat::nf4) {
        const uint8_t byte = q.q[e / 2];
        *o = from_f<S>(levels[e % 2 ? byte & 15 : byte >> 4] * nf4_absmax_dev(q, e / kQuantBlock));
      } else {
        *o = from_f<S>(float(int8_t(q.q[e])) * q.scale[e / kQuantBlock]);
      }
    }
  }
}

void launch_dequantize(void* out, const QuantView& q, int64_t row0, int64_t rows, int64_t col0, int64_t cols,
                       DType dt) {
  const bool vec = q.cols % 8 == 0 && col0 % 8 == 0 && cols % 8 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(q.q) % 8 == 0;
  dispatch_cuda(dt, [&](auto p) {
    using S = STORAGE(p);
    S* o = static_cast<S*>(out);
    if (vec) launch(dequantize_k<S, 8>, grid_for(rows * cols / 8), 256, 0, o, q, row0, rows, col0, cols);
    else launch(dequantize_k<S, 1>, grid_for(rows * cols), 256, 0, o, q, row0, rows, col0, cols);
  });
}

}  // namespace frugal
