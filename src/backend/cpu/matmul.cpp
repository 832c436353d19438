// GEMMs and linear layers. fp32: dnnl_sgemm (row-major, oneDNN's gemm:jit). bf16: oneDNN's
// matmul primitive (brg kernels on AVX512-BF16 / AMX), bias and accumulation fused, primitives
// cached by shape; a weight gradient on AVX512-BF16 without AMX on frugal's own kernel, in
// oneDNN's summation order. fp16, and bf16 on a CPU without AVX-512 (where oneDNN 2.6 has no bf16
// matmul): operands widened to fp32 and dnnl_sgemm, the same products summed in fp32.
#include <oneapi/dnnl/dnnl.hpp>

#include <cstring>
#include <optional>

#include "backend/cpu/cpu.h"
#include "core/core.h"

namespace frugal {

// A matmul primitive of C = A B (+ bias), in oneDNN 2.x's API (Debian's) or 3.x's (PyPI's).
static dnnl::matmul::primitive_desc matmul_pd(const dnnl::engine& eng, const dnnl::memory::desc& a,
                                              const dnnl::memory::desc& b, const dnnl::memory::desc& c,
                                              const dnnl::memory::desc* bias = nullptr,
                                              const dnnl::primitive_attr& attr = {}) {
#if DNNL_VERSION_MAJOR >= 3
  return bias ? dnnl::matmul::primitive_desc(eng, a, b, *bias, c, attr) : dnnl::matmul::primitive_desc(eng, a, b, c, attr);
#else
  auto d = bias ? dnnl::matmul::desc(a, b, *bias, c) : dnnl::matmul::desc(a, b, c);
  return dnnl::matmul::primitive_desc(d, attr, eng);
#endif
}

struct CpuBackend::OneDnn {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  using Key = std::tuple<bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, bool, bool, bool>;
  // A primitive, and where it takes B in oneDNN's blocked layout: the reorder into it and the
  // blocked copy (one per shape, rewritten at every call: B may have changed since), or the
  // caller's copy (PackedB, kept across calls).
  struct Entry {
    dnnl::matmul prim;
    std::optional<dnnl::reorder> to_blocked;
    bool packed = false;  // into blocked (or the caller's copy) by pack_blocked instead
    bool theirs = false;  // B's blocked copy is the caller's PackedB
    dnnl::memory blocked;
  };
  std::map<Key, Entry> cache;
  bool bf16 = [this] {  // whether oneDNN has a bf16 matmul on this CPU
    using dt = dnnl::memory::data_type;
    const dnnl::memory::desc d({16, 16}, dt::bf16, dnnl::memory::format_tag::ab);
    try {
      matmul_pd(eng, d, d, d);
      return true;
    } catch (const dnnl::error&) {
      return false;
    }
  }();
};

CpuBackend::CpuBackend() : dnnl_(std::make_unique<OneDnn>()) {}
CpuBackend::~CpuBackend() = default;
bool CpuBackend::native_gemm(DType d) const { return d == DType::f32 || (d == DType::bf16 && dnnl_->bf16); }

// Whether a B that oneDNN wants in weights layout w is copied into it by pack_blocked (below).
static bool packable(const dnnl::memory::desc& w) {
#if defined(__AVX512BW__)
  const dnnl::memory::dims d = w.dims();
  return d.size() == 2 && d[0] % 32 == 0 && d[1] % 64 == 0 &&
         w == dnnl::memory::desc(d, dnnl::memory::data_type::bf16, dnnl::memory::format_tag::BA16a64b2a);
#else
  return false;
#endif
}

// A caller's packed copy (PackedB) of a bf16 B, where pack_blocked writes oneDNN's layout for it.
size_t CpuBackend::packed_bytes(bool, int64_t K, int64_t N, DType ab) const {
  if (ab != DType::bf16 || !dnnl_->bf16) return 0;
  using dt = dnnl::memory::data_type;
  const dnnl::memory::desc a({64, K}, dt::bf16, dnnl::memory::format_tag::ab), c({64, N}, dt::bf16, dnnl::memory::format_tag::ab);
  const dnnl::memory::desc w = matmul_pd(dnnl_->eng, a, {{K, N}, dt::bf16, dnnl::memory::format_tag::any}, c).weights_desc();
  return packable(w) ? w.get_size() : 0;
}

void sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                  const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  dnnl_status_t s = dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
  FRUGAL_CHECK(s == dnnl_success, "dnnl_sgemm({}x{}x{}) failed with status {}", M, N, K, int(s));
}

