// Causal multi-head self-attention, memory-efficient (the FlashAttention-2 algorithm on the
// CPU): queries and keys are processed in tiles of kTile rows; the forward keeps a running max
// and sum per query row (online softmax) and stores only the output and the per-row
// log-sum-exp; the backward recomputes each tile of probabilities from the log-sum-exp. No
// T x T tensor exists, in forward or backward. Operands are widened to fp32 scratch of their
// thread and multiplied by attention_mm, in dnnl_sgemm's summation order. Grouped-query
// attention: NKV key/value heads, each shared by G = NH/NKV query heads. Both passes are parallel
// over (b, key/value head) (the forward over query heads where that leaves threads idle), the
// backward's task summing dK and dV over its group's query heads: each task owns its outputs.
// In bf16 (where the CPU has AVX512-BF16 and the head size is a multiple of 16) forward and
// backward multiply bf16 pairs with fp32 sums instead (vdpbf16ps, twice fp32's rate; on AMX
// tiles where the CPU has AMX, 2.5x more), on operands repacked once per head; P (and dS) are
// rounded to bf16 for the next product, as PyTorch's CPU flash attention and FlashAttention-2
// on GPUs do, while row sums stay fp32.
#include <algorithm>
#include <cmath>
#include <cstring>

#include <oneapi/dnnl/dnnl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "backend/cpu/cpu.h"

namespace frugal {

static constexpr int64_t kTile = 64;
static int64_t padded(int64_t T) { return (T + kTile - 1) / kTile * kTile; }  // T in whole tiles

// rows x HS tile of q, k or v (or of a (B,T,C) tensor with stride C) -> fp32 (rows, HS)
template <class S>
static void load_tile(float* dst, const S* src, int64_t rows, int64_t HS, int64_t stride) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t d = 0; d < HS; d++) dst[r * HS + d] = to_f32(src[r * stride + d]);
}

// The backward's shared steps: D(T) = rowsum(dO * O) of one head (as in FlashAttention-2), the
// head's dQ (T, HS) fp32 accumulator stored into dqkv's q part, and the same for dK and dV.
template <class S>
static void rowsum_dout_out(float* D, const S* dout, const S* out, int64_t T, int64_t HS, int64_t C) {
  for (int64_t t = 0; t < T; t++) {
    float acc = 0.0f;
    for (int64_t d = 0; d < HS; d++) acc += to_f32(dout[t * C + d]) * to_f32(out[t * C + d]);
    D[t] = acc;
  }
}
// f(r, c) for every r < rows, c < cols, in 16 x 16 blocks: a copy that transposes reads and
// writes a few cache lines per block instead of one line per element on one side.
template <class F>
static inline void blocked(int64_t rows, int64_t cols, F&& f) {
  for (int64_t r0 = 0; r0 < rows; r0 += 16)
    for (int64_t c0 = 0; c0 < cols; c0 += 16)
      for (int64_t r = r0; r < std::min(rows, r0 + 16); r++)
        for (int64_t c = c0; c < std::min(cols, c0 + 16); c++) f(r, c);
}

// T rows of a head's fp32 gradient (element (t, d) at t·ts + d·ds) into a (T, W) view of dqkv.
template <class S>
static void store_rows(S* dst, const float* src, int64_t T, int64_t HS, int64_t W, int64_t ts, int64_t ds) {
  blocked(T, HS, [&](int64_t t, int64_t d) { dst[t * W + d] = from_f32<S>(src[t * ts + d * ds]); });
}

// Where head h's q, k and v start in a row of qkv(B,T,W), W = (NH + 2 NKV) HS.
struct Heads {
  int64_t NH, NKV, HS;
  int64_t W() const { return (NH + 2 * NKV) * HS; }
  int64_t C() const { return NH * HS; }  // the output's row
  int64_t q(int64_t h) const { return h * HS; }
  int64_t k(int64_t h) const { return (NH + h / (NH / NKV)) * HS; }
  int64_t v(int64_t h) const { return k(h) + NKV * HS; }
};

// The forward's tasks: a key/value head with all of its query heads, packing its K and V once; or,
// where that leaves fewer than two tasks a thread (one sequence of a few key/value heads, as in a
// prompt's prefill), one query head each, packing its group's K and V itself. The tasks per
// key/value head.
static int64_t forward_split(int64_t B, const Heads& hd) {
  return B * hd.NKV >= 2 * omp_get_max_threads() ? 1 : hd.NH / hd.NKV;
}

// The rows of a query tile (nq rows) against a key tile, in groups that see the same key blocks:
// f(r0, nr, nb) for rows r0 .. r0 + nr - 1 and the first nb 16-key blocks. Off the diagonal one
// group sees all 4; on it (diag) 16-row group g sees g + 1: the rest is masked.
template <class F>
static inline void causal_groups(bool diag, int64_t nq, F&& f) {
  if (!diag) return f(int64_t(0), nq, int64_t(kTile / 16));
  for (int64_t r0 = 0; r0 < nq; r0 += 16) f(r0, std::min<int64_t>(16, nq - r0), r0 / 16 + 1);
}

