// Causal multi-head attention, memory-efficient (FlashAttention-2's algorithm), in two forms:
// - bf16 and fp16: on the tensor cores (WMMA, 16x16x16 tiles, fp32 accumulation). A block of 4
//   warps takes 64 rows (queries in the forward and for dQ, keys for dK and dV); each warp owns
//   16 of them, holds their vectors as fragments, and walks over 64-row tiles of the other side
//   staged in shared memory, two stages deep: the next tiles load asynchronously (cp.async)
//   while this one is used. Scores go through shared memory in fp32, where two lanes per row
//   apply the mask and the softmax; P (and dS) are rounded to the storage type for the next
//   product, as in FlashAttention-2; each lane walks its columns from its own start, so that
//   the warp reads 32 banks at once. The forward keeps a running max and sum per query (online
//   softmax) and its output row in registers (half a row per lane), rescaled per tile and
//   increased by the tile's P V (tensor cores, then through shared memory).
// - fp32: on the CUDA cores. One thread owns one row with that row's vectors in registers; the
//   rows of the other side pass through shared memory in tiles of kTile (a broadcast read).
// Both write the output and the log-sum-exp; the backward recomputes each probability from the
// log-sum-exp: one kernel for D = rowsum(dO * O), one for dQ and one (or two) for dK and dV, so
// that no row is written by two blocks. No T x T tensor exists.
// Head sizes are template parameters (16, 32, 64, 128).
#include <cfloat>

#include <mma.h>

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

// ---- tensor cores (bf16, fp16) ----