template <class T>
static void widen(std::vector<float>& dst, const void* src, int64_t rows, int64_t cols, int64_t ld) {
  dst.resize(size_t(rows * cols));
  const T* s = static_cast<const T*>(src);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) dst[r * cols + c] = to_f32(s[r * ld + c]);
}

#if defined(__AVX512BW__)
// oneDNN's blocked layout for B on AMX and AVX512-BF16, BA16a64b2a: 32 x 64 blocks, N-block
// major, each 16 pairs of K rows by 64 columns: (k, n) at (n/64)·64K + (k/32)·2048 + (k%32/2)·128
// + (n%64)·2 + k%2. oneDNN's own reorder into it moves 5-7 GB/s here; these copies run near
// memory bandwidth, writing the same bytes. Both need K % 32 == 0 and N % 64 == 0.

static inline __m512i interleave_pairs(const bf16* a, const bf16* b) {
  return interleave16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a)),
                      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)));
}

// B (K x N) into BA16a64b2a at dst: from B's rows (row stride ld), or where tb from B^T's
// (N x K): there a pair of K is one 32-bit word, and 16 x 16 blocks of words are transposed.
static void pack_blocked(bf16* dst, const bf16* src, int64_t K, int64_t N, int64_t ld, bool tb) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t nb = 0; nb < N / 64; nb++)
    for (int64_t kq = 0; kq < K / 32; kq++) {  // one 32 x 64 block: 4 KB of dst
      bf16* d = dst + nb * 64 * K + kq * 2048;
      for (int64_t n16 = 0; n16 < 4; n16++) {
        if (!tb) {
          const bf16* r0 = src + 32 * kq * ld + 64 * nb + 16 * n16;
          for (int64_t kp = 0; kp < 16; kp++)
            _mm512_storeu_si512(d + kp * 128 + 32 * n16, interleave_pairs(r0 + 2 * kp * ld, r0 + (2 * kp + 1) * ld));
        } else {
          __m512i r[16];  // r[i]: the 16 pairs of column n = 64 nb + 16 n16 + i
          for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_si512(src + (64 * nb + 16 * n16 + i) * ld + 32 * kq);
          transpose16x16(r);  // r[kp]: pair kp of the 16 columns
          for (int64_t kp = 0; kp < 16; kp++) _mm512_storeu_si512(d + kp * 128 + 32 * n16, r[kp]);
        }
      }
    }
}
#endif

// A weight gradient dW (+)= dY^T X reduces over the tokens; oneDNN runs it with A transposed
// at 1.2-1.3 TFLOP/s on gpt2's shapes at K = 4096, but at 1.5-2.3 over 512 tokens at a time
// with X in its blocked layout (below): so K goes in chunks of 512, summed onto C in fp32.
constexpr int64_t kDwChunk = 512;

#if defined(__AVX512BF16__) && !defined(__AMX_BF16__)
// The weight gradient on frugal's own kernel where oneDNN's is AVX512-BF16's (not AMX's), with
// oneDNN's bits: it sums each element of a chunk from zero in one vdpbf16ps chain in token order,
// then adds that to C (Matmul.WeightGradientHasOneDnnsBits; with dY strided it splits a chunk, so
// there oneDNN stays). Each chunk's X goes into pairs of tokens by 64 columns once (pack_blocked);
// a thread takes 32 columns of dY at a time (any thread: the bits do not depend on which) into
// rows of token pairs on its stack and multiplies them by every block of X, fetching C's rows while
// it sums. Interleaved with cold caches, gpt2's weight gradients ran 2-9 % faster than oneDNN's
// in most runs, smollm-135m's at about its speed (RESULTS, 2026-12-04).
template <Sum S>
static void dw_rows(int64_t rows, float* c, int64_t ldc, const uint32_t* a, int64_t P, const __m512i* b) {
  int64_t r = 0;
  for (; rows - r >= 10 || rows - r == 6; r += 6) dp_block<6, 4, S>(c + r * ldc, ldc, a + r * P, P, b, 4, P);
  dp_rows<4, S>(rows - r, c + r * ldc, ldc, a + r * P, P, b, 4, P);  // 32 rows: 6 x 4, then 4 x 2
}