// The fp32 products: C(M, N) (+)= A(M, K) B(K, N), A's element (r, k) at a[r·ar + k·ak] (a
// transposed A is ar = 1), B row-major. Each element's sum starts at zero, adds the K products in
// order by fused multiply-adds, and is then added to C: dnnl_sgemm's order, so the fp32 results
// are the ones it gave before this kernel. On AVX-512: R rows by NB 16-column vectors in
// registers, as dp_block does for bf16 pairs, for N a multiple of 16.
#if defined(__AVX512F__)
template <int R, int NB, bool ACC>
static inline void mm_block(float* c, int64_t ldc, const float* a, int64_t ar, int64_t ak, const float* b,
                            int64_t ldb, int64_t K) {
  __m512 s[R][NB];
#pragma GCC unroll 4
  for (int r = 0; r < R; r++)
#pragma GCC unroll 4
    for (int n = 0; n < NB; n++) s[r][n] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k++) {
    __m512 bv[NB];
#pragma GCC unroll 4
    for (int n = 0; n < NB; n++) {
      bv[n] = _mm512_loadu_ps(b + k * ldb + 16 * n);
      asm("" : "+v"(bv[n]));  // in a register: gcc would fold the load into each of the R FMAs
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
      const __m512 av = _mm512_set1_ps(a[r * ar + k * ak]);
#pragma GCC unroll 4
      for (int n = 0; n < NB; n++) s[r][n] = _mm512_fmadd_ps(av, bv[n], s[r][n]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; r++)
#pragma GCC unroll 4
    for (int n = 0; n < NB; n++) {
      float* cr = c + r * ldc + 16 * n;
      _mm512_storeu_ps(cr, ACC ? _mm512_add_ps(_mm512_loadu_ps(cr), s[r][n]) : s[r][n]);
    }
}

template <int NB, bool ACC>
static void mm_rows(int64_t M, float* c, int64_t ldc, const float* a, int64_t ar, int64_t ak, const float* b,
                    int64_t ldb, int64_t K, bool tri) {
  int64_t r = 0;
  for (; r + 4 <= M; r += 4) {
    const int64_t k = tri ? r : 0;
    mm_block<4, NB, ACC>(c + r * ldc, ldc, a + r * ar + k * ak, ar, ak, b + k * ldb, ldb, K - k);
  }
  for (; r < M; r++) {
    const int64_t k = tri ? r : 0;
    mm_block<1, NB, ACC>(c + r * ldc, ldc, a + r * ar + k * ak, ar, ak, b + k * ldb, ldb, K - k);
  }
}

template <bool ACC>
static void mm_cols(int64_t M, int64_t N, float* c, int64_t ldc, const float* a, int64_t ar, int64_t ak,
                    const float* b, int64_t ldb, int64_t K, bool tri) {
  for (int64_t n0 = 0; n0 < N; n0 += 64) {
    float* cn = c + n0;
    const float* bn = b + n0;
    switch (std::min<int64_t>(4, (N - n0) / 16)) {
      case 4: mm_rows<4, ACC>(M, cn, ldc, a, ar, ak, bn, ldb, K, tri); break;
      case 3: mm_rows<3, ACC>(M, cn, ldc, a, ar, ak, bn, ldb, K, tri); break;
      case 2: mm_rows<2, ACC>(M, cn, ldc, a, ar, ak, bn, ldb, K, tri); break;
      default: mm_rows<1, ACC>(M, cn, ldc, a, ar, ak, bn, ldb, K, tri); break;
    }
  }
}
#endif

// Not inlined, for dp's reason below. tri: A(r, k) = 0 for k < r (the diagonal tile's P^T and
// dS^T), so row r's sum starts at k = r; adding those zeros to a sum of zeros changes no bit.
[[gnu::noinline]] void attention_mm(int64_t M, int64_t N, int64_t K, const float* a, int64_t ar, int64_t ak,
                                   const float* b, int64_t ldb, bool acc, float* c, int64_t ldc, bool tri) {
#if defined(__AVX512F__)
  if (N % 16 == 0) {
    if (acc) mm_cols<true>(M, N, c, ldc, a, ar, ak, b, ldb, K, tri);
    else mm_cols<false>(M, N, c, ldc, a, ar, ak, b, ldb, K, tri);
    return;
  }
#endif
  if (ak == 1) sgemm(false, false, M, N, K, a, ar, b, ldb, acc ? 1.0f : 0.0f, c, ldc);
  else sgemm(true, false, M, N, K, a, ak, b, ldb, acc ? 1.0f : 0.0f, c, ldc);
}

// Whether a head's and a tile pair's products run on attention_mm: on AVX-512, for head sizes
// that are a multiple of 16 and tiles of 16 rows and keys or more. dnnl_sgemm (as the products
// were before attention_mm) sums in other orders for fewer (its small-matrix and matrix-vector
// kernels): the last tile when T % 64 < 16 keeps it.
static bool own_head(int64_t HS) {
#if defined(__AVX512F__)
  return HS % 16 == 0;
#else
  return false;
#endif
}
static bool own_tile(int64_t HS, int64_t nq, int64_t nk) { return own_head(HS) && nq >= 16 && nk >= 16; }

// A head's fp32 rows (T, HS) -> K^T (or V^T) by 64-row tiles, dst[(t·HS + d)·64 + j], zero past T:
// the B of S = Q K^T and dP = dO V^T on attention_mm (own_head).
static void load_by_dim(float* dst, const float* src, int64_t T, int64_t HS) {
  blocked(padded(T), HS, [&](int64_t t, int64_t d) {
    dst[(t / kTile * HS + d) * kTile + t % kTile] = t < T ? src[t * HS + d] : 0.0f;
  });
}

// The three product shapes of a tile pair (nq query rows, nk keys), on attention_mm where
// own_tile, else by dnnl_sgemm as before it; diag: the diagonal tile, whose masked key blocks
// attention_mm skips.
// dst(nq, kTile) = X Y^T: x (nq, HS) rows; Y as yt (by dims, load_by_dim's tile) and yr (rows).
static void tile_xyt(bool own, bool diag, int64_t nq, int64_t nk, int64_t HS, const float* x, const float* yt,
                     const float* yr, float* dst) {
  if (!own) return sgemm(false, true, nq, nk, HS, x, HS, yr, HS, 0.0f, dst, kTile);
  causal_groups(diag, nq, [&](int64_t r0, int64_t nr, int64_t nb) {
    attention_mm(nr, 16 * nb, HS, x + r0 * HS, HS, 1, yt, kTile, false, dst + r0 * kTile, kTile, false);
  });
}
// c(nq, HS) += P Y: p (nq, kTile), zero where masked; yr (nk, HS) rows.
static void tile_add_py(bool own, bool diag, int64_t nq, int64_t nk, int64_t HS, const float* p, const float* yr,
                        float* c) {
  if (!own) return sgemm(false, false, nq, HS, nk, p, kTile, yr, HS, 1.0f, c, HS);
  causal_groups(diag, nq, [&](int64_t r0, int64_t nr, int64_t nb) {
    attention_mm(nr, HS, std::min(16 * nb, nk), p + r0 * kTile, kTile, 1, yr, HS, true, c + r0 * HS, HS, false);
  });
}
// c(nk, HS) += P^T Y: p (nq, kTile), zero where masked (left of the diagonal in P^T); y (nq, HS) rows.
static void tile_add_pty(bool own, bool diag, int64_t nq, int64_t nk, int64_t HS, const float* p, const float* y,
                         float* c) {
  if (own) attention_mm(nk, HS, nq, p, 1, kTile, y, HS, true, c, HS, diag);
  else sgemm(true, false, nk, HS, nq, p, kTile, y, HS, 1.0f, c, HS);
}

// fp32 (and bf16 where the CPU lacks AVX512-BF16): operands widened to fp32 once per key/value
// head (K^T and V by tiles) and per query head, P and dS in fp32.
template <class S>
static void attention_forward_t(S* out, float* lse, const S* qkv, float* scratch, int64_t per_thread, int64_t B,
                                int64_t T, Heads hd) {
  const int64_t NH = hd.NH, HS = hd.HS, C = hd.C(), C3 = hd.W(), G = NH / hd.NKV, split = forward_split(B, hd);
  const int64_t Tp = padded(T);
  const float scale = 1.0f / std::sqrt(float(HS));
#pragma omp parallel
  {
    float* kt = scratch + int64_t(omp_get_thread_num()) * per_thread;  // (Tp, HS) K^T by tiles
    float* k = kt + Tp * HS;                                         // (T, HS)
    float* v = k + T * HS;                                           // (T, HS)
    float* q = v + T * HS;                                           // (kTile, HS)
    float* o = q + kTile * HS;                                       // (kTile, HS) unnormalised
    float* s = o + kTile * HS;                                       // (kTile, kTile) scores/probs
    float* m = s + kTile * kTile;                                    // (kTile) running max
    float* l = m + kTile;                                            // (kTile) running sum
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < B * hd.NKV * split; task++) {
      const int64_t b = task / (hd.NKV * split), kv = task / split % hd.NKV, h0 = kv * G + task % split * (G / split);
      const S* base = qkv + b * T * C3;
      load_tile(k, base + hd.k(kv * G), T, HS, C3);  // once for the task's query heads
      load_tile(v, base + hd.v(kv * G), T, HS, C3);
      if (own_head(HS)) load_by_dim(kt, k, T, HS);
      for (int64_t h = h0; h < h0 + G / split; h++)
        for (int64_t q0 = 0; q0 < T; q0 += kTile) {
          const int64_t nq = std::min(kTile, T - q0);
          load_tile(q, base + q0 * C3 + hd.q(h), nq, HS, C3);
          std::memset(o, 0, sizeof(float) * nq * HS);
          for (int64_t i = 0; i < nq; i++) { m[i] = -3.0e38f; l[i] = 0.0f; }  // finite: built with -ffast-math
          for (int64_t k0 = 0; k0 <= q0 + nq - 1; k0 += kTile) {
            const int64_t nk = std::min(kTile, T - k0);
            const bool own = own_tile(HS, nq, nk);
            tile_xyt(own, k0 == q0, nq, nk, HS, q, kt + k0 * HS, k + k0 * HS, s);  // S = Q K^T
            for (int64_t i = 0; i < nq; i++) {
              float* row = s + i * kTile;
              const int64_t valid = std::clamp<int64_t>(q0 + i - k0 + 1, 0, nk);  // causal: keys <= query
              float mx = m[i];
              for (int64_t j = 0; j < valid; j++) mx = std::max(mx, row[j] * scale);
              const float corr = std::exp(m[i] - mx);  // rescales what was summed so far
              float sum = 0.0f;
              for (int64_t j = 0; j < valid; j++) sum += row[j] = std::exp(row[j] * scale - mx);
              for (int64_t j = valid; j < nk; j++) row[j] = 0.0f;
              l[i] = l[i] * corr + sum;
              m[i] = mx;
              for (int64_t d = 0; d < HS; d++) o[i * HS + d] *= corr;
            }
            tile_add_py(own, k0 == q0, nq, nk, HS, s, v + k0 * HS, o);  // O += P V
          }
          for (int64_t i = 0; i < nq; i++) {
            S* orow = out + (b * T + q0 + i) * C + h * HS;
            const float inv = 1.0f / l[i];
            for (int64_t d = 0; d < HS; d++) orow[d] = from_f32<S>(o[i * HS + d] * inv);
            lse[(b * NH + h) * T + q0 + i] = m[i] + std::log(l[i]);
          }
        }
    }
  }
}