namespace wmma = nvcuda::wmma;
static constexpr int kTc = 64;          // rows per block and per tile of the other side
static constexpr int kTcThreads = 128;  // 4 warps of 16 rows
template <class S> using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, S, wmma::row_major>;
template <class S> using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, S, wmma::row_major>;
template <class S> using FragBt = wmma::fragment<wmma::matrix_b, 16, 16, 16, S, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// The dynamic shared memory of one block: two stages of two wide tiles of 64 rows x HS (the
// next tile pair loads while this one is used), per warp nf fp32 and nh 16-bit tiles of 16 x 64
// (scores, probabilities), per warp a 16 x HS fp32 staging tile (for HS <= 64 the warp's first
// fp32 tile, which is dead whenever the staging tile is used), and two stages of 2 x 64 fp32
// row statistics. Row strides are padded; every fragment pointer is 32-byte aligned, as WMMA
// requires.
template <class S, int HS>
struct TcShared {
  static constexpr int ldh = HS + 8, ldf = kTc + 4, ldp = kTc + 8, ldo = HS + 4;
  static constexpr size_t kWideBytes = (kTc * ldh * sizeof(S) + 127) / 128 * 128;
  S *wide_, *h16_;
  float *f32_, *out_ = nullptr, *stats;
  int nf, nh;
  size_t bytes = 0;
  // base: the block's shared memory (B = unsigned char*, so that the compiler knows the state
  // space), or 0 on the host (B = uintptr_t), which only wants the bytes
  template <class B>
  __host__ __device__ TcShared(B base, int nf_, int nh_) : nf(nf_), nh(nh_) {
    wide_ = reinterpret_cast<S*>(take(base, 4 * kWideBytes));
    f32_ = reinterpret_cast<float*>(take(base, 4 * nf * 16 * ldf * sizeof(float)));
    h16_ = reinterpret_cast<S*>(take(base, 4 * nh * 16 * ldp * sizeof(S)));
    if (ldo > ldf) out_ = reinterpret_cast<float*>(take(base, 4 * 16 * ldo * sizeof(float)));
    stats = reinterpret_cast<float*>(take(base, 4 * kTc * sizeof(float)));
  }
  template <class B>
  __host__ __device__ B take(B base, size_t n) {
    B p = base + bytes;
    bytes += (n + 127) / 128 * 128;
    return p;
  }
  // stage s: wide(2 s), wide(2 s + 1) (arithmetic, not an array: a run-time index into one
  // would put it in local memory)
  __device__ S* wide(int k) const { return wide_ + k * (kWideBytes / sizeof(S)); }
  __device__ float* f32(int warp, int k) const { return f32_ + (warp * nf + k) * 16 * ldf; }
  __device__ S* h16(int warp, int k) const { return h16_ + (warp * nh + k) * 16 * ldp; }
  __device__ float* out(int warp) const { return out_ ? out_ + warp * 16 * ldo : f32(warp, 0); }
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

// Rows [r0, r0 + 64) of two (T, stride) views, a and b, into stage s's two wide tiles.
template <class S, int HS>
__device__ __forceinline__ void tc_load_stage(const TcShared<S, HS>& sh, int s, const S* a, const S* b, int r0, int T,
                                              int64_t stride) {
  tc_load_rows<S, HS>(sh.wide(2 * s), a, r0, T, stride);
  tc_load_rows<S, HS>(sh.wide(2 * s + 1), b, r0, T, stride);
}

// The double buffer's step at the top of each tile: once every thread is done with the other
// stage, load_next starts the next tiles into it (where there are more); then every thread's
// copies of this stage have landed. Each kernel first commits its fragments' tiles (in stage
// 1), then stage 0's, and waits for the former only.
template <class F>
__device__ __forceinline__ void tc_advance(bool more, F&& load_next) {
  __syncthreads();
  if (more) load_next();
  async_commit();
  async_wait<1>();
  __syncthreads();
}

// This warp's 16 rows of a wide tile as fragments (row-major A operands).
template <class S, int HS>
__device__ __forceinline__ void tc_fragments(FragA<S> (&f)[HS / 16], const S* wide, int warp) {
#pragma unroll
  for (int kk = 0; kk < HS / 16; kk++) wmma::load_matrix_sync(f[kk], wide + 16 * warp * (HS + 8) + 16 * kk, HS + 8);
}

// dst(16 x 64 fp32, stride ldf) = a(16 x HS) times the transposed rows [16n, 16n + 16) of a
// wide tile, for the sub-tiles n in [n0, n1).
template <class S, int HS>
__device__ __forceinline__ void tc_scores(float* dst, const FragA<S> (&a)[HS / 16], const S* wide, int n0, int n1) {
  for (int n = n0; n < n1; n++) {
    FragC acc;
    wmma::fill_fragment(acc, 0.0f);
#pragma unroll
    for (int kk = 0; kk < HS / 16; kk++) {
      FragBt<S> b;
      wmma::load_matrix_sync(b, wide + 16 * n * (HS + 8) + 16 * kk, HS + 8);
      wmma::mma_sync(acc, a[kk], b, acc);
    }
    wmma::store_matrix_sync(dst + 16 * n, acc, kTc + 4, wmma::mem_row_major);
  }
}

// acc(16 x HS) += p(16 x 64, stride ldp) sub-tiles [k0, k1) times rows of a wide tile.
template <class S, int HS>
__device__ __forceinline__ void tc_accumulate(FragC (&acc)[HS / 16], const S* p, const S* wide, int k0, int k1) {
  for (int kk = k0; kk < k1; kk++) {
    FragA<S> a;
    wmma::load_matrix_sync(a, p + 16 * kk, kTc + 8);
#pragma unroll
    for (int d = 0; d < HS / 16; d++) {
      FragB<S> b;
      wmma::load_matrix_sync(b, wide + 16 * kk * (HS + 8) + 16 * d, HS + 8);
      wmma::mma_sync(acc[d], a, b, acc[d]);
    }
  }
}

// Writes this warp's 16 x HS accumulators to rows [row0, row0 + 16) of a (T, stride) view,
// through the warp's fp32 staging tile; rows past T are dropped.
template <class S, int HS>
__device__ __forceinline__ void tc_store_rows(S* dst, int64_t stride, const FragC (&acc)[HS / 16], float* stage, int row0, int T) {
#pragma unroll
  for (int d = 0; d < HS / 16; d++) wmma::store_matrix_sync(stage + 16 * d, acc[d], HS + 4, wmma::mem_row_major);
  __syncwarp();
  const int lane = threadIdx.x % 32, r = lane / 2, c0 = lane % 2 * (HS / 2);
  if (row0 + r < T)
    for (int c = c0; c < c0 + HS / 2; c++) dst[int64_t(row0 + r) * stride + c] = from_f<S>(stage[r * (HS + 4) + c]);
  __syncwarp();
}

static constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

// Two lanes per row of a warp's 16 x 64 score tile, each over 32 columns, reading fp32 rows
// whose stride is 4 mod 32 words: walked in the same order, lanes r and r + 8, and the two
// halves of a row, would hit one bank (4-way conflicts). Each lane starts its walk at its own
// column instead, so that at every step the 32 lanes read 32 different banks.
__device__ __forceinline__ int lane_skew(int lane) { return (lane / 2 >> 3) + 2 * (lane % 2); }
__device__ __forceinline__ int score_column(int half, int e, int skew) { return half * 32 + ((e + skew) & 31); }
template <int HS>
__device__ __forceinline__ int out_column(int half, int e, int skew) { return half * (HS / 2) + (e + skew) % (HS / 2); }

// The tensor-core kernels' grid is (NH, B, T/64), tiles slowest, so that blocks start in order
// of work, the most first and the tail light: for queries that is the last tile (it sees every
// key), for keys the first.
__device__ __forceinline__ int heavy_first_q() { return int(gridDim.z - 1 - blockIdx.z) * kTc; }

// grid (NH, B, T/64): out(B,T,C), lse(B,NH,T) from qkv(B,T,3C)
template <class S, int HS>
__global__ void __launch_bounds__(kTcThreads) flash_forward_k(S* out, float* lse, const S* qkv, int T, int C, int NH, float scale) {
  DYNAMIC_SHARED(unsigned char, smem);
  const TcShared<S, HS> sh(smem, 1, 1);
  constexpr int ldf = kTc + 4, ldp = kTc + 8, ldo = HS + 4;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int h = blockIdx.x, b = blockIdx.y, q0 = heavy_first_q(), qw = q0 + 16 * warp;
  const int64_t C3 = 3 * int64_t(C);
  const S* base = qkv + int64_t(b) * T * C3 + h * HS;
  float* sw = sh.f32(warp, 0);
  S* pw = sh.h16(warp, 0);
  float* ow = sh.out(warp);
  tc_load_rows<S, HS>(sh.wide(2), base, q0, T, C3);  // Q through stage 1
  async_commit();
  tc_load_stage(sh, 0, base + C, base + 2 * C, 0, T, C3);  // the first K and V tiles
  async_commit();
  async_wait<1>();
  __syncthreads();
  FragA<S> q[HS / 16];
  tc_fragments<S, HS>(q, sh.wide(2), warp);
  // two lanes per query row: columns [half * 32, half * 32 + 32) of scores, half the output row
  // (o[e] is column half * HS / 2 + (e + skew) % (HS / 2), in registers)
  const int r = lane / 2, half = lane % 2, i = qw + r, skew = lane_skew(lane);
  const float sl = scale * kLog2e;  // scores in base 2: exp(x) = exp2(x log2 e)
  float o[HS / 2];
#pragma unroll
  for (int e = 0; e < HS / 2; e++) o[e] = 0.0f;
  float m = -FLT_MAX, l = 0.0f;
  const int last = min(q0 + kTc, T) - 1;  // the block's last query sees the keys up to it
  for (int k0 = 0, st = 0; k0 <= last; k0 += kTc, st ^= 1) {
    tc_advance(k0 + kTc <= last, [&] { tc_load_stage(sh, 1 - st, base + C, base + 2 * C, k0 + kTc, T, C3); });
    const S *kt = sh.wide(2 * st), *vt = sh.wide(2 * st + 1);
    const int nsub = min(4, (qw + 15 - k0) / 16 + 1);  // key sub-tiles with a key <= the warp's last query
    tc_scores<S, HS>(sw, q, kt, 0, nsub);
    __syncwarp();
    float mt = -FLT_MAX;
    for (int e = 0; e < 32; e++) {
      const int c = score_column(half, e, skew);
      if (k0 + c <= i && k0 + c < T) mt = fmaxf(mt, sw[r * ldf + c] * sl);
    }
    const float mnew = fmaxf(m, fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1)));
    float lt = 0.0f;
    for (int e = 0; e < 32; e++) {
      const int c = score_column(half, e, skew);
      const float p = k0 + c <= i && k0 + c < T ? exp2f(sw[r * ldf + c] * sl - mnew) : 0.0f;
      pw[r * ldp + c] = from_f<S>(p);
      lt += p;
    }
    const float corr = exp2f(m - mnew);  // a new max rescales what was summed so far
    l = l * corr + lt + __shfl_xor_sync(0xffffffffu, lt, 1);
    m = mnew;
    __syncwarp();
    FragC pv[HS / 16];  // this tile's P V, through the warp's staging tile into o
#pragma unroll
    for (int d = 0; d < HS / 16; d++) wmma::fill_fragment(pv[d], 0.0f);
    tc_accumulate<S, HS>(pv, pw, vt, 0, nsub);
#pragma unroll
    for (int d = 0; d < HS / 16; d++) wmma::store_matrix_sync(ow + 16 * d, pv[d], ldo, wmma::mem_row_major);
    __syncwarp();
#pragma unroll
    for (int e = 0; e < HS / 2; e++) o[e] = o[e] * corr + ow[r * ldo + out_column<HS>(half, e, skew)];
    __syncwarp();
  }
  if (i >= T) return;
  S* orow = out + (int64_t(b) * T + i) * C + h * HS;
