// The CPU backend: GEMMs through oneDNN (dnnl_sgemm for fp32, chosen by measurement in
// bench/RESULTS.md; the matmul primitive for bf16, cached per shape; fp16, and bf16 without
// AVX-512, through fp32 conversions, as oneDNN 2.6 has no such CPU matmul), OpenMP + AVX-512
// loops for the rest (plain loops the compiler vectorises where the CPU lacks them).
// One op family per file; kernels are templated on the storage type and compute in fp32.
// Reductions across rows go through per-thread partials summed in thread order, so results
// are bit-identical for a given thread count.
#pragma once
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "backend/backend.h"

namespace frugal {

class CpuBackend final : public Backend {
 public:
  CpuBackend();
  ~CpuBackend() override;
  const char* name() const override { return "cpu"; }
  bool native_gemm(DType d) const override;
  size_t packed_bytes(bool trans_b, int64_t K, int64_t N, DType ab) const override;
  void matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const void* A,
              int64_t lda, const void* B, int64_t ldb, void* C, int64_t ldc, DType ab, DType c,
              const float* bias, bool accumulate, PackedB* packed = nullptr) override;
  void linear_forward(void* out, const void* inp, const void* weight, const float* bias,
                      int64_t BT, int64_t IC, int64_t OC, DType dt) override;
  void linear_backward(void* dinp, float* dweight, float* dbias, const void* dout,
                       const void* inp, const void* weight, int64_t BT, int64_t IC, int64_t OC,
                       DType dt) override;
  void layernorm_forward(void* out, float* mean, float* rstd, const float* inp, const float* w,
                         const float* b, int64_t N, int64_t C, DType dt) override;
  void layernorm_backward(float* dinp, float* dw, float* db, const void* dout, const float* inp,
                          const float* w, const float* mean, const float* rstd, int64_t N,
                          int64_t C, DType dt, void* dinp_copy) override;
  void rmsnorm_forward(void* out, float* rstd, const float* inp, const float* w, int64_t N, int64_t C,
                       float eps, DType dt) override;
  void rmsnorm_backward(float* dinp, float* dw, const void* dout, const float* inp, const float* w,
                        const float* rstd, int64_t N, int64_t C, DType dt, void* dinp_copy) override;
  void swiglu_forward(void* out, const void* gu, int64_t N, int64_t H, DType dt) override;
  void swiglu_backward(void* dgu, const void* gu, const void* dout, int64_t N, int64_t H, DType dt) override;
  void rope(void* x, const float* cos, const float* sin, int64_t B, int64_t T, int64_t stride,
            int64_t num_heads, int64_t HS, bool inverse, DType dt) override;
  void gelu_forward(void* out, const void* inp, int64_t n, DType dt) override;
  void gelu_backward(void* dinp, const void* inp, const void* dout, int64_t n, DType dt) override;
  void attention_forward(void* out, float* lse, const void* qkv, int64_t B, int64_t T,
                         int64_t NH, int64_t NKV, int64_t HS, DType dt) override;
  void attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out,
                          const float* lse, int64_t B, int64_t T, int64_t NH, int64_t NKV,
                          int64_t HS, DType dt) override;
  void attention_decode(void* out, const void* q, const void* k, const void* v, int64_t T, int64_t NH, int64_t NKV,
                        int64_t HS, DType dt, float* scratch) override;
  void embedding_forward(float* out, const int32_t* tokens, const void* wte, const void* wpe,
                         int64_t B, int64_t T, int64_t C, DType wdt) override;
  void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                          int64_t B, int64_t T, int64_t C) override;
  void add(float* out, const float* a, const void* b, int64_t n, DType dt) override;
  void cast(void* dst, const float* src, int64_t n, DType dt) override;
  void dequantize(void* out, const QuantView& q, int64_t row0, int64_t rows, int64_t col0, int64_t cols,
                  DType dt) override;
  void scale(void* x, float s, int64_t n, DType dt) override;
  void dropout(void* out, const void* in, int64_t n, float p, uint64_t seed, bool accumulate, DType dt) override;
  void softmax_xent(void* logits, float* losses, const int32_t* targets, int64_t N, int64_t V,
                    int64_t Vp, float grad_scale, DType dt) override;
  void adamw(const std::vector<AdamWSpan>& spans, const AdamWArgs& a, DType copy_dt) override;
  using Backend::sum_squares;
  double sum_squares(const std::vector<FloatSpan>& spans) override;
  void fill_zero(float* x, int64_t n) override;
  double sum(const float* x, int64_t n) override;
  void copy(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);  // an empty shard's slice may be null
  }
  void synchronize() override {}

 private:
  struct OneDnn;                 // engine, stream and the cache of bf16 matmul primitives
  std::unique_ptr<OneDnn> dnnl_;
  std::vector<float> wide_a_, wide_b_, wide_c_;  // fp32 staging for widened 16-bit GEMMs (grow once)
  std::vector<bf16> dw_x_;                      // a weight gradient's X, packed a chunk at a time (grows once)
  std::vector<double> sq_partials_;            // per-chunk sums of squares (grow once)
  std::vector<float> partials_;                // per-thread reduction scratch (grows once)
  // On a cache line (64 bytes), as is each thread's share where per_thread is a multiple of 16:
  // AMX tile rows that straddle two lines are several times slower.
  float* partials(int64_t per_thread) {
    size_t need = size_t(per_thread) * omp_get_max_threads() + 16;
    if (partials_.size() < need) partials_.resize(need);
    return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(partials_.data()) + 63) & ~uintptr_t(63));
  }
};