#if defined(__AVX512BF16__)
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
// AMX (Sapphire Rapids and later): the same product on the tile unit, whose bf16 pair products
// are 8x vdpbf16ps's rate. Tiles 0-3 hold C (up to 16 rows x 16 fp32 each), 4 A (rows x up to
// 16 pairs), 5 B (up to 16 pairs x 16 columns, VNNI: dp's layout). The kernel asks for the tile
// state once per process; where it cannot have it (no AMX, an old kernel) dp stays on AVX-512.
static bool amx_ready() {
  static const bool ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
  return ok;
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// The configuration this thread loaded last (-1: none, or another library's since: oneDNN's
// GEMMs configure the tiles for themselves between two attention calls).
static thread_local int cur_r = -1, cur_kp = -1;
static void amx_forget() { cur_r = cur_kp = -1; }

// Loads the configuration for r rows of C and A and kp pairs of the reduction, unless loaded.
static void amx_config(int r, int kp) {
  if (r == cur_r && kp == cur_kp) return;
  TileConfig t;
  for (int i = 0; i < 4; i++) { t.rows[i] = uint8_t(r); t.colsb[i] = 64; }
  t.rows[4] = uint8_t(r);
  t.colsb[4] = uint16_t(4 * kp);
  t.rows[5] = uint8_t(kp);
  t.colsb[5] = 64;
  _tile_loadconfig(&t);
  cur_r = r;
  cur_kp = kp;
}

template <int N>
static inline void amx_block(float* c, int64_t ldc, const uint32_t* a, int64_t lda, const __m512i* b, int64_t ldb,
                             int64_t P, bool acc, int r) {
  for (int64_t p0 = 0; p0 < P; p0 += 16) {
    const int kp = int(std::min<int64_t>(16, P - p0));
    amx_config(r, kp);
    if (p0 == 0) {
      if (acc) {
        _tile_loadd(0, c, ldc * 4);
        if (N > 1) _tile_loadd(1, c + 16, ldc * 4);
        if (N > 2) _tile_loadd(2, c + 32, ldc * 4);
        if (N > 3) _tile_loadd(3, c + 48, ldc * 4);
      } else {
        _tile_zero(0);
        if (N > 1) _tile_zero(1);
        if (N > 2) _tile_zero(2);
        if (N > 3) _tile_zero(3);
      }
    }
    _tile_loadd(4, a + p0, lda * 4);
    const __m512i* bp = b + p0 * ldb;
    _tile_loadd(5, bp, ldb * 64);
    _tile_dpbf16ps(0, 4, 5);
    if (N > 1) { _tile_loadd(5, bp + 1, ldb * 64); _tile_dpbf16ps(1, 4, 5); }
    if (N > 2) { _tile_loadd(5, bp + 2, ldb * 64); _tile_dpbf16ps(2, 4, 5); }
    if (N > 3) { _tile_loadd(5, bp + 3, ldb * 64); _tile_dpbf16ps(3, 4, 5); }
  }
  _tile_stored(0, c, ldc * 4);
  if (N > 1) _tile_stored(1, c + 16, ldc * 4);
  if (N > 2) _tile_stored(2, c + 32, ldc * 4);
  if (N > 3) _tile_stored(3, c + 48, ldc * 4);
}

// A kp that changes mid-reduction (P not a multiple of 16) reloads the configuration, which
// zeroes every tile: C is stored and reloaded around it.
static void dp_amx(int64_t rows, int64_t nb, float* c, int64_t ldc, const uint32_t* a, int64_t lda,
                   const __m512i* b, int64_t ldb, int64_t P, bool acc) {
  const int64_t P16 = P / 16 * 16;
  for (int64_t r0 = 0; r0 < rows; r0 += 16) {
    const int r = int(std::min<int64_t>(16, rows - r0));
    for (int64_t n0 = 0; n0 < nb; n0 += 4) {
      float* cn = c + r0 * ldc + 16 * n0;
      const uint32_t* ar = a + r0 * lda;
      for (int part = 0; part < 2; part++) {  // the multiple of 16 pairs, then the rest
        const int64_t p_lo = part ? P16 : 0, np = part ? P - P16 : P16;
        if (np == 0) continue;
        const bool add = acc || p_lo > 0;
        switch (std::min<int64_t>(4, nb - n0)) {
          case 4: amx_block<4>(cn, ldc, ar + p_lo, lda, b + n0 + p_lo * ldb, ldb, np, add, r); break;
          case 3: amx_block<3>(cn, ldc, ar + p_lo, lda, b + n0 + p_lo * ldb, ldb, np, add, r); break;
          case 2: amx_block<2>(cn, ldc, ar + p_lo, lda, b + n0 + p_lo * ldb, ldb, np, add, r); break;
          default: amx_block<1>(cn, ldc, ar + p_lo, lda, b + n0 + p_lo * ldb, ldb, np, add, r); break;
        }
      }
    }
  }
}
#endif

// At the start of each thread's share of an attention call: whatever the tiles hold is not ours.
static inline void amx_begin() {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
  amx_forget();
#endif
}

// dp_block over any number of rows and of 16-column blocks (ldb >= nb). Not inlined: inside the
// backward's loop, with the softmax's constants live, gcc reloaded B for every row of the block
// (16 loads to 16 vdpbf16ps instead of 4), which made dQ's product load-bound.
[[gnu::noinline]] static void dp(int64_t rows, int64_t nb, float* c, int64_t ldc, const uint32_t* a, int64_t lda,
               const __m512i* b, int64_t ldb, int64_t P, bool acc) {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
  if (amx_ready()) return dp_amx(rows, nb, c, ldc, a, lda, b, ldb, P, acc);
#endif
  if (acc) dp_cols<Sum::chain>(rows, nb, c, ldc, a, lda, b, ldb, P);
  else dp_cols<Sum::store>(rows, nb, c, ldc, a, lda, b, ldb, P);
}

static uint32_t pair(bf16 lo, bf16 hi) { return uint32_t(lo.bits) | uint32_t(hi.bits) << 16; }

// Rows of a (T, stride) view with HS dims, in 64-row tiles, zero past T, as the B operand of dp:
// - by dims, for X R^T: tile t, dim pair p, row j -> dst[(t·HS/2 + p)·64 + j];
// - by rows, for P R: tile t, row pair jp, dim d -> dst[(t·32 + jp)·HS + d].
static void pack_by_dim(uint32_t* dst, const bf16* src, int64_t T, int64_t HS, int64_t stride) {
  const int64_t tiles = (T + kTile - 1) / kTile, H2 = HS / 2;
  for (int64_t r0 = 0; r0 < tiles * kTile; r0 += 16) {  // 16 rows by 16 pairs: one transpose
    const int64_t n = std::clamp<int64_t>(T - r0, 0, 16);
    uint32_t* d = dst + (r0 / kTile * H2) * kTile + r0 % kTile;
    for (int64_t p0 = 0; p0 < H2; p0 += 16) {
      const int64_t w = std::min<int64_t>(16, H2 - p0);
      const __mmask16 cols = __mmask16((uint32_t(1) << w) - 1);
      __m512i r[16];
      for (int64_t i = 0; i < 16; i++)
        r[i] = i < n ? _mm512_maskz_loadu_epi32(cols, src + (r0 + i) * stride + 2 * p0) : _mm512_setzero_si512();
      transpose16x16(r);  // r[p]: pair p0 + p of the 16 rows
      for (int64_t p = 0; p < w; p++) _mm512_storeu_si512(d + (p0 + p) * kTile, r[p]);
    }
  }
}

static void pack_by_row(uint32_t* dst, const bf16* src, int64_t T, int64_t HS, int64_t stride) {
  const int64_t tiles = (T + kTile - 1) / kTile;
  const bf16 zero{0};
  for (int64_t jp = 0; jp < tiles * kTile / 2; jp++) {
    const int64_t row = 2 * jp;
    const bf16* r0 = src + row * stride;
    const bf16* r1 = r0 + stride;
    uint32_t* d = dst + jp * HS;
    if (row + 1 < T) {
      for (int64_t c = 0; c < HS; c += 16)
        _mm512_storeu_si512(d + c, interleave16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r0 + c)),
                                                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r1 + c))));
    } else {
      for (int64_t c = 0; c < HS; c++) d[c] = pair(row < T ? r0[c] : zero, zero);
    }
  }
}

