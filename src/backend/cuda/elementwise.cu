// Elementwise and reduction kernels over flat buffers: add, cast, sums, AdamW, and the
// bias helpers of the GEMMs (a bias add where cuBLASLt has no fused epilogue, column sums).
#include "backend/cuda/kernels.h"

namespace frugal {

template <class S>
__global__ void add_k(float* out, const float* a, const S* b, int64_t n) {
  GRID_STRIDE(i, n) out[i] = a[i] + to_f(b[i]);
}

template <class S>
__global__ void scale_k(S* x, float s, int64_t n) {
  GRID_STRIDE(i, n) x[i] = from_f<S>(to_f(x[i]) * s);
}

template <class S>
__global__ void cast_k(S* dst, const float* src, int64_t n) {
  GRID_STRIDE(i, n) dst[i] = from_f<S>(src[i]);
}

template <class S>
__global__ void widen_k(float* dst, const S* src, int64_t n) {
  GRID_STRIDE(i, n) dst[i] = to_f(src[i]);
}

void launch_add(float* out, const float* a, const void* b, int64_t n, DType dt) {
  dispatch_cuda(dt, [&](auto p) { launch(add_k<STORAGE(p)>, grid_for(n), 256, 0, out, a, static_cast<const STORAGE(p)*>(b), n); });
}

// backend.h's dropout_keep, on the device
template <class S>
__global__ void dropout_k(S* out, const S* in, int64_t n, float p, float k, uint64_t seed, bool accumulate) {
  GRID_STRIDE(i, n) {
    uint64_t z = seed + uint64_t(i + 1) * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    const float v = double(z >> 40) >= double(p) * 16777216.0 ? to_f(in[i]) * k : 0.0f;
    out[i] = from_f<S>(accumulate ? to_f(out[i]) + v : v);
  }
}

void launch_dropout(void* out, const void* in, int64_t n, float p, uint64_t seed, bool accumulate, DType dt) {
  dispatch_cuda(dt, [&](auto q) {
    launch(dropout_k<STORAGE(q)>, grid_for(n), 256, 0, static_cast<STORAGE(q)*>(out), static_cast<const STORAGE(q)*>(in), n,
           p, 1.0f / (1.0f - p), seed, accumulate);
  });
}

void launch_scale(void* x, float s, int64_t n, DType dt) {
  dispatch_cuda(dt, [&](auto p) { launch(scale_k<STORAGE(p)>, grid_for(n), 256, 0, static_cast<STORAGE(p)*>(x), s, n); });
}

void launch_cast(void* dst, const float* src, int64_t n, DType dt, void* stream) {
  dispatch_cuda(dt, [&](auto p) {
    launch_on(stream, cast_k<STORAGE(p)>, grid_for(n), 256, 0, static_cast<STORAGE(p)*>(dst), src, n);
  });
}

void launch_widen(float* dst, const void* src, int64_t n, DType dt, void* stream) {
  dispatch_cuda(dt, [&](auto p) {
    launch_on(stream, widen_k<STORAGE(p)>, grid_for(n), 256, 0, dst, static_cast<const STORAGE(p)*>(src), n);
  });
}


// Block b's partial sum, in double, added to slots[b] (there are kReduceSlots of them): each
// slot has one writer per launch, and launches run in order, so the sums come out the same bits
// every run. inf and NaN propagate.
__global__ void reduce_k(double* slots, const float* x, int64_t n, bool squares) {
  double s = 0.0;
  GRID_STRIDE(i, n) s += squares ? double(x[i]) * double(x[i]) : double(x[i]);
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  __shared__ double warp[32];
  if (threadIdx.x % 32 == 0) warp[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
    for (int w = 0; w < int(blockDim.x / 32); w++) t += warp[w];
    slots[blockIdx.x] += t;
  }
}

void launch_reduce(double* slots, const float* x, int64_t n, bool squares) {
  launch(reduce_k, std::min(grid_for(n), unsigned(kReduceSlots)), 256, 0, slots, x, n, squares);
}

// Every span in one launch: each block finds its span (binary search on first_block), then its
// threads stride over the block's chunk of it.
template <class C>  // C = float: no copies
__global__ void adamw_k(const AdamWSpanDev* spans, int count, float beta1, float beta2, float eps,
                        float step_size, float bc2_sqrt, float grad_scale, float decay) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {  // the last span with first_block <= blockIdx.x
    const int mid = (lo + hi + 1) / 2;
    if (spans[mid].first_block <= int64_t(blockIdx.x)) lo = mid;
    else hi = mid - 1;
  }
  const AdamWSpanDev s = spans[lo];
  const int64_t begin = (int64_t(blockIdx.x) - s.first_block) * kAdamWChunk, end = min(begin + kAdamWChunk, s.n);
  C* copy = static_cast<C*>(s.copy);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    // the CPU's rounding (cpu/elementwise.cpp): these two FMAs, no other contraction
    float g = s.grad[i] * grad_scale;
    float mi = fmaf(beta1, s.m[i], __fmul_rn(1.0f - beta1, g));
    float vi = fmaf(beta2, s.v[i], __fmul_rn(__fmul_rn(1.0f - beta2, g), g));
    s.m[i] = mi;
    s.v[i] = vi;
    float p = __fadd_rn(__fmul_rn(s.param[i], s.decay ? decay : 1.0f), -(step_size * mi / (sqrtf(vi) / bc2_sqrt + eps)));
    s.param[i] = p;
    if constexpr (!std::is_same_v<C, float>)
      if (copy) copy[i] = from_f<C>(p);
  }
}

