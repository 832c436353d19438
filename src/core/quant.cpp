// quant: NF4 (bitsandbytes' bytes) and int8 quantization on the host, and the reference
// dequantization. The formulas are in quant.h.
#include "core/quant.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "core/core.h"

namespace frugal {

static int64_t num_blocks(int64_t n) { return (n + kQuantBlock - 1) / kQuantBlock; }

// w(n) -> the packed NF4 codes q((n + 1) / 2) and the blocks' absmaxes absmax(nb), fp32.
static void nf4_codes(const float* w, int64_t n, uint8_t* q, float* absmax) {
  float mid[15];
  for (int j = 0; j < 15; j++) mid[j] = (kNf4Code[j] + kNf4Code[j + 1]) / 2.0f;
  const int64_t nb = num_blocks(n);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nb; b++) {
    const int64_t i0 = b * kQuantBlock, i1 = std::min(i0 + kQuantBlock, n);
    float am = 0.0f;
    for (int64_t i = i0; i < i1; i++) am = std::max(am, std::fabs(w[i]));
    absmax[b] = am;
    const float d = std::max(am, 1e-38f), r = 1.0f / d;
    const bool full = i1 - i0 == kQuantBlock;
    for (int64_t i = i0; i < i1; i++) {
      const float s = std::clamp(full ? w[i] * r : w[i] / d, -1.0f, 1.0f);
      uint8_t c = 0;
      for (int j = 0; j < 15; j++) c += mid[j] < s;
      // blocks start at even i: each byte belongs to one block
      if (i % 2 == 0) q[i / 2] = uint8_t(c << 4 | (i + 1 == n ? 7 : 0));
      else q[i / 2] |= c;
    }
  }
}

// bitsandbytes' CPU quantize_blockwise: the nearest dynamic-map code of each of 65536 even points
// in [-1, 1] (the first whose next midpoint is not below it).
static const std::array<uint8_t, 65536>& dynamic_lut() {
  static const std::array<uint8_t, 65536> lut = [] {
    std::array<uint8_t, 65536> t{};
    float mid[255];
    for (int j = 0; j < 255; j++) mid[j] = 0.5f * (kDynamicCode[j] + kDynamicCode[j + 1]);
    int c = 0;
    for (int i = 0; i < 65536; i++) {
      const float val = -1.0f + (2.0f * float(i)) / float(65535);
      while (c < 255 && mid[c] < val) c++;
      t[i] = uint8_t(c);
    }
    return t;
  }();
  return lut;
}

// absmax(nb) fp32 -> t.absmax codes, t.scale (absmax2), with t.offset set.
static void double_quantize(const std::vector<float>& absmax, QuantTensor& t) {
  const auto& lut = dynamic_lut();
  const int64_t nb = int64_t(absmax.size()), n2 = (nb + kNf4Block2 - 1) / kNf4Block2;
  t.absmax.resize(size_t(nb));
  t.scale.resize(size_t(n2));
  for (int64_t k = 0; k < n2; k++) {
    const int64_t b0 = k * kNf4Block2, b1 = std::min(b0 + kNf4Block2, nb);
    float v[kNf4Block2], a2 = 0.0f;
    for (int64_t b = b0; b < b1; b++) {
      v[b - b0] = absmax[b] - t.offset;
      a2 = std::max(a2, std::fabs(v[b - b0]));
    }
    t.scale[k] = a2;
    const float inv = a2 == 0.0f ? 0.0f : 1.0f / a2;
    for (int64_t b = b0; b < b1; b++) {
      const float u = std::clamp(v[b - b0] * inv, -1.0f, 1.0f);
      t.absmax[b] = a2 == 0.0f ? 0 : lut[uint16_t((u + 1.0f) * 0.5f * float(65535) + 0.5f)];
    }
  }
}

static QuantTensor nf4(const float* w, int64_t rows, int64_t cols, const float* offset) {
  FRUGAL_CHECK(rows > 0 && cols > 0, "quantize_nf4 of a ({}, {}) tensor", rows, cols);
  QuantTensor t;
  t.format = QuantFormat::nf4;
  t.rows = rows;
  t.cols = cols;
  const int64_t n = rows * cols;
  t.q.resize(size_t((n + 1) / 2));
  std::vector<float> absmax(size_t(num_blocks(n)));
  nf4_codes(w, n, t.q.data(), absmax.data());
  if (offset) {
    t.offset = *offset;
  } else {
    double s = 0.0;
    for (float a : absmax) s += a;
    t.offset = float(s / double(absmax.size()));
  }
  double_quantize(absmax, t);
  return t;
}

QuantTensor quantize_nf4(const float* w, int64_t rows, int64_t cols) { return nf4(w, rows, cols, nullptr); }
QuantTensor quantize_nf4(const float* w, int64_t rows, int64_t cols, float offset) {
  return nf4(w, rows, cols, &offset);
}

QuantTensor quantize_int8(const float* w, int64_t rows, int64_t cols) {
  FRUGAL_CHECK(rows > 0 && cols > 0, "quantize_int8 of a ({}, {}) tensor", rows, cols);
  QuantTensor t;
  t.format = QuantFormat::int8;
  t.rows = rows;
  t.cols = cols;
  const int64_t n = rows * cols, nb = num_blocks(n);
  t.q.resize(size_t(n));
  t.scale.resize(size_t(nb));
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nb; b++) {
    const int64_t i0 = b * kQuantBlock, i1 = std::min(i0 + kQuantBlock, n);
    float am = 0.0f;
    for (int64_t i = i0; i < i1; i++) am = std::max(am, std::fabs(w[i]));
    const float s = am / 127.0f;
    t.scale[b] = s;
    for (int64_t i = i0; i < i1; i++)
      t.q[i] = uint8_t(int8_t(s == 0.0f ? 0.0f : std::clamp(std::rint(w[i] / s), -127.0f, 127.0f)));
  }
  return t;
}

void dequantize_ref(float* out, const QuantView& q, int64_t first, int64_t count) {
  FRUGAL_CHECK(first >= 0 && count >= 0 && first + count <= q.n(), "dequantize_ref [{}, {}) of {} values",
               first, first + count, q.n());
  for (int64_t i = first; i < first + count; i++) {
    const int64_t b = i / kQuantBlock;
    if (q.format == QuantFormat::nf4) {
      const uint8_t byte = q.q[i / 2];
      out[i - first] = kNf4Code[i % 2 ? byte & 15 : byte >> 4] * nf4_absmax(q, b);
    } else {
      out[i - first] = float(int8_t(q.q[i])) * q.scale[b];
    }
  }
}

}  // namespace frugal