// exp(x) for the probabilities: 2^n · 2^f with n = round(x·log2 e), |f| <= 1/2, 2^f by its
// Taylor polynomial of degree 6 (relative error ~1e-7 plus that of x·log2 e: ~1e-6 at x = -30,
// far below the bf16 rounding P gets next); scalef takes x -> -inf to 0 without a slow path.
static inline __m512 exp_ps(__m512 x) {
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.540353e-4f);
  for (float c : {1.3333558e-3f, 9.6181291e-3f, 5.5504109e-2f, 2.4022651e-1f, 6.9314718e-1f, 1.0f})
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, n);
}

// One query row of a tile: scores s (kTile, fp32, `valid` of them causal) -> the online softmax
// update of the running max m, sum l and unnormalised output o (HS), and P in bf16 pairs.
static inline void softmax_tile_row(const float* s, uint32_t* pb, float* o, int64_t HS, float* m,
                                    float* l, float scale, int64_t valid) {
  __m512 x[kTile / 16];
  __m512 mx = _mm512_set1_ps(*m);
  for (int c = 0; c < kTile / 16; c++) {
    const int64_t n = std::clamp<int64_t>(valid - 16 * c, 0, 16);
    const __mmask16 keep = __mmask16((uint32_t(1) << n) - 1);
    x[c] = _mm512_mask_mul_ps(_mm512_set1_ps(-3.0e38f), keep, _mm512_loadu_ps(s + 16 * c), _mm512_set1_ps(scale));
    mx = _mm512_max_ps(mx, x[c]);
  }
  const float row_max = _mm512_reduce_max_ps(mx);
  const float corr = row_max == *m ? 1.0f : std::exp(*m - row_max);  // rescales what was summed so far
  __m512 sum = _mm512_setzero_ps();
  for (int c = 0; c < kTile / 16; c++) {
    x[c] = exp_ps(_mm512_sub_ps(x[c], _mm512_set1_ps(row_max)));  // masked keys: 0
    sum = _mm512_add_ps(sum, x[c]);
  }
  *l = *l * corr + _mm512_reduce_add_ps(sum);
  *m = row_max;
  if (corr != 1.0f)
    for (int64_t d = 0; d < HS; d += 16)
      _mm512_storeu_ps(o + d, _mm512_mul_ps(_mm512_loadu_ps(o + d), _mm512_set1_ps(corr)));
  for (int c = 0; c < kTile / 16; c += 2)
    _mm512_storeu_si512(pb + 8 * c, (__m512i)_mm512_cvtne2ps_pbh(x[c + 1], x[c]));
}

