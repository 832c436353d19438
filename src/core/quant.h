// quant: frozen weights stored in fewer bits (the base model of QLoRA). A quantized tensor is a
// row-major matrix (rows, cols) of n = rows·cols values cut into blocks of kQuantBlock = 64
// consecutive values (blocks run on across rows); nb = ceil(n / 64) blocks.
//
// nf4: QLoRA's NormalFloat4 exactly as bitsandbytes stores it (quantize_4bit(blocksize=64,
// quant_type='nf4', compress_statistics=True), bitsandbytes 0.50 on the CPU), byte for byte:
//   absmax_b = max |w| over block b (fp32)
//   s_i      = clamp(w_i * (1 / max(absmax_b, 1e-38)), -1, 1), fp32; the last block, when partial,
//              divides instead (w_i / max(absmax_b, 1e-38)), as bitsandbytes does
//   code_i   = the number of midpoints (kNf4Code[j] + kNf4Code[j+1]) / 2 below s_i (a tie goes down)
//   q        = (n + 1) / 2 bytes: byte k = code_2k << 4 | code_2k+1 (odd n: the last low nibble is
//              7, the code of 0)
// and the absmaxes double-quantized (8 bits, 256 blocks per fp32 absmax2):
//   offset   = mean of absmax_b (float64 sum / nb, rounded once; bitsandbytes takes torch's fp32
//              mean, which may differ in the last bit: quantize_nf4 with bitsandbytes' offset
//              reproduces its bytes exactly)
//   v_b      = absmax_b - offset; absmax2_k = max |v_b| over blocks [256 k, 256 k + 256)
//   absmax code c_b = bitsandbytes' CPU quantize_blockwise with the 8-bit dynamic map
//              kDynamicCode: u = v_b * (1 / absmax2_k); the grid point
//              j = (uint16)((clamp(u, -1, 1) + 1) * 0.5 * 65535 + 0.5) of 65536 even points in
//              [-1, 1]; c_b = the nearest code to point j (the number of dynamic-map midpoints
//              below it); 0 where absmax2_k = 0
// dequantized (bitsandbytes' dequantize_4bit, bit for bit):
//   absmax'_b = kDynamicCode[c_b] * absmax2_k + offset   (product and sum each rounded: never fused)
//   w'_i      = kNf4Code[code_i] * absmax'_b             (fp32; then rounded once to the compute dtype)
// Storage: 4 bits + 8/64 + 32/(64·256) = 4.127 bits per value.
//
// int8 (frugal's own): symmetric absmax per block of 64, fp32 scale:
//   scale_b = absmax_b / 127 (fp32), q_i = rint(w_i / scale_b) in [-127, 127] (0 where scale_b = 0),
//   w'_i = q_i * scale_b (fp32). Storage: 8.5 bits per value.
//
// The code tables are also initialiser lists (FRUGAL_NF4_CODE, FRUGAL_DYNAMIC_CODE) so that the
// CUDA kernels can hold them in constant memory. No fmt here: nvcc compiles this header.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace frugal {

enum class QuantFormat : uint8_t { nf4, int8 };
inline const char* quant_format_name(QuantFormat f) { return f == QuantFormat::nf4 ? "nf4" : "int8"; }

constexpr int64_t kQuantBlock = 64;  // values per absmax
constexpr int64_t kNf4Block2 = 256;  // nf4: absmaxes per absmax2

// QLoRA's NF4 values (the paper's Appendix E; bitsandbytes' get_4bit_type('nf4')), ascending.
#define FRUGAL_NF4_CODE                                                                        \
  -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,                    \
      -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,               \
      0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f, \
      0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f