static void weight_gradient(std::vector<bf16>& xp, int64_t M, int64_t N, int64_t K, const bf16* dy, const bf16* x,
                            float* C, bool accumulate) {
  for (int64_t k0 = 0; k0 < K; k0 += kDwChunk) {
    const int64_t kc = std::min(kDwChunk, K - k0), P = kc / 2;
    xp.resize(size_t(kc * N));
    pack_blocked(xp.data(), x + k0 * N, kc, N, N, false);
    const __m512i* xb = reinterpret_cast<const __m512i*>(xp.data());
    const bf16* y = dy + k0 * M;
    const bool add = accumulate || k0 > 0;
#pragma omp parallel for schedule(dynamic)
    for (int64_t m0 = 0; m0 < M; m0 += 32) {
      alignas(64) uint32_t a[32 * kDwChunk / 2];  // row j: column m0 + j of dY, P pairs of tokens
      const int64_t rows = std::min<int64_t>(32, M - m0);
      const __mmask32 cols = __mmask32((uint64_t(1) << rows) - 1);
      for (int64_t p0 = 0; p0 < P; p0 += 16) {
        __m512i lo[16], hi[16];  // the pair of tokens p0 + i, for columns m0 .. m0 + 15 and the next 16
        for (int i = 0; i < 16; i++) {  // each line of dY read once (with a stride of 2^k lines they
          const bf16* t = y + 2 * (p0 + i) * M + m0;  // would not stay in cache for a second read)
          const __m512i r0 = _mm512_maskz_loadu_epi16(cols, t), r1 = _mm512_maskz_loadu_epi16(cols, t + M);
          lo[i] = interleave16(_mm512_castsi512_si256(r0), _mm512_castsi512_si256(r1));
          hi[i] = interleave16(_mm512_extracti64x4_epi64(r0, 1), _mm512_extracti64x4_epi64(r1, 1));
        }
        transpose16x16(lo);
        transpose16x16(hi);
        for (int64_t j = 0; j < rows; j++) _mm512_store_si512(a + j * P + p0, j < 16 ? lo[j] : hi[j - 16]);
      }
      for (int64_t nb = 0; nb < N / 64; nb++) {
        if (add) dw_rows<Sum::add>(rows, C + m0 * N + 64 * nb, N, a, P, xb + nb * P * 4);
        else dw_rows<Sum::store>(rows, C + m0 * N + 64 * nb, N, a, P, xb + nb * P * 4);
      }
    }
  }
}
#endif