static void attention_forward_bf16(bf16* out, float* lse, const bf16* qkv, float* scratch,
                                   int64_t per_thread, int64_t B, int64_t T, Heads hd) {
  const int64_t NH = hd.NH, HS = hd.HS, C = hd.C(), C3 = hd.W(), H2 = HS / 2, tiles = (T + kTile - 1) / kTile;
  const int64_t G = NH / hd.NKV, split = forward_split(B, hd);
  const float scale = 1.0f / std::sqrt(float(HS));
#pragma omp parallel
  {
    amx_begin();
    float* mine = scratch + int64_t(omp_get_thread_num()) * per_thread;
    uint32_t* kp = reinterpret_cast<uint32_t*>(mine);       // tiles·64·HS/2
    uint32_t* vp = kp + tiles * kTile * H2;                  // tiles·32·HS
    uint32_t* pb = vp + tiles * kTile * H2;                  // (kTile, 32) P in bf16 pairs
    float* o = reinterpret_cast<float*>(pb + kTile * kTile / 2);  // (kTile, HS) unnormalised
    float* s = o + kTile * HS;                               // (kTile, kTile)
    float* m = s + kTile * kTile;                            // running max
    float* l = m + kTile;                                    // running sum
    bf16* qc = reinterpret_cast<bf16*>(l + kTile);           // (kTile, HS) the tile's queries
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < B * hd.NKV * split; task++) {
      const int64_t b = task / (hd.NKV * split), kv = task / split % hd.NKV, h0 = kv * G + task % split * (G / split);
      pack_by_dim(kp, qkv + b * T * C3 + hd.k(kv * G), T, HS, C3);  // once for the task's query heads
      pack_by_row(vp, qkv + b * T * C3 + hd.v(kv * G), T, HS, C3);
      for (int64_t h = h0; h < h0 + G / split; h++) {
        const bf16* base = qkv + b * T * C3 + hd.q(h);
        for (int64_t q0 = 0; q0 < T; q0 += kTile) {
          const int64_t nq = std::min(kTile, T - q0);
          for (int64_t i = 0; i < nq; i++) std::memcpy(qc + i * HS, base + (q0 + i) * C3, sizeof(bf16) * HS);
          const uint32_t* q = reinterpret_cast<const uint32_t*>(qc);
          std::memset(o, 0, sizeof(float) * nq * HS);
          for (int64_t i = 0; i < nq; i++) { m[i] = -3.0e38f; l[i] = 0.0f; }
          for (int64_t t = 0; t <= (q0 + nq - 1) / kTile; t++) {
            const int64_t k0 = t * kTile;
            const __m512i* kt = reinterpret_cast<const __m512i*>(kp + t * kTile * H2);
            const __m512i* vt = reinterpret_cast<const __m512i*>(vp + t * kTile * H2);
            causal_groups(k0 == q0, nq, [&](int64_t r0, int64_t nr, int64_t nb) {  // S = Q K^T
              dp(nr, nb, s + r0 * kTile, kTile, q + r0 * H2, H2, kt, kTile / 16, H2, false);
            });
            for (int64_t i = 0; i < nq; i++)
              softmax_tile_row(s + i * kTile, pb + i * kTile / 2, o + i * HS, HS, m + i, l + i, scale,
                               std::clamp<int64_t>(q0 + i - k0 + 1, 0, kTile));
            causal_groups(k0 == q0, nq, [&](int64_t r0, int64_t nr, int64_t nb) {  // O += P V
              dp(nr, HS / 16, o + r0 * HS, HS, pb + r0 * kTile / 2, kTile / 2, vt, HS / 16, 8 * nb, true);
            });
          }
          for (int64_t i = 0; i < nq; i++) {
            bf16* orow = out + (b * T + q0 + i) * C + h * HS;
            const float inv = 1.0f / l[i];
            for (int64_t d = 0; d < HS; d++) orow[d] = from_f32<bf16>(o[i * HS + d] * inv);
            lse[(b * NH + h) * T + q0 + i] = m[i] + std::log(l[i]);
          }
        }
      }
    }
  }
}