// bitsandbytes' create_dynamic_map() (signed, 7 exponent bits, 8 bits), ascending, as its fp32
// tensor holds it.
#define FRUGAL_DYNAMIC_CODE \
  -0x1.fc6666p-1f, -0x1.f53334p-1f, -0x1.eep-1f, -0x1.e6ccccp-1f, -0x1.df999ap-1f, -0x1.d86666p-1f, -0x1.d13334p-1f, -0x1.cap-1f, \
  -0x1.c2ccccp-1f, -0x1.bb999ap-1f, -0x1.b46666p-1f, -0x1.ad3334p-1f, -0x1.a6p-1f, -0x1.9eccccp-1f, -0x1.97999ap-1f, -0x1.906666p-1f, \
  -0x1.893334p-1f, -0x1.82p-1f, -0x1.7accccp-1f, -0x1.73999ap-1f, -0x1.6c6668p-1f, -0x1.653334p-1f, -0x1.5ep-1f, -0x1.56ccccp-1f, \
  -0x1.4f999ap-1f, -0x1.486668p-1f, -0x1.413334p-1f, -0x1.3ap-1f, -0x1.32ccccp-1f, -0x1.2b999ap-1f, -0x1.246668p-1f, -0x1.1d3334p-1f, \
  -0x1.16p-1f, -0x1.0eccccp-1f, -0x1.079998p-1f, -0x1.006666p-1f, -0x1.f26664p-2f, -0x1.e4p-2f, -0x1.d59998p-2f, -0x1.c73334p-2f, \
  -0x1.b8ccccp-2f, -0x1.aa6666p-2f, -0x1.9cp-2f, -0x1.8d9998p-2f, -0x1.7f3334p-2f, -0x1.70ccccp-2f, -0x1.626666p-2f, -0x1.54p-2f, \
  -0x1.459998p-2f, -0x1.373334p-2f, -0x1.28ccccp-2f, -0x1.1a6668p-2f, -0x1.0cp-2f, -0x1.fb3332p-3f, -0x1.de6666p-3f, -0x1.c1999ap-3f, \
  -0x1.a4ccccp-3f, -0x1.88p-3f, -0x1.6b3334p-3f, -0x1.4e6666p-3f, -0x1.31999ap-3f, -0x1.14ccccp-3f, -0x1.fp-4f, -0x1.b66668p-4f, \
  -0x1.93d70ap-4f, -0x1.8851eep-4f, -0x1.7ccccep-4f, -0x1.7147aep-4f, -0x1.65c29p-4f, -0x1.5a3d7p-4f, -0x1.4eb854p-4f, -0x1.433334p-4f, \
  -0x1.37ae14p-4f, -0x1.2c28f6p-4f, -0x1.20a3d6p-4f, -0x1.151ebap-4f, -0x1.09999ap-4f, -0x1.fc28f6p-5f, -0x1.e51ebap-5f, -0x1.ce147ap-5f, \
  -0x1.b70a3ep-5f, -0x1.ap-5f, -0x1.88f5c2p-5f, -0x1.71eb86p-5f, -0x1.5ae146p-5f, -0x1.43d70ap-5f, -0x1.2ccccep-5f, -0x1.15c29p-5f, \
  -0x1.fd70a4p-6f, -0x1.cf5c2ap-6f, -0x1.a147aep-6f, -0x1.733334p-6f, -0x1.451ebap-6f, -0x1.170a3ep-6f, -0x1.d1eb86p-7f, -0x1.75c29p-7f, \
  -0x1.3e76c8p-7f, -0x1.2c083p-7f, -0x1.19999ap-7f, -0x1.072b02p-7f, -0x1.e978d4p-8f, -0x1.c49ba6p-8f, -0x1.9fbe76p-8f, -0x1.7ae148p-8f, \
  -0x1.56041ap-8f, -0x1.3126e8p-8f, -0x1.0c49bap-8f, -0x1.ced914p-9f, -0x1.851eb8p-9f, -0x1.3b645ap-9f, -0x1.e353f8p-10f, -0x1.4fdf3ap-10f, \
  -0x1.eecbfep-11f, -0x1.b3d07cp-11f, -0x1.78d5p-11f, -0x1.3dd982p-11f, -0x1.02de02p-11f, -0x1.8fc506p-12f, -0x1.19ce0ap-12f, -0x1.47ae16p-13f, \
  -0x1.743e96p-14f, -0x1.15df66p-14f, -0x1.6f0068p-15f, -0x1.64840cp-16f, -0x1.040bfep-17f, -0x1.b43528p-19f, -0x1.27476ep-21f, 0.0f, \
  0x1.27476ep-21f, 0x1.b43528p-19f, 0x1.040bfep-17f, 0x1.64840cp-16f, 0x1.6f0068p-15f, 0x1.15df66p-14f, 0x1.743e96p-14f, 0x1.47ae16p-13f, \
  0x1.19ce0ap-12f, 0x1.8fc506p-12f, 0x1.02de02p-11f, 0x1.3dd982p-11f, 0x1.78d5p-11f, 0x1.b3d07cp-11f, 0x1.eecbfep-11f, 0x1.4fdf3ap-10f, \
  0x1.e353f8p-10f, 0x1.3b645ap-9f, 0x1.851eb8p-9f, 0x1.ced914p-9f, 0x1.0c49bap-8f, 0x1.3126e8p-8f, 0x1.56041ap-8f, 0x1.7ae148p-8f, \
  0x1.9fbe76p-8f, 0x1.c49ba6p-8f, 0x1.e978d4p-8f, 0x1.072b02p-7f, 0x1.19999ap-7f, 0x1.2c083p-7f, 0x1.3e76c8p-7f, 0x1.75c29p-7f, \
  0x1.d1eb86p-7f, 0x1.170a3ep-6f, 0x1.451ebap-6f, 0x1.733334p-6f, 0x1.a147aep-6f, 0x1.cf5c2ap-6f, 0x1.fd70a4p-6f, 0x1.15c29p-5f, \
  0x1.2ccccep-5f, 0x1.43d70ap-5f, 0x1.5ae146p-5f, 0x1.71eb86p-5f, 0x1.88f5c2p-5f, 0x1.ap-5f, 0x1.b70a3ep-5f, 0x1.ce147ap-5f, \
  0x1.e51ebap-5f, 0x1.fc28f6p-5f, 0x1.09999ap-4f, 0x1.151ebap-4f, 0x1.20a3d6p-4f, 0x1.2c28f6p-4f, 0x1.37ae14p-4f, 0x1.433334p-4f, \
  0x1.4eb854p-4f, 0x1.5a3d7p-4f, 0x1.65c29p-4f, 0x1.7147aep-4f, 0x1.7ccccep-4f, 0x1.8851eep-4f, 0x1.93d70ap-4f, 0x1.b66668p-4f, \
  0x1.fp-4f, 0x1.14ccccp-3f, 0x1.31999ap-3f, 0x1.4e6666p-3f, 0x1.6b3334p-3f, 0x1.88p-3f, 0x1.a4ccccp-3f, 0x1.c1999ap-3f, \
  0x1.de6666p-3f, 0x1.fb3332p-3f, 0x1.0cp-2f, 0x1.1a6668p-2f, 0x1.28ccccp-2f, 0x1.373334p-2f, 0x1.459998p-2f, 0x1.54p-2f, \
  0x1.626666p-2f, 0x1.70ccccp-2f, 0x1.7f3334p-2f, 0x1.8d9998p-2f, 0x1.9cp-2f, 0x1.aa6666p-2f, 0x1.b8ccccp-2f, 0x1.c73334p-2f, \
  0x1.d59998p-2f, 0x1.e4p-2f, 0x1.f26664p-2f, 0x1.006666p-1f, 0x1.079998p-1f, 0x1.0eccccp-1f, 0x1.16p-1f, 0x1.1d3334p-1f, \
  0x1.246668p-1f, 0x1.2b999ap-1f, 0x1.32ccccp-1f, 0x1.3ap-1f, 0x1.413334p-1f, 0x1.486668p-1f, 0x1.4f999ap-1f, 0x1.56ccccp-1f, \
  0x1.5ep-1f, 0x1.653334p-1f, 0x1.6c6668p-1f, 0x1.73999ap-1f, 0x1.7accccp-1f, 0x1.82p-1f, 0x1.893334p-1f, 0x1.906666p-1f, \
  0x1.97999ap-1f, 0x1.9eccccp-1f, 0x1.a6p-1f, 0x1.ad3334p-1f, 0x1.b46666p-1f, 0x1.bb999ap-1f, 0x1.c2ccccp-1f, 0x1.cap-1f, \
  0x1.d13334p-1f, 0x1.d86666p-1f, 0x1.df999ap-1f, 0x1.e6ccccp-1f, 0x1.eep-1f, 0x1.f53334p-1f, 0x1.fc6666p-1f, 0x1p+0f