void CpuBackend::matmul(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void* A,
                        int64_t lda, const void* B, int64_t ldb, void* C, int64_t ldc, DType ab,
                        DType c, const float* bias, bool accumulate, PackedB* packed) {
  if (ab == DType::f32 && c == DType::f32) {
    float* Cf = static_cast<float*>(C);
    if (bias && !accumulate) {
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < M; r++) std::memcpy(Cf + r * ldc, bias, N * sizeof(float));
    } else if (bias) {
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < M; r++)
        for (int64_t j = 0; j < N; j++) Cf[r * ldc + j] += bias[j];
    }
    sgemm(ta, tb, M, N, K, static_cast<const float*>(A), lda, static_cast<const float*>(B), ldb,
          bias || accumulate ? 1.0f : 0.0f, Cf, ldc);
    return;
  }
  if (ab == DType::f16 || (ab == DType::bf16 && !dnnl_->bf16)) {
    // no such matmul in oneDNN 2.6 on this CPU: widen the operands (as stored) to fp32
    dispatch(ab, [&](auto t) {
      widen<decltype(t)>(wide_a_, A, ta ? K : M, ta ? M : K, lda);
      widen<decltype(t)>(wide_b_, B, tb ? N : K, tb ? K : N, ldb);
    });
    float* out = static_cast<float*>(C);
    int64_t ldo = ldc;
    if (c != DType::f32) {  // written whole by the fp32 GEMM (beta 0, or the bias copied in), or widened to add to
      if (accumulate) dispatch(c, [&](auto t) { widen<decltype(t)>(wide_c_, C, M, N, ldc); });
      wide_c_.resize(size_t(M * N));
      out = wide_c_.data();
      ldo = N;
    }
    matmul(ta, tb, M, N, K, wide_a_.data(), ta ? M : K, wide_b_.data(), tb ? K : N, out, ldo,
           DType::f32, DType::f32, bias, accumulate);
    if (c != DType::f32) {
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < M; r++)
        dispatch(c, [&](auto t) {
          using T = decltype(t);
          for (int64_t j = 0; j < N; j++) static_cast<T*>(C)[r * ldc + j] = from_f32<T>(out[r * N + j]);
        });
    }
    return;
  }
  FRUGAL_CHECK(ab == DType::bf16 && c != DType::f16, "matmul {} x {} -> {}", dtype_name(ab), dtype_name(ab), dtype_name(c));
#if defined(__AVX512BF16__) && !defined(__AMX_BF16__)
  if (ta && !tb && c == DType::f32 && !bias && !packed && lda == M && ldb == N && ldc == N && N % 64 == 0 && K % 32 == 0)
    return weight_gradient(dw_x_, M, N, K, static_cast<const bf16*>(A), static_cast<const bf16*>(B),
                           static_cast<float*>(C), accumulate);
#endif
  if (ta && !tb && c == DType::f32 && K > kDwChunk) {
    const size_t es = dtype_size(ab);
    for (int64_t k0 = 0; k0 < K; k0 += kDwChunk)
      matmul(ta, tb, M, N, std::min(kDwChunk, K - k0), static_cast<const std::byte*>(A) + k0 * lda * es, lda,
             static_cast<const std::byte*>(B) + k0 * ldb * es, ldb, C, ldc, ab, c, k0 ? nullptr : bias, accumulate || k0 > 0);
    return;
  }
  using namespace dnnl;
  using dt = memory::data_type;
  const dt cdt = c == DType::f32 ? dt::f32 : dt::bf16;
  memory::desc ad({M, K}, dt::bf16, ta ? memory::dims{1, lda} : memory::dims{lda, 1});
  memory::desc bd({K, N}, dt::bf16, tb ? memory::dims{1, ldb} : memory::dims{ldb, 1});
  memory::desc cd({M, N}, cdt, memory::dims{ldc, 1});
  memory::desc biasd({1, N}, dt::f32, memory::dims{N, 1});
  OneDnn::Key key{ta, tb, M, N, K, lda, ldb, ldc, int(c), bias != nullptr, accumulate, packed != nullptr};
  // A short reduction (K <= 1024: a linear layer's forward, and its dX where OC is small) over
  // a weight of at most 8 M values runs faster with B reordered into oneDNN's blocked layout at
  // every call, reorder included (gemm_bench: gpt2's qkv forward 1.32 -> 1.62 TFLOP/s, fcproj
  // dX 1.52 -> 1.86), with the plain layout's bits on those shapes. So does a linear layer's dX
  // up to K = 4096 (B = W, not transposed; in a gpt2 step at B*T = 4096: qkv dX 8.3 -> 5.8 ms,
  // fc dX 2.8 ms less, the reorders 0.75 and 0.9 ms), with K blocked in another order (other
  // bits); a forward's transposed weight at such K is not faster.
  // A B the caller keeps packed (PackedB) goes blocked at any size: gpt2's lm head at 512 rows
  // per chunk, forward 305 -> 376 GFLOP/s and dX 332 -> 382 (gemm_bench on a Zen 4 EPYC).
  const bool blocked = packed || ((ta ? !tb && K <= kDwChunk : K <= 1024 || (!tb && K <= 4096)) && K * N <= (int64_t(8) << 20));
  auto it = dnnl_->cache.find(key);
  if (it == dnnl_->cache.end()) {
    primitive_attr attr;
    if (accumulate) {
      post_ops po;
      po.append_sum(1.0f);
      attr.set_post_ops(po);
    }
    const memory::desc bany({K, N}, dt::bf16, memory::format_tag::any);
    auto pd = matmul_pd(dnnl_->eng, ad, blocked ? bany : bd, cd, bias ? &biasd : nullptr, attr);
    OneDnn::Entry e{dnnl::matmul(pd), std::nullopt, false, false, {}};
    if (blocked) e.packed = packable(pd.weights_desc());
    if (packed && e.packed) {
      e.theirs = true;
      e.blocked = memory(pd.weights_desc(), dnnl_->eng, nullptr);
    } else if (packed) {  // not in the layout packed_bytes() counted: B as it is
      e.prim = dnnl::matmul(matmul_pd(dnnl_->eng, ad, bd, cd, bias ? &biasd : nullptr, attr));
      e.packed = false;
    } else if (blocked) {
      e.blocked = memory(pd.weights_desc(), dnnl_->eng);
      if (!e.packed) e.to_blocked = dnnl::reorder(memory(bd, dnnl_->eng, nullptr), e.blocked);
    }
    it = dnnl_->cache.emplace(key, std::move(e)).first;
  }
  OneDnn::Entry& e = it->second;
  memory am(ad, dnnl_->eng, const_cast<void*>(A)), bm(bd, dnnl_->eng, const_cast<void*>(B)),
      cm(cd, dnnl_->eng, C);
  if (e.theirs) e.blocked.set_data_handle(packed->data);
  if (e.to_blocked) e.to_blocked->execute(dnnl_->strm, bm, e.blocked);
