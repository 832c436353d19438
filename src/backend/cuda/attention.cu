// Causal multi-head attention, memory-efficient (FlashAttention-2's algorithm), in two forms:
// - bf16 and fp16: on the tensor cores (mma.sync m16n8k16, fp32 accumulation), as
//   FlashAttention-2. A block of 4 warps takes 64 rows (queries in the forward and for dQ, keys
//   for dK and dV); each warp owns 16 of them, holds their vectors as operand fragments, and
//   walks over 64-row tiles of the other side staged in shared memory, two stages deep: the next
//   tiles load asynchronously (cp.async) while this one is used, and reach the tensor cores
//   through ldmatrix. Scores, probabilities and their gradients never leave registers: an
//   accumulator tile, rounded to the storage type (as FlashAttention-2 rounds P and dS), is the
//   next product's A operand. The forward keeps a running max and sum per query (online
//   softmax) and its output rows in registers, rescaled per tile.
// - fp32: on the CUDA cores. One thread owns one row with that row's vectors in registers; the
//   rows of the other side pass through shared memory in tiles of kTile (a broadcast read).
// Both write the output and the log-sum-exp; the backward recomputes each probability from the
// log-sum-exp: one kernel for D = rowsum(dO * O), one for dQ and one (or two) for dK and dV, so
// that no row is written by two blocks. No T x T tensor exists.
// Head sizes are template parameters (16, 32, 64, 128).
#include <cfloat>
#include <cstring>

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

// Grouped-query heads: a row of qkv(B,T,W) holds NH query heads, NKV key heads, NKV value heads
// of HS channels; query head h reads key/value head h / (NH / NKV). out's rows are C = NH HS.
template <int HS>
struct Heads {
  int NH, NKV;
  __device__ int64_t W() const { return int64_t(NH + 2 * NKV) * HS; }
  __device__ int64_t C() const { return int64_t(NH) * HS; }
  __device__ int group() const { return NH / NKV; }
  __device__ int64_t k_of_kv(int kv) const { return int64_t(NH + kv) * HS; }  // where kv head's k starts
  __device__ int64_t k(int h) const { return k_of_kv(h / group()); }
  __device__ int64_t v(int h) const { return k(h) + int64_t(NKV) * HS; }
};