inline constexpr float kNf4Code[16] = {FRUGAL_NF4_CODE};
inline constexpr float kDynamicCode[256] = {FRUGAL_DYNAMIC_CODE};

// A quantized tensor where a backend reads it (host memory for the CPU backend, device memory for
// CUDA): pointers only, as kernels take them.
struct QuantView {
  QuantFormat format;
  int64_t rows, cols;
  const uint8_t* q;       // nf4: (n + 1) / 2 bytes, two codes each; int8: n int8 values
  const uint8_t* absmax;  // nf4: absmax codes (nb), into kDynamicCode; int8: null
  const float* scale;     // nf4: absmax2 (ceil(nb / 256)); int8: scale (nb)
  float offset;           // nf4: added to every absmax; int8: 0
  int64_t n() const { return rows * cols; }
};

// The same in host memory, owned.
struct QuantTensor {
  QuantFormat format = QuantFormat::nf4;
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> q, absmax;
  std::vector<float> scale;
  float offset = 0.0f;
  QuantView view() const {
    return {format, rows, cols, q.data(), absmax.empty() ? nullptr : absmax.data(), scale.data(), offset};
  }
};

// Bytes a quantized tensor of n values takes (q, absmax, scale; the offset travels in the view).
inline size_t quant_bytes(QuantFormat f, int64_t n) {
  const int64_t nb = (n + kQuantBlock - 1) / kQuantBlock;
  if (f == QuantFormat::int8) return size_t(n + 4 * nb);
  return size_t((n + 1) / 2 + nb + 4 * ((nb + kNf4Block2 - 1) / kNf4Block2));
}

// w(rows, cols) fp32 -> nf4; offset: the mean of the absmaxes, or the one given (bitsandbytes').
QuantTensor quantize_nf4(const float* w, int64_t rows, int64_t cols);
QuantTensor quantize_nf4(const float* w, int64_t rows, int64_t cols, float offset);
QuantTensor quantize_int8(const float* w, int64_t rows, int64_t cols);

// nf4: block b's absmax, dequantized: kDynamicCode[c_b] * absmax2 + offset, the product rounded
// before the sum (volatile: a compiler may not fuse the two into one multiply-add).
inline float nf4_absmax(const QuantView& q, int64_t b) {
  volatile float p = kDynamicCode[q.absmax[b]] * q.scale[b / kNf4Block2];
  return p + q.offset;
}

// out(count) fp32 = values [first, first + count) of q dequantized: the reference, plain loops.
void dequantize_ref(float* out, const QuantView& q, int64_t first, int64_t count);

}  // namespace frugal