// The bf16 backward, FlashAttention-2's per key tile, every product in bf16 pairs with fp32
// sums (P and dS rounded to bf16, as on GPUs): per head, K and V packed by dims (for S = Q K^T,
// dP = dO V^T), K by rows (for dQ += dS K), and Q and dO transposed, pairs of queries per dim,
// so that dV and dK accumulate transposed: dV^T += dO^T P, dK^T += Q^T dS (P and dS packed by
// row pairs per tile), over every query head of the key/value head's group.
static void attention_backward_bf16(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                                    const float* lse, float* scratch, int64_t per_thread, int64_t B,
                                    int64_t T, Heads hd) {
  const int64_t NH = hd.NH, HS = hd.HS, C = hd.C(), C3 = hd.W(), H2 = HS / 2, G = NH / hd.NKV;
  // Row strides of the transposed operands, one cache line past a multiple of 1 KB: 16 tile rows
  // at a 2 or 4 KB stride fall in one L1 set, more than its ways.
  const int64_t tiles = (T + kTile - 1) / kTile, T2 = tiles * kTile / 2, Tp = tiles * kTile;
  const int64_t T2s = T2 + 16, Tps = Tp + 16;
  const int64_t packed = T2s * HS;  // uint32s of one packing of a head
  const float scale = 1.0f / std::sqrt(float(HS));
#pragma omp parallel
  {
    amx_begin();
    uint32_t* kd = reinterpret_cast<uint32_t*>(scratch + int64_t(omp_get_thread_num()) * per_thread);
    uint32_t* vd = kd + packed;   // V by dims
    uint32_t* kr = vd + packed;   // K by rows
    uint32_t* qt = kr + packed;   // Q^T: qt[d·T2s + ip] = (q[2ip][d], q[2ip+1][d])
    uint32_t* ot = qt + packed;   // dO^T
    uint32_t* tmp = ot + packed;  // a by-row packing before its transpose
    uint32_t* pb = tmp + packed;  // (T2, 64) P of a key tile by row pairs, every query tile
    uint32_t* sb = pb + T2 * kTile;             // (T2, 64) dS by row pairs
    uint32_t* sr = sb + T2 * kTile;             // (64, 32) dS rows in key pairs
    float* dq = reinterpret_cast<float*>(sr + kTile * kTile / 2);  // (tiles·64, HS)
    float* Dv = dq + tiles * kTile * HS;        // (tiles·64) rowsum(dO * O)
    float* sp = Dv + tiles * kTile;             // (64, 64) S
    float* dp_ = sp + kTile * kTile;            // (64, 64) dP
    float* dvt = dp_ + kTile * kTile;           // (HS, Tps) dV^T
    float* dkt = dvt + HS * Tps;                // (HS, Tps) dK^T
    bf16* qc = reinterpret_cast<bf16*>(dkt + HS * Tps);  // (T, HS) the head's Q rows, contiguous
    bf16* oc = qc + T * HS;                              // (T, HS) and dO's
    auto transpose = [&](uint32_t* dst) {  // tmp (T2, HS) -> dst (HS, T2s), 16 x 16 at a time
      for (int64_t i0 = 0; i0 < T2; i0 += 16)
        for (int64_t d0 = 0; d0 < HS; d0 += 16) {
          __m512i r[16];
          for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_si512(tmp + (i0 + i) * HS + d0);
          transpose16x16(r);
          for (int i = 0; i < 16; i++) _mm512_storeu_si512(dst + (d0 + i) * T2s + i0, r[i]);
        }
    };
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t b = 0; b < B; b++)
      for (int64_t kv = 0; kv < hd.NKV; kv++) {
        const bf16* rows = qkv + b * T * C3;
        pack_by_dim(kd, rows + hd.k(kv * G), T, HS, C3);
        pack_by_dim(vd, rows + hd.v(kv * G), T, HS, C3);
        pack_by_row(kr, rows + hd.k(kv * G), T, HS, C3);
        for (int64_t h = kv * G; h < (kv + 1) * G; h++) {
          const bf16* base = rows + hd.q(h);
          const bf16* dbase = dout + b * T * C + h * HS;
          const bf16* obase = out + b * T * C + h * HS;
          const float* L = lse + (b * NH + h) * T;
          for (int64_t t = 0; t < T; t++) {
            std::memcpy(qc + t * HS, base + t * C3, sizeof(bf16) * HS);
            std::memcpy(oc + t * HS, dbase + t * C, sizeof(bf16) * HS);
          }
          pack_by_row(tmp, qc, T, HS, HS);
          transpose(qt);
          pack_by_row(tmp, oc, T, HS, HS);
          transpose(ot);
          rowsum_dout_out(Dv, dbase, obase, T, HS, C);
          for (int64_t kt = 0; kt < tiles; kt++) {
            const int64_t k0 = kt * kTile, nk = std::min(kTile, T - k0);
            const __m512i* kdt = reinterpret_cast<const __m512i*>(kd + kt * H2 * kTile);
            const __m512i* vdt = reinterpret_cast<const __m512i*>(vd + kt * H2 * kTile);
            for (int64_t q0 = k0; q0 < T; q0 += kTile) {  // the query tiles that see this key tile
              const int64_t nq = std::min(kTile, T - q0);
              causal_groups(q0 == k0, nq, [&](int64_t r0, int64_t nr, int64_t nb) {
                const int64_t q = q0 + r0;
                dp(nr, nb, sp + r0 * kTile, kTile, reinterpret_cast<const uint32_t*>(qc + q * HS), H2, kdt, 4, H2, false);  // S
                dp(nr, nb, dp_ + r0 * kTile, kTile, reinterpret_cast<const uint32_t*>(oc + q * HS), H2, vdt, 4, H2, false);  // dP
              });
              // P = exp(S scale - LSE), dS = P (dP - D) scale, 0 where masked; two rows at a time,
              // so that P and dS go by row pairs (pb, sb) and dS by key pairs (sr) from registers
              uint32_t* pbq = pb + (q0 - k0) / 2 * kTile;
              uint32_t* sbq = sb + (q0 - k0) / 2 * kTile;
              for (int64_t ip = 0; ip < kTile / 2; ip++) {
                __m512 pv[2][kTile / 16], dv[2][kTile / 16];
                for (int e = 0; e < 2; e++) {
                  const int64_t i = 2 * ip + e;
                  const int64_t valid = i < nq ? std::clamp<int64_t>(q0 + i - k0 + 1, 0, nk) : 0;
                  const float li = i < nq ? L[q0 + i] : 0.0f, di = i < nq ? Dv[q0 + i] : 0.0f;
                  for (int c = 0; c < kTile / 16; c++) {
                    const __mmask16 keep = __mmask16((uint32_t(1) << std::clamp<int64_t>(valid - 16 * c, 0, 16)) - 1);
                    const __m512 x = _mm512_fmsub_ps(_mm512_maskz_loadu_ps(keep, sp + i * kTile + 16 * c),
                                                     _mm512_set1_ps(scale), _mm512_set1_ps(li));
                    pv[e][c] = _mm512_maskz_mov_ps(keep, exp_ps(x));
                    dv[e][c] = _mm512_mul_ps(_mm512_mul_ps(pv[e][c], _mm512_sub_ps(_mm512_maskz_loadu_ps(keep, dp_ + i * kTile + 16 * c),
                                                                                  _mm512_set1_ps(di))), _mm512_set1_ps(scale));
                  }
                  for (int c = 0; c < kTile / 16; c += 2)
                    _mm512_storeu_si512(sr + i * kTile / 2 + 8 * c, (__m512i)_mm512_cvtne2ps_pbh(dv[e][c + 1], dv[e][c]));
                }
                for (int c = 0; c < kTile / 16; c++) {
                  _mm512_storeu_si512(pbq + (ip * 4 + c) * 16, interleave16((__m256i)_mm512_cvtneps_pbh(pv[0][c]),
                                                                           (__m256i)_mm512_cvtneps_pbh(pv[1][c])));
                  _mm512_storeu_si512(sbq + (ip * 4 + c) * 16, interleave16((__m256i)_mm512_cvtneps_pbh(dv[0][c]),
                                                                           (__m256i)_mm512_cvtneps_pbh(dv[1][c])));
                }
              }
              causal_groups(q0 == k0, nq, [&](int64_t r0, int64_t nr, int64_t nb) {  // dQ (+)= dS K: key tile 0 writes
                dp(nr, HS / 16, dq + (q0 + r0) * HS, HS, sr + r0 * kTile / 2, kTile / 2,
                   reinterpret_cast<const __m512i*>(kr + kt * kTile / 2 * HS), HS / 16, 8 * nb, kt > 0);
              });
            }
            // over every query tile at once: C stays in the tile registers the whole reduction
            const __m512i* pbv = reinterpret_cast<const __m512i*>(pb);
            const __m512i* sbv = reinterpret_cast<const __m512i*>(sb);
            const bool more = h > kv * G;  // the group's first query head writes, the others add
            dp(HS, 4, dvt + k0, Tps, ot + k0 / 2, T2s, pbv, 4, (Tp - k0) / 2, more);  // dV^T += dO^T P
            dp(HS, 4, dkt + k0, Tps, qt + k0 / 2, T2s, sbv, 4, (Tp - k0) / 2, more);  // dK^T += Q^T dS
          }
          store_rows(dqkv + b * T * C3 + hd.q(h), dq, T, HS, C3, HS, 1);
        }
        store_rows(dqkv + b * T * C3 + hd.k(kv * G), dkt, T, HS, C3, 1, Tps);  // transposed
        store_rows(dqkv + b * T * C3 + hd.v(kv * G), dvt, T, HS, C3, 1, Tps);
      }
  }
}
#endif