// grid (T/kRows, NH, B): out(B,T,C), lse(B,NH,T) from qkv(B,T,W)
template <class S, int HS>
__global__ void __launch_bounds__(kRows) attention_forward_k(S* out, float* lse, const S* qkv, int T, Heads<HS> hd, float scale) {
  __shared__ float ks[kTile][HS], vs[kTile][HS];
  const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * kRows, i = q0 + threadIdx.x;
  const int64_t C3 = hd.W(), C = hd.C();
  const int NH = hd.NH;
  const S* rows = qkv + int64_t(b) * T * C3;
  float q[HS], o[HS];
  load_row<S, HS>(q, rows + i * C3 + h * HS, i < T);
#pragma unroll
  for (int d = 0; d < HS; d++) o[d] = 0.0f;
  float m = -FLT_MAX, l = 0.0f;
  const int last = min(q0 + kRows, T) - 1;  // the block's last query sees the keys up to it
  for (int k0 = 0; k0 <= last; k0 += kTile) {
    __syncthreads();
    load_tile<S, HS>(ks, rows + hd.k(h), k0, T, C3);
    load_tile<S, HS>(vs, rows + hd.v(h), k0, T, C3);
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

// D(B,NH,T) = rowsum(dO * O) per head: each row's HS elements are read by HS/8 adjacent lanes
// (a 16-byte load each, 8 elements in 16-bit, 4 in fp32 twice), summed across them by shuffles.
template <class S, int HS>
__global__ void attention_rowsum_k(float* D, const S* dout, const S* out, int64_t rows, int T, int C, int NH) {
  constexpr int kLanes = HS / 8;  // 2..16, a power of two dividing 32
  const int64_t r = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / kLanes;
  const int part = threadIdx.x % kLanes;
  float acc = 0.0f;
  if (r < rows) {
    const int64_t b = r / (int64_t(NH) * T), h = (r / T) % NH, i = r % T;
    const int64_t at = (b * T + i) * C + h * HS + 8 * part;
    alignas(16) S o[8], d[8];
    for (int k = 0; k < 8; k += 16 / int(sizeof(S))) {
      copy16(o + k, out + at + k);
      copy16(d + k, dout + at + k);
    }
#pragma unroll
    for (int k = 0; k < 8; k++) acc += to_f(d[k]) * to_f(o[k]);
  }
  for (int m = kLanes / 2; m > 0; m /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, m);
  if (r < rows && part == 0) D[r] = acc;
}

// grid (T/kRows, NH, B), one thread per query: dQ = sum over keys j <= i of dS_ij k_j
template <class S, int HS>
__global__ void __launch_bounds__(kRows) attention_backward_dq_k(S* dqkv, const S* dout, const S* qkv, const float* lse,
                                                                 const float* D, int T, Heads<HS> hd, float scale) {
  __shared__ float ks[kTile][HS], vs[kTile][HS];
  const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * kRows, i = q0 + threadIdx.x;
  const int64_t C3 = hd.W(), C = hd.C();
  const int NH = hd.NH;
  const S* rows = qkv + int64_t(b) * T * C3;
  float q[HS], dO[HS], dq[HS];
  load_row<S, HS>(q, rows + i * C3 + h * HS, i < T);
  load_row<S, HS>(dO, dout + (int64_t(b) * T + i) * C + h * HS, i < T);
#pragma unroll
  for (int d = 0; d < HS; d++) dq[d] = 0.0f;
  const int64_t r = (int64_t(b) * NH + h) * T + i;
  const float L = i < T ? lse[r] : 0.0f, Di = i < T ? D[r] : 0.0f;
  const int last = min(q0 + kRows, T) - 1;
  for (int k0 = 0; k0 <= last; k0 += kTile) {
    __syncthreads();
    load_tile<S, HS>(ks, rows + hd.k(h), k0, T, C3);
    load_tile<S, HS>(vs, rows + hd.v(h), k0, T, C3);
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

// grid (T/kRows, NKV, B), one thread per key j of key/value head kv over the queries i >= j of
// every query head of its group: dV_j = sum P_ij dO_i (kDV), dK_j = sum dS_ij q_i (else)
template <class S, int HS, bool kDV>
__global__ void __launch_bounds__(kRows) attention_backward_kv_k(S* dqkv, const S* dout, const S* qkv, const float* lse,
                                                                 const float* D, int T, Heads<HS> hd, float scale) {
  __shared__ float qs[kTile][HS], dos[kTile][HS], Ls[kTile], Ds[kTile];
  const int b = blockIdx.z, kv = blockIdx.y, k0 = blockIdx.x * kRows, j = k0 + threadIdx.x;
  const int64_t C3 = hd.W(), C = hd.C();
  const S* rows = qkv + int64_t(b) * T * C3;
  float k[HS], v[HS], acc[HS];
  load_row<S, HS>(k, rows + j * C3 + hd.k_of_kv(kv), j < T);
  if constexpr (!kDV) load_row<S, HS>(v, rows + j * C3 + hd.k_of_kv(kv) + int64_t(hd.NKV) * HS, j < T);
#pragma unroll
  for (int d = 0; d < HS; d++) acc[d] = 0.0f;
  for (int h = kv * hd.group(); h < (kv + 1) * hd.group(); h++) {
    const S* dbase = dout + int64_t(b) * T * C + h * HS;
    const float* lrow = lse + (int64_t(b) * hd.NH + h) * T;
    const float* drow = D + (int64_t(b) * hd.NH + h) * T;
    for (int q0 = k0; q0 < T; q0 += kTile) {
      __syncthreads();
      load_tile<S, HS>(qs, rows + h * HS, q0, T, C3);
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
  }
  if (j >= T) return;
  S* row = dqkv + (int64_t(b) * T + j) * C3 + hd.k_of_kv(kv) + (kDV ? int64_t(hd.NKV) * HS : 0);
#pragma unroll
  for (int d = 0; d < HS; d++) row[d] = from_f<S>(acc[d]);
}

// ---- tensor cores (bf16, fp16) ----

static constexpr int kTc = 64;          // rows per block and per tile of the other side
static constexpr int kTcThreads = 128;  // 4 warps of 16 rows

// Operands of mma.sync.m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with g = lane / 4
// and c = 2 (lane % 4): an A operand (16 x 16) is 4 registers of two 16-bit elements, (g, c..c+1),
// (g+8, c..), (g, c+8..), (g+8, c+8..); a B operand (16 x 8) is 2, rows c..c+1 and c+8.. of
// column g; an accumulator (16 x 8, fp32) is (g, c), (g, c+1), (g+8, c), (g+8, c+1). So the
// accumulators of two adjacent n-tiles, rounded and packed, are an A operand: scores become
// probabilities in registers and go straight into the next product.

template <class S>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  const S a = from_f<S>(lo), b = from_f<S>(hi);
  uint16_t x, y;
  memcpy(&x, &a, 2);
  memcpy(&y, &b, 2);
  return x | uint32_t(y) << 16;
}

// a = the A operand whose columns 0..7 are accumulator lo, 8..15 accumulator hi
template <class S>
__device__ __forceinline__ void to_a(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
  a[0] = pack2<S>(lo[0], lo[1]);
  a[1] = pack2<S>(lo[2], lo[3]);
  a[2] = pack2<S>(hi[0], hi[1]);
  a[3] = pack2<S>(hi[2], hi[3]);
}

// d += a b on the tensor cores, fp32 accumulation.
template <class S>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDACC__)
  if constexpr (std::is_same_v<S, __nv_bfloat16>)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  ::emu::mma_m16n8k16<S>(d, a, b0, b1);
#endif
}

// Four 8 x 8 matrices of 16-bit elements from shared memory (ldmatrix .x4): lane l gives the
// address of row l % 8 of matrix l / 8 and receives in r[m] elements (l / 4, 2 (l % 4) + {0, 1})
// of matrix m, or with trans (2 (l % 4) + {0, 1}, l / 4).
template <bool trans>
__device__ __forceinline__ void ldsm4(uint32_t (&r)[4], const void* p) {
#if defined(__CUDACC__)
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  if constexpr (trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
#else
  ::emu::ldmatrix_x4(r, p, trans);
#endif
}

// Operands from a tile in shared memory (row stride ld elements), one ldmatrix each:
// this warp's 16 rows, all HS columns, as HS/16 A operands (row stride HS + 8);
template <int HS, class S>
__device__ __forceinline__ void load_rows_a(uint32_t (&a)[HS / 16][4], const S* tile) {
  const int lane = threadIdx.x % 32, m = lane / 8, r0 = 16 * (threadIdx.x / 32);
#pragma unroll
  for (int kk = 0; kk < HS / 16; kk++)
    ldsm4<false>(a[kk], tile + (r0 + 8 * (m % 2) + lane % 8) * (HS + 8) + 16 * kk + 8 * (m / 2));
}
// the B operands of two n-tiles, b[0..1] and b[2..3], where the tile holds B transposed: its rows
// [n0, n0 + 16) are B's columns, its columns [k0, k0 + 16) B's rows (K as stored, for Q K^T);
template <int ld, class S>
__device__ __forceinline__ void load_bt(uint32_t (&b)[4], const S* tile, int n0, int k0) {
  const int lane = threadIdx.x % 32, m = lane / 8;
  ldsm4<false>(b, tile + (n0 + 8 * (m / 2) + lane % 8) * ld + k0 + 8 * (m % 2));
}
// the same where the tile holds B as it is: rows [k0, k0 + 16), columns [n0, n0 + 16) (V, for P V).
template <int ld, class S>
__device__ __forceinline__ void load_b(uint32_t (&b)[4], const S* tile, int k0, int n0) {
  const int lane = threadIdx.x % 32, m = lane / 8;
  ldsm4<true>(b, tile + (k0 + 8 * (m % 2) + lane % 8) * ld + n0 + 8 * (m / 2));
}

// acc (16 rows, 2n n-tiles of 8 columns) += a times a 16 x 16n B operand; load(b, c) gives the
// B operands of its columns [c, c + 16) (load_b or load_bt, bound to a tile and its rows).
template <class S, int n, class Load>
__device__ __forceinline__ void mma_row(float (&acc)[2 * n][4], const uint32_t (&a)[4], Load&& load) {
#pragma unroll
  for (int x = 0; x < n; x++) {
    uint32_t b[4];
    load(b, 16 * x);
    mma<S>(acc[2 * x], a, b[0], b[1]);
    mma<S>(acc[2 * x + 1], a, b[2], b[3]);
  }
}

// Two adjacent 16-bit elements to global memory (4-byte aligned).
template <class S>
__device__ __forceinline__ void store2(S* p, float x, float y) {
#if defined(__CUDACC__)
  *reinterpret_cast<uint32_t*>(p) = pack2<S>(x, y);
#else
  p[0] = from_f<S>(x);
  p[1] = from_f<S>(y);
#endif
}

// This lane's accumulators of a warp's 16 x HS rows, to rows [row0, row0 + 16) of a (T, stride)
// view; rows past T are dropped. mul: per row (g, g + 8), a factor.
template <class S, int HS>
__device__ __forceinline__ void store_rows(S* dst, int64_t stride, const float (&acc)[HS / 8][4], int row0, int T,
                                           const float (&mul)[2]) {
  const int lane = threadIdx.x % 32, g = lane / 4, c = 2 * (lane % 4);
#pragma unroll
  for (int r = 0; r < 2; r++) {
    if (row0 + g + 8 * r >= T) continue;
    S* row = dst + int64_t(row0 + g + 8 * r) * stride + c;
#pragma unroll
    for (int n = 0; n < HS / 8; n++) store2(row + 8 * n, acc[n][2 * r] * mul[r], acc[n][2 * r + 1] * mul[r]);
  }
}

// Shared memory: two stages of two tiles of 64 rows x HS (row stride HS + 8, so that the 8 rows
// one ldmatrix reads fall in distinct banks), then two stages of 2 x 64 fp32 row statistics.
template <class S, int HS>
struct TcTiles {
  static constexpr int ld = HS + 8, kElems = kTc * ld;
  static constexpr size_t bytes = 4 * kElems * sizeof(S) + 4 * kTc * sizeof(float);
  S* base;
  __device__ S* tile(int k) const { return base + k * kElems; }  // stage s: tiles 2 s, 2 s + 1
  __device__ float* stats(int s) const { return reinterpret_cast<float*>(base + 4 * kElems) + 2 * kTc * s; }
};

// Starts copying rows [r0, r0 + 64) of a (T, stride) view into dst (row stride HS + 8), zeros
// past T (r0 < T), asynchronously: they land by the async_wait covering the next commit.
template <class S, int HS>
__device__ __forceinline__ void tc_load_rows(S* dst, const S* src, int r0, int T, int64_t stride) {
  constexpr int kVec = 16 / sizeof(S), kPerRow = HS / kVec;
  for (int e = threadIdx.x; e < kTc * kPerRow; e += blockDim.x) {
    const int r = e / kPerRow, c = e % kPerRow * kVec;
    const bool ok = r0 + r < T;
    copy16_async(dst + r * (HS + 8) + c, src + int64_t(ok ? r0 + r : r0) * stride + c, ok);
  }
}

// Rows [r0, r0 + 64) of two (T, stride) views, a and b, into stage s's two tiles.
template <class S, int HS>
__device__ __forceinline__ void tc_load_stage(const TcTiles<S, HS>& sh, int s, const S* a, const S* b, int r0, int T,
                                              int64_t stride) {
  tc_load_rows<S, HS>(sh.tile(2 * s), a, r0, T, stride);
  tc_load_rows<S, HS>(sh.tile(2 * s + 1), b, r0, T, stride);
}

// The double buffer's step at the top of each tile: once every thread is done with the other
// stage, load_next starts the next tiles into it (where there are more); then every thread's
// copies of this stage have landed. Each kernel first commits its own rows' tiles (in stage
// 1), then stage 0's, and waits for the former only.
template <class F>
__device__ __forceinline__ void tc_advance(bool more, F&& load_next) {
  __syncthreads();
  if (more) load_next();
  async_commit();
  async_wait<1>();
  __syncthreads();
}

static constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

// The tensor-core kernels' grid is (NH, B, T/64), tiles slowest, so that blocks start in order
// of work, the most first and the tail light: for queries that is the last tile (it sees every
// key), for keys the first.
__device__ __forceinline__ int heavy_first_q() { return int(gridDim.z - 1 - blockIdx.z) * kTc; }

// grid (NH, B, T/64): out(B,T,C), lse(B,NH,T) from qkv(B,T,W). A warp per 16 queries; each lane
// holds scores, probabilities and output for rows g and g + 8 in registers.
template <class S, int HS>
__global__ void __launch_bounds__(kTcThreads) flash_forward_k(S* out, float* lse, const S* qkv, int T, Heads<HS> hd, float scale) {
  DYNAMIC_SHARED(S, smem);
  const TcTiles<S, HS> sh{smem};
  constexpr int ld = HS + 8;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = 2 * (lane % 4);
  const int h = blockIdx.x, b = blockIdx.y, q0 = heavy_first_q(), qw = q0 + 16 * warp;
  const int64_t C3 = hd.W(), C = hd.C();
  const int NH = hd.NH;
  const S* base = qkv + int64_t(b) * T * C3 + h * HS;
  const S *kb = qkv + int64_t(b) * T * C3 + hd.k(h), *vb = qkv + int64_t(b) * T * C3 + hd.v(h);
  tc_load_rows<S, HS>(sh.tile(2), base, q0, T, C3);  // Q through stage 1
  async_commit();
  tc_load_stage(sh, 0, kb, vb, 0, T, C3);  // the first K and V tiles
  async_commit();
  async_wait<1>();
  __syncthreads();
  uint32_t q[HS / 16][4];
  load_rows_a<HS>(q, sh.tile(2));
  float o[HS / 8][4] = {};
  // per row (g, g + 8): the running max of the scores (base 2) and this lane's part of the sum
  float m[2] = {-FLT_MAX, -FLT_MAX}, l[2] = {0.0f, 0.0f};
  const float sl = scale * kLog2e;  // scores in base 2: exp(x) = exp2(x log2 e)
  const int last = min(q0 + kTc, T) - 1;  // the block's last query sees the keys up to it
  for (int k0 = 0, st = 0; k0 <= last; k0 += kTc, st ^= 1) {
    tc_advance(k0 + kTc <= last, [&] { tc_load_stage(sh, 1 - st, kb, vb, k0 + kTc, T, C3); });
    const S *kt = sh.tile(2 * st), *vt = sh.tile(2 * st + 1);
    const int nsub = min(4, (qw + 15 - k0) / 16 + 1);  // 16-key sub-tiles with a key <= the warp's last query
    float s[8][4] = {};  // S = Q K^T: keys 8 n + c (+1) of the tile
#pragma unroll
    for (int kk = 0; kk < HS / 16; kk++)
#pragma unroll
      for (int x = 0; x < 4; x++)
        if (x < nsub) {
          uint32_t kb[4];
          load_bt<ld>(kb, kt, 16 * x, 16 * kk);
          mma<S>(s[2 * x], q[kk], kb[0], kb[1]);
          mma<S>(s[2 * x + 1], q[kk], kb[2], kb[3]);
        }
    float mt[2] = {-FLT_MAX, -FLT_MAX};
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int key = k0 + 8 * n + c + e % 2, i = qw + g + 8 * (e / 2);
        s[n][e] = key <= i && key < T ? s[n][e] * sl : -INFINITY;
        mt[e / 2] = fmaxf(mt[e / 2], s[n][e]);
      }
    float corr[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {  // the 4 lanes of a row hold its 64 columns
      mt[r] = fmaxf(mt[r], __shfl_xor_sync(0xffffffffu, mt[r], 1));
      mt[r] = fmaxf(mt[r], __shfl_xor_sync(0xffffffffu, mt[r], 2));
      const float mnew = fmaxf(m[r], mt[r]);
      corr[r] = exp2f(m[r] - mnew);  // a new max rescales what was summed so far
      m[r] = mnew;
      l[r] *= corr[r];
    }
#pragma unroll
    for (int n = 0; n < HS / 8; n++)
#pragma unroll
      for (int e = 0; e < 4; e++) o[n][e] *= corr[e / 2];
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        s[n][e] = exp2f(s[n][e] - m[e / 2]);  // 0 where masked
        l[e / 2] += s[n][e];
      }
#pragma unroll
    for (int x = 0; x < 4; x++)  // O += P V, P rounded to the storage type
      if (x < nsub) {
        uint32_t p[4];
        to_a<S>(p, s[2 * x], s[2 * x + 1]);
        mma_row<S, HS / 16>(o, p, [&](uint32_t(&vb)[4], int d) { load_b<ld>(vb, vt, 16 * x, d); });
      }
  }
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; r++) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    inv[r] = 1.0f / l[r];
    const int i = qw + g + 8 * r;
    if (c == 0 && i < T) lse[(int64_t(b) * NH + h) * T + i] = (m[r] + log2f(l[r])) * kLn2;
  }
  store_rows<S, HS>(out + int64_t(b) * T * C + h * HS, C, o, qw, T, inv);
}