// Row-major fp32 GEMM through dnnl_sgemm: C(M,N) = op(A) op(B) + beta C. Single-threaded when
// called inside an OpenMP parallel region.
void sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// fp32 attention's tile products (attention.cpp): C(M, N) (+ C where acc) = A(M, K) B(K, N), A's
// element (r, k) at a[r·ar + k·ak], B row-major; tri: A(r, k) = 0 for k < r. The bits of
// dnnl_sgemm, on frugal's own AVX-512 kernel where N % 16 == 0; dnnl_sgemm itself otherwise.
void attention_mm(int64_t M, int64_t N, int64_t K, const float* a, int64_t ar, int64_t ak, const float* b,
                  int64_t ldb, bool acc, float* c, int64_t ldc, bool tri);

#if defined(__AVX512BW__)
// (a[d], b[d]) for d in 0..15: two rows' 16 bf16 values interleaved into 16 pairs
inline __m512i interleave16(__m256i a, __m256i b) {
  const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                      39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  return _mm512_permutex2var_epi16(_mm512_castsi256_si512(a), lo, _mm512_castsi256_si512(b));
}

// The 16 x 16 matrix of 32-bit values in r[0..15] (row i in r[i]), transposed in place: at each
// level b = 8, 4, 2, 1 the off-diagonal b x b blocks of every 2b x 2b block trade places.
template <int b>
inline void transpose_level(__m512i r[16]) {
  constexpr auto idx = [](bool high) {
    std::array<int, 16> v{};
    for (int j = 0; j < 16; j++) v[j] = high ? (j & b ? 16 + j : j + b) : (j & b ? 16 + j - b : j);
    return v;
  };
  static constexpr std::array<int, 16> lo = idx(false), hi = idx(true);
  const __m512i il = _mm512_loadu_si512(lo.data()), ih = _mm512_loadu_si512(hi.data());
  for (int i = 0; i < 16; i++)
    if (!(i & b)) {
      const __m512i x = r[i], y = r[i + b];
      r[i] = _mm512_permutex2var_epi32(x, il, y);
      r[i + b] = _mm512_permutex2var_epi32(x, ih, y);
    }
}

inline void transpose16x16(__m512i r[16]) {
  transpose_level<8>(r);
  transpose_level<4>(r);
  transpose_level<2>(r);
  transpose_level<1>(r);
}
#endif