#pragma unroll
  for (int e = 0; e < HS / 2; e++) orow[out_column<HS>(half, e, skew)] = from_f<S>(o[e] / l);
  if (half == 0) lse[(int64_t(b) * NH + h) * T + i] = (m + log2f(l)) * kLn2;
}

// grid (NH, B, T/64), a warp per 16 queries: dQ = sum over keys j <= i of dS_ij k_j
template <class S, int HS>
__global__ void __launch_bounds__(kTcThreads) flash_backward_q_k(S* dqkv, const S* dout, const S* qkv, const float* lse,
                                                                 const float* D, int T, int C, int NH, float scale) {
  DYNAMIC_SHARED(unsigned char, smem);
  const TcShared<S, HS> sh(smem, 2, 1);
  constexpr int ldf = kTc + 4, ldp = kTc + 8;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int h = blockIdx.x, b = blockIdx.y, q0 = heavy_first_q(), qw = q0 + 16 * warp;
  const int64_t C3 = 3 * int64_t(C);
  const S* base = qkv + int64_t(b) * T * C3 + h * HS;
  float *sw = sh.f32(warp, 0), *dpw = sh.f32(warp, 1);
  S* dsw = sh.h16(warp, 0);
  tc_load_rows<S, HS>(sh.wide(2), base, q0, T, C3);  // Q and dO through stage 1
  tc_load_rows<S, HS>(sh.wide(3), dout + int64_t(b) * T * C + h * HS, q0, T, C);
  async_commit();
  tc_load_stage(sh, 0, base + C, base + 2 * C, 0, T, C3);  // the first K and V tiles
  async_commit();
  async_wait<1>();
  __syncthreads();
  FragA<S> q[HS / 16], dO[HS / 16];
  tc_fragments<S, HS>(q, sh.wide(2), warp);
  tc_fragments<S, HS>(dO, sh.wide(3), warp);
  FragC dq[HS / 16];
#pragma unroll
  for (int d = 0; d < HS / 16; d++) wmma::fill_fragment(dq[d], 0.0f);
  const int r = lane / 2, half = lane % 2, i = qw + r, skew = lane_skew(lane);
  const int64_t row = (int64_t(b) * NH + h) * T + i;
  const float L = i < T ? lse[row] * kLog2e : 0.0f, Di = i < T ? D[row] : 0.0f, sl = scale * kLog2e;
  const int last = min(q0 + kTc, T) - 1;
  for (int k0 = 0, st = 0; k0 <= last; k0 += kTc, st ^= 1) {
    tc_advance(k0 + kTc <= last, [&] { tc_load_stage(sh, 1 - st, base + C, base + 2 * C, k0 + kTc, T, C3); });
    const S *kt = sh.wide(2 * st), *vt = sh.wide(2 * st + 1);
    const int nsub = min(4, (qw + 15 - k0) / 16 + 1);
    tc_scores<S, HS>(sw, q, kt, 0, nsub);    // S = Q K^T
    tc_scores<S, HS>(dpw, dO, vt, 0, nsub);  // dP = dO V^T
    __syncwarp();
    for (int e = 0; e < 32; e++) {
      const int c = score_column(half, e, skew);
      float ds = 0.0f;
      if (k0 + c <= i && k0 + c < T) ds = exp2f(sw[r * ldf + c] * sl - L) * (dpw[r * ldf + c] - Di) * scale;
      dsw[r * ldp + c] = from_f<S>(ds);
    }
    __syncwarp();
    tc_accumulate<S, HS>(dq, dsw, kt, 0, nsub);  // dQ += dS K
  }
  tc_store_rows<S, HS>(dqkv + int64_t(b) * T * C3 + h * HS, C3, dq, sh.out(warp), qw, T);
}