// grid (NH, B, T/64), a warp per 16 queries: dQ = sum over keys j <= i of dS_ij k_j, a 16-key
// sub-tile at a time (the log-sum-exp makes each probability final: no running max).
template <class S, int HS>
__global__ void __launch_bounds__(kTcThreads) flash_backward_q_k(S* dqkv, const S* dout, const S* qkv, const float* lse,
                                                                 const float* D, int T, Heads<HS> hd, float scale) {
  DYNAMIC_SHARED(S, smem);
  const TcTiles<S, HS> sh{smem};
  constexpr int ld = HS + 8;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = 2 * (lane % 4);
  const int h = blockIdx.x, b = blockIdx.y, q0 = heavy_first_q(), qw = q0 + 16 * warp;
  const int64_t C3 = hd.W(), C = hd.C();
  const int NH = hd.NH;
  const S* base = qkv + int64_t(b) * T * C3 + h * HS;
  const S *kb = qkv + int64_t(b) * T * C3 + hd.k(h), *vb = qkv + int64_t(b) * T * C3 + hd.v(h);
  tc_load_rows<S, HS>(sh.tile(2), base, q0, T, C3);  // Q and dO through stage 1
  tc_load_rows<S, HS>(sh.tile(3), dout + int64_t(b) * T * C + h * HS, q0, T, C);
  async_commit();
  tc_load_stage(sh, 0, kb, vb, 0, T, C3);  // the first K and V tiles
  async_commit();
  async_wait<1>();
  __syncthreads();
  uint32_t q[HS / 16][4], dO[HS / 16][4];
  load_rows_a<HS>(q, sh.tile(2));
  load_rows_a<HS>(dO, sh.tile(3));
  float dq[HS / 8][4] = {}, L[2], Di[2];
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int i = qw + g + 8 * r;
    const int64_t row = (int64_t(b) * NH + h) * T + i;
    L[r] = i < T ? lse[row] * kLog2e : 0.0f;
    Di[r] = i < T ? D[row] : 0.0f;
  }
  const float sl = scale * kLog2e;
  const int last = min(q0 + kTc, T) - 1;
  for (int k0 = 0, st = 0; k0 <= last; k0 += kTc, st ^= 1) {
    tc_advance(k0 + kTc <= last, [&] { tc_load_stage(sh, 1 - st, kb, vb, k0 + kTc, T, C3); });
    const S *kt = sh.tile(2 * st), *vt = sh.tile(2 * st + 1);
    const int nsub = min(4, (qw + 15 - k0) / 16 + 1);
#pragma unroll
    for (int x = 0; x < 4; x++) {
      if (x >= nsub) continue;
      float s[2][4] = {}, dp[2][4] = {};
#pragma unroll
      for (int kk = 0; kk < HS / 16; kk++) {
        uint32_t kb[4], vb[4];
        load_bt<ld>(kb, kt, 16 * x, 16 * kk);  // S = Q K^T
        mma<S>(s[0], q[kk], kb[0], kb[1]);
        mma<S>(s[1], q[kk], kb[2], kb[3]);
        load_bt<ld>(vb, vt, 16 * x, 16 * kk);  // dP = dO V^T
        mma<S>(dp[0], dO[kk], vb[0], vb[1]);
        mma<S>(dp[1], dO[kk], vb[2], vb[3]);
      }
#pragma unroll
      for (int y = 0; y < 2; y++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int key = k0 + 16 * x + 8 * y + c + e % 2, i = qw + g + 8 * (e / 2);
          s[y][e] = key <= i && key < T ? exp2f(s[y][e] * sl - L[e / 2]) * (dp[y][e] - Di[e / 2]) * scale : 0.0f;
        }
      uint32_t ds[4];
      to_a<S>(ds, s[0], s[1]);
      mma_row<S, HS / 16>(dq, ds, [&](uint32_t(&kb)[4], int d) { load_b<ld>(kb, kt, 16 * x, d); });  // dQ += dS K
    }
  }
  store_rows<S, HS>(dqkv + int64_t(b) * T * C3 + h * HS, C3, dq, qw, T, {1.0f, 1.0f});
}