#if defined(__AVX512BF16__)
// How a bf16 pair product's sums meet C: stored (C = S), chained on from C (S starts at C), or
// summed from zero and then added (C += S: oneDNN's sum post-op, which matmul's weight gradient
// keeps).
enum class Sum { store, chain, add };

// C(rows, 16·NB) (+)= A(rows, 2P) B(2P, 16·NB) in bf16 pairs: A's row r holds P pairs (uint32)
// at a + r·lda; B is P rows of NB vectors, each 16 columns x 2 (a pair of the reduction dim),
// row p at b + p·ldb vectors. Sums in fp32, each element's in one chain in pair order. S a
// template argument: with a run-time choice between loading C and zeros, gcc kept the sums on
// the stack outside the loop (48 spills and reloads a call: P = 32, 177 -> 199 GFLOP/s a core in
// L1 without them).
template <int R, int NB, Sum S>
inline void dp_block(float* c, int64_t ldc, const uint32_t* a, int64_t lda, const __m512i* b, int64_t ldb, int64_t P) {
  __m512 s[R][NB];
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 4
    for (int n = 0; n < NB; n++) s[r][n] = S == Sum::chain ? _mm512_loadu_ps(c + r * ldc + 16 * n) : _mm512_setzero_ps();
  if constexpr (S == Sum::add)  // C is read at the end: from memory by then
    for (int r = 0; r < R; r++)
      for (int n = 0; n < NB; n++) _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + 16 * n), _MM_HINT_T0);
  for (int64_t p = 0; p < P; p++) {
    __m512bh bv[NB];
#pragma GCC unroll 4
    for (int n = 0; n < NB; n++) {
      bv[n] = (__m512bh)_mm512_loadu_si512(b + p * ldb + n);
      asm("" : "+v"(bv[n]));  // in a register: gcc would load it again for each of the R rows
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(int(a[r * lda + p]));
#pragma GCC unroll 4
      for (int n = 0; n < NB; n++) s[r][n] = _mm512_dpbf16_ps(s[r][n], av, bv[n]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 4
    for (int n = 0; n < NB; n++) {
      float* cr = c + r * ldc + 16 * n;
      _mm512_storeu_ps(cr, S == Sum::add ? _mm512_add_ps(_mm512_loadu_ps(cr), s[r][n]) : s[r][n]);
    }
}

template <int NB, Sum S>
inline void dp_rows(int64_t rows, float* c, int64_t ldc, const uint32_t* a, int64_t lda, const __m512i* b, int64_t ldb,
                    int64_t P) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) dp_block<4, NB, S>(c + r * ldc, ldc, a + r * lda, lda, b, ldb, P);
  for (; r < rows; r++) dp_block<1, NB, S>(c + r * ldc, ldc, a + r * lda, lda, b, ldb, P);
}

template <Sum S>
inline void dp_cols(int64_t rows, int64_t nb, float* c, int64_t ldc, const uint32_t* a, int64_t lda, const __m512i* b,
                    int64_t ldb, int64_t P) {
  for (int64_t n0 = 0; n0 < nb; n0 += 4) {
    float* cn = c + 16 * n0;
    const __m512i* bn = b + n0;
    switch (std::min<int64_t>(4, nb - n0)) {
      case 4: dp_rows<4, S>(rows, cn, ldc, a, lda, bn, ldb, P); break;
      case 3: dp_rows<3, S>(rows, cn, ldc, a, lda, bn, ldb, P); break;
      case 2: dp_rows<2, S>(rows, cn, ldc, a, lda, bn, ldb, P); break;
      default: dp_rows<1, S>(rows, cn, ldc, a, lda, bn, ldb, P); break;
    }
  }
}
#endif

// Sum per-thread partial rows p(nt, n) into acc(n) (+=), in thread order.
inline void reduce_partials(float* acc, const float* p, int nt, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    float s = 0.0f;
    for (int t = 0; t < nt; t++) s += p[t * n + i];
    acc[i] += s;
  }
}

}  // namespace frugal