#if defined(__AVX512BW__)
  if (e.packed && !(e.theirs && packed->filled))
    pack_blocked(static_cast<bf16*>(e.blocked.get_data_handle()), static_cast<const bf16*>(B), K, N, ldb, tb);
  if (e.theirs) packed->filled = true;
#endif
  const bool to_blocked = e.to_blocked || e.packed;
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, to_blocked ? e.blocked : bm}, {DNNL_ARG_DST, cm}};
  if (bias) args.emplace(DNNL_ARG_BIAS, memory(biasd, dnnl_->eng, const_cast<float*>(bias)));
  e.prim.execute(dnnl_->strm, args);
  dnnl_->strm.wait();
}

void CpuBackend::linear_forward(void* out, const void* inp, const void* weight, const float* bias,
                                int64_t BT, int64_t IC, int64_t OC, DType dt) {
  matmul(false, true, BT, OC, IC, inp, IC, weight, IC, out, OC, dt, dt, bias, false);
}

template <class T>
static void column_sums(float* acc, const T* x, int64_t rows, int64_t cols) {
  // each thread owns a range of columns and walks the rows in order
#pragma omp parallel for schedule(static)
  for (int64_t c0 = 0; c0 < cols; c0 += 64) {
    int64_t c1 = c0 + 64 < cols ? c0 + 64 : cols;
    float s[64] = {};
    for (int64_t r = 0; r < rows; r++) {
      const T* row = x + r * cols;
#pragma omp simd
      for (int64_t c = c0; c < c1; c++) s[c - c0] += to_f32(row[c]);
    }
    for (int64_t c = c0; c < c1; c++) acc[c] += s[c - c0];
  }
}

void CpuBackend::linear_backward(void* dinp, float* dweight, float* dbias, const void* dout,
                                 const void* inp, const void* weight, int64_t BT, int64_t IC,
                                 int64_t OC, DType dt) {
  if (dweight) matmul(true, false, OC, IC, BT, dout, OC, inp, IC, dweight, IC, dt, DType::f32, nullptr, true);
  if (dinp) matmul(false, false, BT, IC, OC, dout, OC, weight, IC, dinp, IC, dt, dt, nullptr, false);
  if (dbias)
    dispatch(dt, [&](auto t) { column_sums(dbias, static_cast<const decltype(t)*>(dout), BT, OC); });
}

}  // namespace frugal
