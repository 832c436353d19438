// dtypes: the storage types of compute copies and activations, and conversions to and from
// fp32 (round to nearest even). Kernels are templated on the storage type and compute in fp32.
#pragma once
#include <immintrin.h>

#include <bit>
#include <cstdint>
#include <cstring>

namespace frugal {

enum class DType : uint8_t { f32, bf16, f16 };

inline size_t dtype_size(DType d) { return d == DType::f32 ? 4 : 2; }
inline const char* dtype_name(DType d) {
  return d == DType::f32 ? "fp32" : d == DType::bf16 ? "bf16" : "fp16";
}

struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };

// fp16 <-> fp32 in plain integer arithmetic, bit for bit what F16C's vcvtph2ps and vcvtps2ph
// (round to nearest even) give: the conversions of a build without F16C (FRUGAL_NATIVE=OFF).
inline float f16_bits_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | man << 13 | (man ? 0x400000u : 0));  // NaN quieted
  if (exp) return std::bit_cast<float>(sign | (exp + 112) << 23 | man << 13);
  if (!man) return std::bit_cast<float>(sign);
  int shift = 0;  // subnormal: man x 2^-24, normalised
  while (!(man & 0x400u)) man <<= 1, shift++;
  return std::bit_cast<float>(sign | uint32_t(113 - shift) << 23 | (man & 0x3ffu) << 13);
}
inline uint16_t f32_to_f16_bits(float x) {
  const uint32_t u = std::bit_cast<uint32_t>(x), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u | (a >> 13 & 0x3ffu));  // NaN: quiet, top payload bits
  if (a >= 0x47800000u) return uint16_t(sign | 0x7c00u);                       // >= 2^16 (and inf): inf
  if (a >= 0x38800000u) {  // normal in fp16 (>= 2^-14): rebias, round the 13 dropped bits (may carry to inf)
    const uint32_t r = a - 0x38000000u;
    return uint16_t(sign | (r + 0xfffu + (r >> 13 & 1u)) >> 13);
  }
  const uint32_t e = a >> 23;
  if (e < 102) return uint16_t(sign);  // under 2^-25: rounds to zero
  const uint32_t m = (a & 0x7fffffu) | 0x800000u, s = 126 - e;  // x = m 2^-s in units of 2^-24
  const uint32_t q = m >> s, rem = m & ((1u << s) - 1), half = 1u << (s - 1);
  return uint16_t(sign | (q + (rem > half || (rem == half && (q & 1u)))));
}

inline float to_f32(float x) { return x; }
inline float to_f32(bf16 x) { return std::bit_cast<float>(uint32_t(x.bits) << 16); }
#if defined(__F16C__)
inline float to_f32(f16 x) { return _cvtsh_ss(x.bits); }
#else
inline float to_f32(f16 x) { return f16_bits_to_f32(x.bits); }
#endif

template <class T> inline T from_f32(float x);
template <> inline float from_f32<float>(float x) { return x; }
template <> inline bf16 from_f32<bf16>(float x) {
  uint32_t u = std::bit_cast<uint32_t>(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40)};  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return bf16{uint16_t(u >> 16)};
}
#if defined(__F16C__)
template <> inline f16 from_f32<f16>(float x) { return f16{_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT)}; }
#else
template <> inline f16 from_f32<f16>(float x) { return f16{f32_to_f16_bits(x)}; }
#endif

// Calls f with a value of the storage type of d (float, bf16 or f16) to pick a kernel.
template <class F>
inline decltype(auto) dispatch(DType d, F&& f) {
  switch (d) {
    case DType::bf16: return f(bf16{});
    case DType::f16: return f(f16{});
    default: return f(float{});
  }
}

}  // namespace frugal