void launch_adamw(const AdamWSpanDev* spans, int count, int64_t blocks, float beta1, float beta2,
                  float eps, float step_size, float bc2_sqrt, float grad_scale, float decay, DType copy_dt) {
  dispatch_cuda(copy_dt, [&](auto p) {
    launch(adamw_k<STORAGE(p)>, unsigned(blocks), 256, 0, spans, count, beta1, beta2, eps, step_size, bc2_sqrt, grad_scale, decay);
  });
}

template <class S>
__global__ void add_bias_k(S* C, const float* bias, int64_t M, int64_t N, int64_t ldc) {
  GRID_STRIDE(i, M * N) {
    int64_t r = i / N, j = i % N;
    C[r * ldc + j] = from_f<S>(to_f(C[r * ldc + j]) + bias[j]);
  }
}

void launch_add_bias(void* C, const float* bias, int64_t M, int64_t N, int64_t ldc, DType dt) {
  dispatch_cuda(dt, [&](auto p) { launch(add_bias_k<STORAGE(p)>, grid_for(M * N), 256, 0, static_cast<STORAGE(p)*>(C), bias, M, N, ldc); });
}

// A gradient summed over rows, the same bits every run: block (x, y) of column_sums sums its
// columns over its share of the rows into row y of part(parts, cols), with no atomics; then
// sum_parts_k adds part's rows to acc in a fixed order.

// acc(cols) += the sum of part's rows (row stride ld): a block per 32 columns, whose warp y sums
// the rows y, y + 8, ...; the 8 sums meet in shared memory and are added in order.
__global__ void sum_parts_k(float* acc, const float* part, int64_t parts, int64_t cols, int64_t ld) {
  __shared__ float sh[8][33];
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  float s = 0.0f;
  if (c < cols)
    for (int64_t r = threadIdx.y; r < parts; r += 8) s += part[r * ld + c];
  sh[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float t = acc[c];
    for (int y = 0; y < 8; y++) t += sh[y][threadIdx.x];
    acc[c] = t;
  }
}

void launch_sum_parts(float* acc, const float* part, int64_t parts, int64_t cols, int64_t ld) {
  launch(sum_parts_k, unsigned((cols + 31) / 32), dim3(32, 8), 0, acc, part, parts, cols, ld);
}

// Each thread sums kVec adjacent columns, one 16-byte load per row, over a strided set of rows;
// a warp covers 32 kVec columns of a row (the full 128-byte lines), the 8 warps of a block
// different rows; they meet in shared memory.
template <class S>
__global__ void column_sums_k(float* part, const S* x, int64_t rows, int64_t cols) {
  constexpr int kVec = 16 / sizeof(S), kCols = 32 * kVec;
  __shared__ float sh[8][kCols];
  const int lane = threadIdx.x, warp = threadIdx.y;
  const int64_t c0 = blockIdx.x * int64_t(kCols), c = c0 + lane * kVec;
  float s[kVec] = {};
  if (c < cols)
    for (int64_t r = blockIdx.y * 8 + warp; r < rows; r += int64_t(gridDim.y) * 8) {
      alignas(16) S v[kVec];
      copy16(v, x + r * cols + c);
#pragma unroll
      for (int k = 0; k < kVec; k++) s[k] += to_f(v[k]);
    }
#pragma unroll
  for (int k = 0; k < kVec; k++) sh[warp][lane * kVec + k] = s[k];
  __syncthreads();
  const int t = warp * 32 + lane;
  if (t < kCols && c0 + t < cols) {
    float sum = 0.0f;
    for (int w = 0; w < 8; w++) sum += sh[w][t];
    part[blockIdx.y * cols + c0 + t] = sum;
  }
}

// The same one column per thread, for widths the vector loads do not divide.
template <class S>
__global__ void column_sums_scalar_k(float* part, const S* x, int64_t rows, int64_t cols) {
  __shared__ float sh[8][33];
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  float s = 0.0f;
  if (c < cols)
    for (int64_t r = blockIdx.y * 8 + threadIdx.y; r < rows; r += int64_t(gridDim.y) * 8) s += to_f(x[r * cols + c]);
  sh[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    for (int y = 1; y < 8; y++) s += sh[y][threadIdx.x];
    part[blockIdx.y * cols + c] = s;
  }
}

void launch_column_sums(float* acc, float* part, const void* x, int64_t rows, int64_t cols, DType dt) {
  const int64_t parts = partial_rows(rows, kColumnParts);
  dispatch_cuda(dt, [&](auto p) {
    using S = STORAGE(p);
    constexpr int kVec = 16 / sizeof(S);
    if (cols % kVec == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0)
      launch(column_sums_k<S>, dim3(unsigned((cols + 32 * kVec - 1) / (32 * kVec)), unsigned(parts)), dim3(32, 8), 0,
             part, static_cast<const S*>(x), rows, cols);
    else
      launch(column_sums_scalar_k<S>, dim3(unsigned((cols + 31) / 32), unsigned(parts)), dim3(32, 8), 0, part,
             static_cast<const S*>(x), rows, cols);
  });
  launch_sum_parts(acc, part, parts, cols, cols);
}

}  // namespace frugal