// grid (NH, B, T/64), a warp per 16 keys j over the queries i >= j:
// dV_j = sum P_ij dO_i, dK_j = sum dS_ij q_i
template <class S, int HS>
__global__ void __launch_bounds__(kTcThreads) flash_backward_kv_k(S* dqkv, const S* dout, const S* qkv, const float* lse,
                                                                  const float* D, int T, int C, int NH, float scale) {
  DYNAMIC_SHARED(unsigned char, smem);
  const TcShared<S, HS> sh(smem, 2, 2);
  constexpr int ldf = kTc + 4, ldp = kTc + 8;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int h = blockIdx.x, b = blockIdx.y, k0 = blockIdx.z * kTc, kw = k0 + 16 * warp;
  const int64_t C3 = 3 * int64_t(C);
  const S* base = qkv + int64_t(b) * T * C3 + h * HS;
  const S* dbase = dout + int64_t(b) * T * C + h * HS;
  const float* lrow = lse + (int64_t(b) * NH + h) * T;
  const float* drow = D + (int64_t(b) * NH + h) * T;
  float *st = sh.f32(warp, 0), *dpt = sh.f32(warp, 1);
  S *pt = sh.h16(warp, 0), *dst = sh.h16(warp, 1);
  // the queries [q0, q0 + 64) into stage s: Q, dO, their log-sum-exps (base 2) and D
  auto issue = [&](int q0, int s) {
    tc_load_rows<S, HS>(sh.wide(2 * s), base, q0, T, C3);  // strides differ: not tc_load_stage
    tc_load_rows<S, HS>(sh.wide(2 * s + 1), dbase, q0, T, C);
    float* stats = sh.stats + 2 * kTc * s;
    for (int e = threadIdx.x; e < kTc; e += blockDim.x) {
      stats[e] = q0 + e < T ? lrow[q0 + e] * kLog2e : 0.0f;
      stats[kTc + e] = q0 + e < T ? drow[q0 + e] : 0.0f;
    }
  };
  tc_load_stage(sh, 1, base + C, base + 2 * C, k0, T, C3);  // K and V through stage 1
  async_commit();
  issue(k0, 0);
  async_commit();
  async_wait<1>();
  __syncthreads();
  FragA<S> k[HS / 16], v[HS / 16];
  tc_fragments<S, HS>(k, sh.wide(2), warp);
  tc_fragments<S, HS>(v, sh.wide(3), warp);
  FragC dk[HS / 16], dv[HS / 16];
#pragma unroll
  for (int d = 0; d < HS / 16; d++) {
    wmma::fill_fragment(dk[d], 0.0f);
    wmma::fill_fragment(dv[d], 0.0f);
  }
  const int r = lane / 2, half = lane % 2, j = kw + r, skew = lane_skew(lane);
  const float sl = scale * kLog2e;  // scores in base 2: exp(x) = exp2(x log2 e)
  for (int q0 = k0, s = 0; q0 < T; q0 += kTc, s ^= 1) {
    tc_advance(q0 + kTc < T, [&] { issue(q0 + kTc, 1 - s); });
    const S *qt = sh.wide(2 * s), *dOt = sh.wide(2 * s + 1);
    const float *Ls = sh.stats + 2 * kTc * s, *Ds = Ls + kTc;
    const int n0 = max(0, (kw - q0) / 16);  // query sub-tiles before n0 are all below the warp's keys
    tc_scores<S, HS>(st, k, qt, n0, 4);    // S^T = K Q^T
    tc_scores<S, HS>(dpt, v, dOt, n0, 4);  // dP^T = V dO^T
    __syncwarp();
    for (int e = 0; e < 32; e++) {
      const int c = score_column(half, e, skew);
      float p = 0.0f, ds = 0.0f;
      if (q0 + c >= j && q0 + c < T) {
        p = exp2f(st[r * ldf + c] * sl - Ls[c]);
        ds = p * (dpt[r * ldf + c] - Ds[c]) * scale;
      }
      pt[r * ldp + c] = from_f<S>(p);
      dst[r * ldp + c] = from_f<S>(ds);
    }
    __syncwarp();
    tc_accumulate<S, HS>(dv, pt, dOt, n0, 4);  // dV += P^T dO
    tc_accumulate<S, HS>(dk, dst, qt, n0, 4);  // dK += dS^T Q
  }
  S* rows = dqkv + int64_t(b) * T * C3 + h * HS;
  tc_store_rows<S, HS>(rows + C, C3, dk, sh.out(warp), kw, T);
  tc_store_rows<S, HS>(rows + 2 * C, C3, dv, sh.out(warp), kw, T);
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
  const float scale = 1.0f / sqrtf(float(C / NH));
  dispatch_cuda(dt, [&](auto p) {
    using S = STORAGE(p);
    dispatch_hs(C / NH, [&](auto hs) {
      if constexpr (std::is_same_v<S, float>) {
        const dim3 grid(unsigned((T + kRows - 1) / kRows), unsigned(NH), unsigned(B));
        launch(attention_forward_k<S, hs()>, grid, kRows, 0, static_cast<S*>(out), lse,
               static_cast<const S*>(qkv), int(T), int(C), int(NH), scale);
      } else {
        const dim3 grid(unsigned(NH), unsigned(B), unsigned((T + kTc - 1) / kTc));
        launch(flash_forward_k<S, hs()>, grid, kTcThreads, TcShared<S, hs()>(uintptr_t(0), 1, 1).bytes,
               static_cast<S*>(out), lse, static_cast<const S*>(qkv), int(T), int(C), int(NH), scale);
      }
    });
  });
}