template <class S>
static void attention_backward_t(S* dqkv, const S* dout, const S* qkv, const S* out,
                                 const float* lse, float* scratch, int64_t per_thread, int64_t B, int64_t T, Heads hd) {
  const int64_t NH = hd.NH, HS = hd.HS, C = hd.C(), C3 = hd.W(), G = NH / hd.NKV;
  const int64_t Tp = padded(T);
  const float scale = 1.0f / std::sqrt(float(HS));
#pragma omp parallel
  {
    float* dq = scratch + int64_t(omp_get_thread_num()) * per_thread;  // (T, HS) fp32 accumulator
    float* qall = dq + T * HS;                                         // (T, HS) all queries
    float* dob = qall + T * HS;                                        // (T, HS) all of dO
    float* dkall = dob + T * HS;                                       // (T, HS) the group's dK
    float* dvall = dkall + T * HS;                                     // (T, HS) and dV
    float* kr = dvall + T * HS;                                        // (T, HS) K
    float* vr = kr + T * HS;                                           // (T, HS) V
    float* kt = vr + T * HS;                                           // (Tp, HS) K^T by tiles
    float* vt = kt + Tp * HS;                                          // (Tp, HS) V^T by tiles
    float* Dv = vt + Tp * HS;                                          // (T) rowsum(dO * O)
    float* p = Dv + T;                                                 // (kTile, kTile)
    float* ds = p + kTile * kTile;                                     // (kTile, kTile)
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t b = 0; b < B; b++)
      for (int64_t kv = 0; kv < hd.NKV; kv++) {
        const S* rows = qkv + b * T * C3;
        load_tile(kr, rows + hd.k(kv * G), T, HS, C3);
        load_tile(vr, rows + hd.v(kv * G), T, HS, C3);
        if (own_head(HS)) {
          load_by_dim(kt, kr, T, HS);
          load_by_dim(vt, vr, T, HS);
        }
        std::memset(dkall, 0, sizeof(float) * T * HS);
        std::memset(dvall, 0, sizeof(float) * T * HS);
        for (int64_t h = kv * G; h < (kv + 1) * G; h++) {
          const S* dbase = dout + b * T * C + h * HS;
          const S* obase = out + b * T * C + h * HS;
          const float* L = lse + (b * NH + h) * T;
          std::memset(dq, 0, sizeof(float) * T * HS);
          load_tile(qall, rows + hd.q(h), T, HS, C3);
          load_tile(dob, dbase, T, HS, C);
          rowsum_dout_out(Dv, dbase, obase, T, HS, C);
          for (int64_t k0 = 0; k0 < T; k0 += kTile) {
            const int64_t nk = std::min(kTile, T - k0);
            float* dk = dkall + k0 * HS;
            float* dv = dvall + k0 * HS;
            for (int64_t q0 = k0; q0 < T; q0 += kTile) {  // the query tiles that see this key tile
              const int64_t nq = std::min(kTile, T - q0);
              const float* q = qall + q0 * HS;
              const float* d = dob + q0 * HS;
              const bool own = own_tile(HS, nq, nk);
              tile_xyt(own, q0 == k0, nq, nk, HS, q, kt + k0 * HS, kr + k0 * HS, p);  // S = Q K^T
              for (int64_t i = 0; i < nq; i++) {  // P = exp(S * scale - LSE), causal mask
                const int64_t valid = std::clamp<int64_t>(q0 + i - k0 + 1, 0, nk);
                float* row = p + i * kTile;
                for (int64_t j = 0; j < valid; j++) row[j] = std::exp(row[j] * scale - L[q0 + i]);
                for (int64_t j = valid; j < nk; j++) row[j] = 0.0f;
              }
              tile_add_pty(own, q0 == k0, nq, nk, HS, p, d, dv);  // dV += P^T dO
              tile_xyt(own, false, nq, nk, HS, d, vt + k0 * HS, vr + k0 * HS, ds);  // dP = dO V^T, every key
              for (int64_t i = 0; i < nq; i++)  // dS = P (dP - D) scale
                for (int64_t j = 0; j < nk; j++)
                  ds[i * kTile + j] = p[i * kTile + j] * (ds[i * kTile + j] - Dv[q0 + i]) * scale;
              tile_add_py(own, q0 == k0, nq, nk, HS, ds, kr + k0 * HS, dq + q0 * HS);  // dQ += dS K
              tile_add_pty(own, q0 == k0, nq, nk, HS, ds, q, dk);  // dK += dS^T Q
            }
          }
          store_rows(dqkv + b * T * C3 + hd.q(h), dq, T, HS, C3, HS, 1);
        }
        store_rows(dqkv + b * T * C3 + hd.k(kv * G), dkall, T, HS, C3, HS, 1);
        store_rows(dqkv + b * T * C3 + hd.v(kv * G), dvall, T, HS, C3, HS, 1);
      }
  }
}

