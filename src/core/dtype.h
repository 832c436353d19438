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

inline float to_f32(float x) { return x; }
inline float to_f32(bf16 x) { return std::bit_cast<float>(uint32_t(x.bits) << 16); }
inline float to_f32(f16 x) { return _cvtsh_ss(x.bits); }

template <class T> inline T from_f32(float x);
template <> inline float from_f32<float>(float x) { return x; }
template <> inline bf16 from_f32<bf16>(float x) {
  uint32_t u = std::bit_cast<uint32_t>(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40)};  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return bf16{uint16_t(u >> 16)};
}
template <> inline f16 from_f32<f16>(float x) { return f16{_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT)}; }

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
