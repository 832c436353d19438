// Dequantization of quantized weights (core/quant.h) into the compute dtype, the values of
// core's dequantize_ref rounded once. NF4 with AVX-512 a block of 64 values at a time (the 16
// levels in one register, looked up by vpermps; the even and odd values interleaved by vpermt2ps),
// int8 16 values at a time; plain loops without AVX-512 and for the partial blocks at a window's
// edges. OpenMP over the window's rows.
#include <immintrin.h>

#include <algorithm>
#include <type_traits>

#include "backend/cpu/cpu.h"
#include "core/core.h"

namespace frugal {

// out(count) = values [first, first + count) of q, one at a time
template <class T>
static void nf4_values(T* out, const QuantView& q, int64_t first, int64_t count) {
  for (int64_t i = first; i < first + count; i++) {
    const uint8_t byte = q.q[i / 2];
    out[i - first] = from_f32<T>(kNf4Code[i % 2 ? byte & 15 : byte >> 4] * nf4_absmax(q, i / kQuantBlock));
  }
}

#if defined(__AVX512F__)
template <class T>
static inline void store16(T* out, __m512 v) {
  if constexpr (std::is_same_v<T, float>) {
    _mm512_storeu_ps(out, v);
  } else if constexpr (std::is_same_v<T, f16>) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {  // bf16, rounded to nearest even as from_f32 (the values are finite)
    const __m512i u = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
  }
}

// out(64) = one block: codes q(32 bytes), its absmax
template <class T>
static inline void nf4_block(T* out, const uint8_t* q, float absmax) {
  const __m512 table = _mm512_loadu_ps(kNf4Code), scale = _mm512_set1_ps(absmax);
  const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (int h = 0; h < 2; h++) {  // 16 bytes: 32 values
    const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16 * h)));
    const __m512 hi = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), table), scale);
    const __m512 lo = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_and_si512(bytes, _mm512_set1_epi32(15)), table), scale);
    store16(out + 32 * h, _mm512_permutex2var_ps(hi, first, lo));
    store16(out + 32 * h + 16, _mm512_permutex2var_ps(hi, second, lo));
  }
}
#endif

// out(count) = values [first, first + count) of q: whole blocks at once where there are any
template <class T>
static void nf4_range(T* out, const QuantView& q, int64_t first, int64_t count) {
#if defined(__AVX512F__)
  const int64_t end = first + count;
  const int64_t b0 = (first + kQuantBlock - 1) / kQuantBlock, b1 = end / kQuantBlock;
  if (b1 > b0) {
    nf4_values(out, q, first, b0 * kQuantBlock - first);
    for (int64_t b = b0; b < b1; b++) nf4_block(out + b * kQuantBlock - first, q.q + b * kQuantBlock / 2, nf4_absmax(q, b));
    nf4_values(out + b1 * kQuantBlock - first, q, b1 * kQuantBlock, end - b1 * kQuantBlock);
    return;
  }
#endif
  nf4_values(out, q, first, count);
}

template <class T>
static void int8_range(T* out, const QuantView& q, int64_t first, int64_t count) {
  const int8_t* v = reinterpret_cast<const int8_t*>(q.q);
  for (int64_t i = first; i < first + count;) {  // a block (or its part) at a time
    const int64_t b = i / kQuantBlock, stop = std::min(first + count, (b + 1) * kQuantBlock);
    const float s = q.scale[b];
    int64_t k = i;
#if defined(__AVX512F__)
    for (; k + 16 <= stop; k += 16) {
      const __m512i x = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v + k)));
      store16(out + k - first, _mm512_mul_ps(_mm512_cvtepi32_ps(x), _mm512_set1_ps(s)));
    }
#endif
    for (; k < stop; k++) out[k - first] = from_f32<T>(float(v[k]) * s);
    i = stop;
  }
}

void CpuBackend::dequantize(void* out, const QuantView& q, int64_t row0, int64_t rows, int64_t col0,
                            int64_t cols, DType dt) {
  FRUGAL_CHECK(row0 >= 0 && col0 >= 0 && rows >= 0 && cols >= 0 && row0 + rows <= q.rows && col0 + cols <= q.cols,
               "dequantize rows [{}, {}) cols [{}, {}) of a ({}, {}) {} matrix", row0, row0 + rows, col0,
               col0 + cols, q.rows, q.cols, quant_format_name(q.format));
  dispatch(dt, [&](auto t) {
    using T = decltype(t);
    T* o = static_cast<T*>(out);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
      const int64_t first = (row0 + r) * q.cols + col0;
      if (q.format == QuantFormat::nf4) nf4_range(o + r * cols, q, first, cols);
      else int8_range(o + r * cols, q, first, cols);
    }
  });
}

}  // namespace frugal