// grid (NKV, B, T/64), a warp per 16 keys j of key/value head kv over the queries i >= j of
// each query head of its group, a 16-query sub-tile at a time: dV_j = sum P_ij dO_i,
// dK_j = sum dS_ij q_i, from S^T = K Q^T and dP^T = V dO^T
template <class S, int HS>
__global__ void __launch_bounds__(kTcThreads) flash_backward_kv_k(S* dqkv, const S* dout, const S* qkv, const float* lse,
                                                                  const float* D, int T, Heads<HS> hd, float scale) {
  DYNAMIC_SHARED(S, smem);
  const TcTiles<S, HS> sh{smem};
  constexpr int ld = HS + 8;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = 2 * (lane % 4);
  const int kv = blockIdx.x, b = blockIdx.y, k0 = blockIdx.z * kTc, kw = k0 + 16 * warp;
  const int64_t C3 = hd.W(), C = hd.C();
  const S* rows = qkv + int64_t(b) * T * C3;
  const S* kb = rows + hd.k_of_kv(kv);
  // the query tiles seen, head by head of the group: tile `it` is head h0 + it / nq's queries
  // [k0 + (it % nq) 64, ... + 64)
  const int nq = (T - k0 + kTc - 1) / kTc, h0 = kv * hd.group(), num = nq * hd.group();
  auto q_start = [&](int it) { return k0 + it % nq * kTc; };
  // tile `it` into stage s: Q, dO, their log-sum-exps (base 2) and D
  auto issue = [&](int it, int s) {
    const int h = h0 + it / nq, q0 = q_start(it);
    tc_load_rows<S, HS>(sh.tile(2 * s), rows + h * HS, q0, T, C3);  // strides differ: not tc_load_stage
    tc_load_rows<S, HS>(sh.tile(2 * s + 1), dout + int64_t(b) * T * C + h * HS, q0, T, C);
    const float* lrow = lse + (int64_t(b) * hd.NH + h) * T;
    const float* drow = D + (int64_t(b) * hd.NH + h) * T;
    float* stats = sh.stats(s);
    for (int e = threadIdx.x; e < kTc; e += blockDim.x) {
      stats[e] = q0 + e < T ? lrow[q0 + e] * kLog2e : 0.0f;
      stats[kTc + e] = q0 + e < T ? drow[q0 + e] : 0.0f;
    }
  };
  tc_load_stage(sh, 1, kb, kb + int64_t(hd.NKV) * HS, k0, T, C3);  // K and V through stage 1
  async_commit();
  issue(0, 0);
  async_commit();
  async_wait<1>();
  __syncthreads();
  uint32_t k[HS / 16][4], v[HS / 16][4];
  load_rows_a<HS>(k, sh.tile(2));
  load_rows_a<HS>(v, sh.tile(3));
  float dk[HS / 8][4] = {}, dv[HS / 8][4] = {};
  const float sl = scale * kLog2e;
  for (int it = 0, s = 0; it < num; it++, s ^= 1) {
    tc_advance(it + 1 < num, [&] { issue(it + 1, 1 - s); });
    const int q0 = q_start(it);
    const S *qt = sh.tile(2 * s), *dOt = sh.tile(2 * s + 1);
    const float *Ls = sh.stats(s), *Ds = Ls + kTc;
    const int x0 = max(0, (kw - q0) / 16);  // query sub-tiles before x0 are all below the warp's keys
#pragma unroll
    for (int x = 0; x < 4; x++) {
      if (x < x0) continue;
      float p[2][4] = {}, ds[2][4] = {};
#pragma unroll
      for (int kk = 0; kk < HS / 16; kk++) {
        uint32_t qb[4], ob[4];
        load_bt<ld>(qb, qt, 16 * x, 16 * kk);  // S^T = K Q^T
        mma<S>(p[0], k[kk], qb[0], qb[1]);
        mma<S>(p[1], k[kk], qb[2], qb[3]);
        load_bt<ld>(ob, dOt, 16 * x, 16 * kk);  // dP^T = V dO^T
        mma<S>(ds[0], v[kk], ob[0], ob[1]);
        mma<S>(ds[1], v[kk], ob[2], ob[3]);
      }
#pragma unroll
      for (int y = 0; y < 2; y++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int col = 16 * x + 8 * y + c + e % 2, i = q0 + col, j = kw + g + 8 * (e / 2);
          p[y][e] = i >= j && i < T ? exp2f(p[y][e] * sl - Ls[col]) : 0.0f;
          ds[y][e] = p[y][e] * (ds[y][e] - Ds[col]) * scale;
        }
      uint32_t pa[4], dsa[4];
      to_a<S>(pa, p[0], p[1]);
      to_a<S>(dsa, ds[0], ds[1]);
      mma_row<S, HS / 16>(dv, pa, [&](uint32_t(&ob)[4], int d) { load_b<ld>(ob, dOt, 16 * x, d); });  // dV += P^T dO
      mma_row<S, HS / 16>(dk, dsa, [&](uint32_t(&qb)[4], int d) { load_b<ld>(qb, qt, 16 * x, d); });  // dK += dS^T Q
    }
  }
  S* drows = dqkv + int64_t(b) * T * C3 + hd.k_of_kv(kv);
  store_rows<S, HS>(drows, C3, dk, kw, T, {1.0f, 1.0f});
  store_rows<S, HS>(drows + int64_t(hd.NKV) * HS, C3, dv, kw, T, {1.0f, 1.0f});
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
                              int64_t NH, int64_t NKV, int64_t HS, DType dt) {
  const float scale = 1.0f / sqrtf(float(HS));
  dispatch_cuda(dt, [&](auto p) {
    using S = STORAGE(p);
    dispatch_hs(HS, [&](auto hs) {
      const Heads<hs()> hd{int(NH), int(NKV)};
      if constexpr (std::is_same_v<S, float>) {
        const dim3 grid(unsigned((T + kRows - 1) / kRows), unsigned(NH), unsigned(B));
        launch(attention_forward_k<S, hs()>, grid, kRows, 0, static_cast<S*>(out), lse,
               static_cast<const S*>(qkv), int(T), hd, scale);
      } else {
        const dim3 grid(unsigned(NH), unsigned(B), unsigned((T + kTc - 1) / kTc));
        launch(flash_forward_k<S, hs()>, grid, kTcThreads, TcTiles<S, hs()>::bytes,
               static_cast<S*>(out), lse, static_cast<const S*>(qkv), int(T), hd, scale);
      }
    });
  });
}