const char* cpu_bf16_isa() {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
  if (amx_ready() && dnnl_get_effective_cpu_isa() >= dnnl_cpu_isa_avx512_core_amx) return "amx";
#endif
#if defined(__AVX512BF16__)
  return "avx512_bf16";
#else
  return "fp32";
#endif
}

void CpuBackend::attention_forward(void* out, float* lse, const void* qkv, int64_t B, int64_t T,
                                   int64_t NH, int64_t NKV, int64_t HS, DType dt) {
  const Heads hd{NH, NKV, HS};
#if defined(__AVX512BF16__)
  if (dt == DType::bf16 && HS % 16 == 0) {
    const int64_t tiles = (T + kTile - 1) / kTile;
    const int64_t per_thread = tiles * kTile * HS + kTile * kTile / 2 + kTile * HS + kTile * kTile + 2 * kTile + kTile * HS / 2 + 16;
    attention_forward_bf16(static_cast<bf16*>(out), lse, static_cast<const bf16*>(qkv), partials(per_thread),
                           per_thread, B, T, hd);
    return;
  }
#endif
  const int64_t Tp = padded(T), per_thread = (Tp + 2 * T + 2 * kTile) * HS + kTile * kTile + 2 * kTile;
  dispatch(dt, [&](auto t) {
    using S = decltype(t);
    attention_forward_t(static_cast<S*>(out), lse, static_cast<const S*>(qkv), partials(per_thread), per_thread, B, T, hd);
  });
}

void CpuBackend::attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out,
                                    const float* lse, int64_t B, int64_t T, int64_t NH, int64_t NKV,
                                    int64_t HS, DType dt) {
  const Heads hd{NH, NKV, HS};
#if defined(__AVX512BF16__)
  if (dt == DType::bf16 && HS % 16 == 0) {
    const int64_t tiles = (T + kTile - 1) / kTile;
    const int64_t per_thread = 6 * (tiles * kTile / 2 + 16) * HS + tiles * kTile * kTile + kTile * kTile / 2 + tiles * kTile * (HS + 1) +
                               2 * kTile * kTile + 2 * HS * (tiles * kTile + 16) + T * HS + 16;
    attention_backward_bf16(static_cast<bf16*>(dqkv), static_cast<const bf16*>(dout), static_cast<const bf16*>(qkv),
                            static_cast<const bf16*>(out), lse, partials(per_thread), per_thread, B, T, hd);
    return;
  }
#endif
  const int64_t Tp = padded(T), per_thread = (7 * T + 2 * Tp) * HS + T + 2 * kTile * kTile;
  dispatch(dt, [&](auto t) {
    using S = decltype(t);
    attention_backward_t(static_cast<S*>(dqkv), static_cast<const S*>(dout), static_cast<const S*>(qkv),
                         static_cast<const S*>(out), lse, partials(per_thread), per_thread, B, T, hd);
  });
}

// One query against a key/value cache: per head, the scores, their softmax, the weighted values.
void CpuBackend::attention_decode(void* out, const void* q, const void* k, const void* v, int64_t T, int64_t NH,
                                  int64_t NKV, int64_t HS, DType dt, float* scratch) {
  dispatch(dt, [&](auto t) {
    using S = decltype(t);
    const S *Q = static_cast<const S*>(q), *K = static_cast<const S*>(k), *V = static_cast<const S*>(v);
    S* O = static_cast<S*>(out);
    const int64_t KW = NKV * HS, group = NH / NKV;
    const float scale = 1.0f / std::sqrt(float(HS));
#pragma omp parallel for schedule(static)
    for (int64_t h = 0; h < NH; h++) {
      const S* qh = Q + h * HS;
      const int64_t kv = (h / group) * HS;
      float* p = scratch + h * T;
      float m = -INFINITY;
      for (int64_t j = 0; j < T; j++) {
        float s = 0.0f;
        for (int64_t d = 0; d < HS; d++) s += to_f32(qh[d]) * to_f32(K[j * KW + kv + d]);
        p[j] = s * scale;
        m = std::max(m, p[j]);
      }
      float sum = 0.0f;
      for (int64_t j = 0; j < T; j++) sum += p[j] = std::exp(p[j] - m);
      for (int64_t d = 0; d < HS; d++) {
        float acc = 0.0f;
        for (int64_t j = 0; j < T; j++) acc += p[j] * to_f32(V[j * KW + kv + d]);
        O[h * HS + d] = from_f32<S>(acc / sum);
      }
    }
  });
}

}  // namespace frugal