void launch_attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out,
                               const float* lse, float* D, int64_t B, int64_t T, int64_t C,
                               int64_t NH, DType dt) {
  const float scale = 1.0f / sqrtf(float(C / NH));
  dispatch_cuda(dt, [&](auto p) {
    using S = STORAGE(p);
    const S* d_out = static_cast<const S*>(dout);
    const S* q = static_cast<const S*>(qkv);
    S* dq = static_cast<S*>(dqkv);
    launch(attention_rowsum_k<S>, grid_for(B * NH * T), 256, 0, D, d_out, static_cast<const S*>(out), B, int(T), int(C), int(NH));
    dispatch_hs(C / NH, [&](auto hs) {
      if constexpr (std::is_same_v<S, float>) {
        const dim3 grid(unsigned((T + kRows - 1) / kRows), unsigned(NH), unsigned(B));
        launch(attention_backward_dq_k<S, hs()>, grid, kRows, 0, dq, d_out, q, lse, D, int(T), int(C), int(NH), scale);
        launch(attention_backward_kv_k<S, hs(), false>, grid, kRows, 0, dq, d_out, q, lse, D, int(T), int(C), int(NH), scale);
        launch(attention_backward_kv_k<S, hs(), true>, grid, kRows, 0, dq, d_out, q, lse, D, int(T), int(C), int(NH), scale);
      } else {
        const dim3 grid(unsigned(NH), unsigned(B), unsigned((T + kTc - 1) / kTc));
        launch(flash_backward_q_k<S, hs()>, grid, kTcThreads, TcShared<S, hs()>(uintptr_t(0), 2, 1).bytes, dq, d_out, q, lse, D,
               int(T), int(C), int(NH), scale);
        launch(flash_backward_kv_k<S, hs()>, grid, kTcThreads, TcShared<S, hs()>(uintptr_t(0), 2, 2).bytes, dq, d_out, q, lse, D,
               int(T), int(C), int(NH), scale);
      }
    });
  });
}

}  // namespace frugal