void launch_attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out,
                               const float* lse, float* D, int64_t B, int64_t T, int64_t NH,
                               int64_t NKV, int64_t HS, DType dt) {
  const float scale = 1.0f / sqrtf(float(HS));
  dispatch_cuda(dt, [&](auto p) {
    using S = STORAGE(p);
    const S* d_out = static_cast<const S*>(dout);
    const S* q = static_cast<const S*>(qkv);
    S* dq = static_cast<S*>(dqkv);
    dispatch_hs(HS, [&](auto hs) {
      const Heads<hs()> hd{int(NH), int(NKV)};
      launch(attention_rowsum_k<S, hs()>, unsigned((B * NH * T * (hs() / 8) + 255) / 256), 256, 0, D, d_out,
             static_cast<const S*>(out), B * NH * T, int(T), int(NH * HS), int(NH));
      if constexpr (std::is_same_v<S, float>) {
        const dim3 grid(unsigned((T + kRows - 1) / kRows), unsigned(NH), unsigned(B));
        const dim3 kv_grid(unsigned((T + kRows - 1) / kRows), unsigned(NKV), unsigned(B));
        launch(attention_backward_dq_k<S, hs()>, grid, kRows, 0, dq, d_out, q, lse, D, int(T), hd, scale);
        launch(attention_backward_kv_k<S, hs(), false>, kv_grid, kRows, 0, dq, d_out, q, lse, D, int(T), hd, scale);
        launch(attention_backward_kv_k<S, hs(), true>, kv_grid, kRows, 0, dq, d_out, q, lse, D, int(T), hd, scale);
      } else {
        const dim3 grid(unsigned(NH), unsigned(B), unsigned((T + kTc - 1) / kTc));
        const dim3 kv_grid(unsigned(NKV), unsigned(B), unsigned((T + kTc - 1) / kTc));
        launch(flash_backward_q_k<S, hs()>, grid, kTcThreads, TcTiles<S, hs()>::bytes, dq, d_out, q, lse, D,
               int(T), hd, scale);
        launch(flash_backward_kv_k<S, hs()>, kv_grid, kTcThreads, TcTiles<S, hs()>::bytes, dq, d_out, q, lse, D,
               int(T), hd, scale);
      }
    });
  });
}

