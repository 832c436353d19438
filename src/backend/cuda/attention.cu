// Causal multi-head attention, memory-efficient: FlashAttention-2's algorithm in a
// straightforward tiled form on the CUDA cores, fp32 arithmetic (correctness first: no tensor
// cores yet). One thread owns one row (a query in the forward and for dQ, a key for dK and dV)
// with that row's vectors in registers; the rows of the other side pass through shared memory
// in tiles of kTile, widened to fp32, and every thread reads the same element at once (a
// broadcast). The forward keeps a running max and sum per query (online softmax) and writes the
// output and the log-sum-exp; the backward recomputes each probability from the log-sum-exp:
// one kernel for D = rowsum(dO * O), then one each for dQ, dK and dV. No T x T tensor exists.
// Head sizes are template parameters (16, 32, 64, 128) so that row vectors stay in registers.
#include <cfloat>

#include "backend/cuda/kernels.h"

namespace frugal {

static constexpr int kRows = 64;  // rows (threads) per block
static constexpr int kTile = 32;  // rows of the other side per shared-memory tile

template <int HS>
__device__ __forceinline__ float dot(const float* a, const float* b) {
  float acc = 0.0f;
#pragma unroll
  for (int d = 0; d < HS; d++) acc += a[d] * b[d];
  return acc;
}

// A tile of rows [r0, r0 + kTile) of a (T, stride) view into fp32 shared memory; zero past T.
template <class S, int HS>
__device__ __forceinline__ void load_tile(float (*dst)[HS], const S* src, int r0, int T, int64_t stride) {
  for (int e = threadIdx.x; e < kTile * HS; e += blockDim.x) {
    int r = e / HS, d = e % HS;
    dst[r][d] = r0 + r < T ? to_f(src[int64_t(r0 + r) * stride + d]) : 0.0f;
  }
}

template <class S, int HS>
__device__ __forceinline__ void load_row(float* dst, const S* src, bool ok) {
#pragma unroll
  for (int d = 0; d < HS; d++) dst[d] = ok ? to_f(src[d]) : 0.0f;
}

// grid (T/kRows, NH, B): out(B,T,C), lse(B,NH,T) from qkv(B,T,3C)
template <class S, int HS>
__global__ void __launch_bounds__(kRows) attention_forward_k(S* out, float* lse, const S* qkv, int T, int C, int NH, float scale) {
  __shared__ float ks[kTile][HS], vs[kTile][HS];
  const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * kRows, i = q0 + threadIdx.x;
  const int64_t C3 = 3 * int64_t(C);
  const S* base = qkv + int64_t(b) * T * C3 + h * HS;
  float q[HS], o[HS];
  load_row<S, HS>(q, base + i * C3, i < T);
#pragma unroll
  for (int d = 0; d < HS; d++) o[d] = 0.0f;
  float m = -FLT_MAX, l = 0.0f;
  const int last = min(q0 + kRows, T) - 1;  // the block's last query sees the keys up to it
  for (int k0 = 0; k0 <= last; k0 += kTile) {
    __syncthreads();
    load_tile<S, HS>(ks, base + C, k0, T, C3);
    load_tile<S, HS>(vs, base + 2 * C, k0, T, C3);
    __syncthreads();
#pragma unroll 1
    for (int j = 0; j < kTile && k0 + j <= i; j++) {
      const float s = dot<HS>(q, ks[j]) * scale;
      if (s > m) {  // a new max rescales what was summed so far
        const float corr = expf(m - s);
        l *= corr;
#pragma unroll
        for (int d = 0; d < HS; d++) o[d] *= corr;
        m = s;
      }
      const float p = expf(s - m);
      l += p;
#pragma unroll
      for (int d = 0; d < HS; d++) o[d] += p * vs[j][d];
    }
  }
  if (i >= T) return;
  S* orow = out + (int64_t(b) * T + i) * C + h * HS;
#pragma unroll
  for (int d = 0; d < HS; d++) orow[d] = from_f<S>(o[d] / l);
  lse[(int64_t(b) * NH + h) * T + i] = m + logf(l);
}

// D(B,NH,T) = rowsum(dO * O) per head
template <class S>
__global__ void attention_rowsum_k(float* D, const S* dout, const S* out, int64_t B, int T, int C, int NH) {
  const int HS = C / NH;
  GRID_STRIDE(r, B * NH * T) {
    const int64_t b = r / (int64_t(NH) * T), h = (r / T) % NH, i = r % T;
    const int64_t at = (b * T + i) * C + h * HS;
    float acc = 0.0f;
    for (int d = 0; d < HS; d++) acc += to_f(dout[at + d]) * to_f(out[at + d]);
    D[r] = acc;
  }
}

// grid (T/kRows, NH, B), one thread per query: dQ = sum over keys j <= i of dS_ij k_j
template <class S, int HS>
__global__ void __launch_bounds__(kRows) attention_backward_dq_k(S* dqkv, const S* dout, const S* qkv, const float* lse,
                                                                 const float* D, int T, int C, int NH, float scale) {
  __shared__ float ks[kTile][HS], vs[kTile][HS];
  const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * kRows, i = q0 + threadIdx.x;
  const int64_t C3 = 3 * int64_t(C);
  const S* base = qkv + int64_t(b) * T * C3 + h * HS;
  float q[HS], dO[HS], dq[HS];
  load_row<S, HS>(q, base + i * C3, i < T);
  load_row<S, HS>(dO, dout + (int64_t(b) * T + i) * C + h * HS, i < T);
#pragma unroll
  for (int d = 0; d < HS; d++) dq[d] = 0.0f;
  const int64_t r = (int64_t(b) * NH + h) * T + i;
  const float L = i < T ? lse[r] : 0.0f, Di = i < T ? D[r] : 0.0f;
  const int last = min(q0 + kRows, T) - 1;
  for (int k0 = 0; k0 <= last; k0 += kTile) {
    __syncthreads();
    load_tile<S, HS>(ks, base + C, k0, T, C3);
    load_tile<S, HS>(vs, base + 2 * C, k0, T, C3);
    __syncthreads();
#pragma unroll 1
    for (int j = 0; j < kTile && k0 + j <= i; j++) {
      const float p = expf(dot<HS>(q, ks[j]) * scale - L);
      const float ds = p * (dot<HS>(dO, vs[j]) - Di) * scale;
#pragma unroll
      for (int d = 0; d < HS; d++) dq[d] += ds * ks[j][d];
    }
  }
  if (i >= T) return;
  S* row = dqkv + (int64_t(b) * T + i) * C3 + h * HS;
#pragma unroll
  for (int d = 0; d < HS; d++) row[d] = from_f<S>(dq[d]);
}

// grid (T/kRows, NH, B), one thread per key j over the queries i >= j:
// dV_j = sum P_ij dO_i (kDV), dK_j = sum dS_ij q_i (else)
template <class S, int HS, bool kDV>
__global__ void __launch_bounds__(kRows) attention_backward_kv_k(S* dqkv, const S* dout, const S* qkv, const float* lse,
                                                                 const float* D, int T, int C, int NH, float scale) {
  __shared__ float qs[kTile][HS], dos[kTile][HS], Ls[kTile], Ds[kTile];
  const int b = blockIdx.z, h = blockIdx.y, k0 = blockIdx.x * kRows, j = k0 + threadIdx.x;
  const int64_t C3 = 3 * int64_t(C);
  const S* base = qkv + int64_t(b) * T * C3 + h * HS;
  const S* dbase = dout + int64_t(b) * T * C + h * HS;
  const float* lrow = lse + (int64_t(b) * NH + h) * T;
  const float* drow = D + (int64_t(b) * NH + h) * T;
  float k[HS], v[HS], acc[HS];
  load_row<S, HS>(k, base + j * C3 + C, j < T);
  if constexpr (!kDV) load_row<S, HS>(v, base + j * C3 + 2 * C, j < T);
#pragma unroll
  for (int d = 0; d < HS; d++) acc[d] = 0.0f;
  for (int q0 = k0; q0 < T; q0 += kTile) {
    __syncthreads();
    load_tile<S, HS>(qs, base, q0, T, C3);
    load_tile<S, HS>(dos, dbase, q0, T, C);
    if (threadIdx.x < kTile) {
      const bool ok = q0 + threadIdx.x < T;
      Ls[threadIdx.x] = ok ? lrow[q0 + threadIdx.x] : 0.0f;
      Ds[threadIdx.x] = ok ? drow[q0 + threadIdx.x] : 0.0f;
    }
    __syncthreads();
#pragma unroll 1
    for (int t = 0; t < kTile; t++) {
      const int i = q0 + t;
      if (i < j || i >= T) continue;
      const float p = expf(dot<HS>(qs[t], k) * scale - Ls[t]);
      if constexpr (kDV) {
#pragma unroll
        for (int d = 0; d < HS; d++) acc[d] += p * dos[t][d];
      } else {
        const float ds = p * (dot<HS>(dos[t], v) - Ds[t]) * scale;
#pragma unroll
        for (int d = 0; d < HS; d++) acc[d] += ds * qs[t][d];
      }
    }
  }
  if (j >= T) return;
  S* row = dqkv + (int64_t(b) * T + j) * C3 + (kDV ? 2 * C : C) + h * HS;
#pragma unroll
  for (int d = 0; d < HS; d++) row[d] = from_f<S>(acc[d]);
}

bool attention_supports(int64_t HS) { return HS == 16 || HS == 32 || HS == 64 || HS == 128; }

// Calls f with the head size as a compile-time constant.
template <class F>
static void dispatch_hs(int64_t HS, F&& f) {
  switch (HS) {
    case 16: f(std::integral_constant<int, 16>{}); break;
    case 32: f(std::integral_constant<int, 32>{}); break;
    case 64: f(std::integral_constant<int, 64>{}); break;
    default: f(std::integral_constant<int, 128>{}); break;
  }
}

void launch_attention_forward(void* out, float* lse, const void* qkv, int64_t B, int64_t T,
                              int64_t C, int64_t NH, DType dt) {
  const dim3 grid(unsigned((T + kRows - 1) / kRows), unsigned(NH), unsigned(B));
  const float scale = 1.0f / sqrtf(float(C / NH));
  dispatch_cuda(dt, [&](auto p) {
    using S = STORAGE(p);
    dispatch_hs(C / NH, [&](auto hs) {
      launch(attention_forward_k<S, hs()>, grid, kRows, 0, static_cast<S*>(out), lse, static_cast<const S*>(qkv),
                                                    int(T), int(C), int(NH), scale);
    });
  });
}

void launch_attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out,
                               const float* lse, float* D, int64_t B, int64_t T, int64_t C,
                               int64_t NH, DType dt) {
  const dim3 grid(unsigned((T + kRows - 1) / kRows), unsigned(NH), unsigned(B));
  const float scale = 1.0f / sqrtf(float(C / NH));
  dispatch_cuda(dt, [&](auto p) {
    using S = STORAGE(p);
    const S* d_out = static_cast<const S*>(dout);
    const S* q = static_cast<const S*>(qkv);
    S* dq = static_cast<S*>(dqkv);
    launch(attention_rowsum_k<S>, grid_for(B * NH * T), 256, 0, D, d_out, static_cast<const S*>(out), B, int(T), int(C), int(NH));
    dispatch_hs(C / NH, [&](auto hs) {
      launch(attention_backward_dq_k<S, hs()>, grid, kRows, 0, dq, d_out, q, lse, D, int(T), int(C), int(NH), scale);
      launch(attention_backward_kv_k<S, hs(), false>, grid, kRows, 0, dq, d_out, q, lse, D, int(T), int(C), int(NH), scale);
      launch(attention_backward_kv_k<S, hs(), true>, grid, kRows, 0, dq, d_out, q, lse, D, int(T), int(C), int(NH), scale);
    });
  });
}

}  // namespace frugal