// One query against a key/value cache (sampling): a block per query head, in three passes over
// scratch(NH, T): the scores and their max, the exponentials and their sum, the weighted values.
template <class S>
__global__ void attention_decode_k(S* out, const S* q, const S* k, const S* v, int64_t T, int64_t NKV, int64_t HS,
                                   int64_t group, float scale, float* scratch) {
  __shared__ float red[256];
  const int64_t h = blockIdx.x, kv = (h / group) * HS, KW = NKV * HS;
  float* p = scratch + h * T;
  float m = -FLT_MAX;
  for (int64_t j = threadIdx.x; j < T; j += blockDim.x) {
    float s = 0.0f;
    for (int64_t d = 0; d < HS; d++) s += to_f(q[h * HS + d]) * to_f(k[j * KW + kv + d]);
    p[j] = s * scale;
    m = fmaxf(m, p[j]);
  }
  red[threadIdx.x] = m;
  __syncthreads();
  if (threadIdx.x == 0)
    for (int i = 1; i < int(blockDim.x); i++) red[0] = fmaxf(red[0], red[i]);
  __syncthreads();
  m = red[0];
  __syncthreads();
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < T; j += blockDim.x) sum += p[j] = expf(p[j] - m);
  red[threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.x == 0)
    for (int i = 1; i < int(blockDim.x); i++) red[0] += red[i];
  __syncthreads();
  sum = red[0];
  for (int64_t d = threadIdx.x; d < HS; d += blockDim.x) {
    float acc = 0.0f;
    for (int64_t j = 0; j < T; j++) acc += p[j] * to_f(v[j * KW + kv + d]);
    out[h * HS + d] = from_f<S>(acc / sum);
  }
}

void launch_attention_decode(void* out, const void* q, const void* k, const void* v, int64_t T, int64_t NH, int64_t NKV,
                             int64_t HS, DType dt, float* scratch) {
  dispatch_cuda(dt, [&](auto p) {
    using S = STORAGE(p);
    launch(attention_decode_k<S>, unsigned(NH), 256, 0, static_cast<S*>(out), static_cast<const S*>(q),
           static_cast<const S*>(k), static_cast<const S*>(v), T, NKV, HS, NH / NKV, 1.0f / sqrtf(float(HS)), scratch);
  });
}

}  // namespace frugal
