// core/quant: NF4 against bitsandbytes (tests/reference/nf4_reference.py), bit for bit, and
// against its definition in float64; int8 against float64.
//
// What is asserted:
//  - the NF4 table is the paper's (its printed values exactly, and within 3e-7 of its definition:
//    normal quantiles, computed here in float64);
//  - on fresh random tensors of several shapes (n a multiple of 64 or not, odd n, a block of
//    zeros, an outlier) the packed codes, absmax codes, absmax2 and the dequantized values (fp32,
//    bf16, fp16) equal bitsandbytes' byte for byte, given bitsandbytes' offset; frugal's own
//    offset (a float64 mean) within 2 ulps of it;
//  - every NF4 code is the nearest level to w / absmax (float64) except within 1e-6 of a
//    midpoint; every absmax code is the nearest dynamic-map value up to bitsandbytes' 65536-point
//    grid; so |w' - w| <= half the gap around the code times absmax plus the absmax's error;
//  - int8: scale = absmax / 127 correctly rounded, q = rint(w / scale) in float64 except at
//    ties within 1e-4, w' = q scale exactly, |w' - w| <= scale / 2.
#include <cmath>
#include <cstring>
#include <algorithm>
#include <fstream>

#include <fmt/format.h>

#include "core/dtype.h"
#include "core/quant.h"
#include "support/support.h"

namespace frugal {
namespace {

using test::randn;

template <class T>
std::vector<T> read_raw(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  EXPECT_TRUE(f.good()) << path;
  std::vector<T> v(size_t(f.tellg()) / sizeof(T));
  f.seekg(0);
  f.read(reinterpret_cast<char*>(v.data()), std::streamsize(v.size() * sizeof(T)));
  return v;
}

template <class T>
void write_raw(const std::string& path, const std::vector<T>& v) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), std::streamsize(v.size() * sizeof(T)));
}

std::vector<float> dequantized(const QuantTensor& t) {
  std::vector<float> out(size_t(t.rows * t.cols));
  dequantize_ref(out.data(), t.view(), 0, t.rows * t.cols);
  return out;
}

// Phi^-1(p) in float64: Newton on the normal CDF.
double normal_ppf(double p) {
  double x = 0.0;
  for (int it = 0; it < 60; it++) {
    const double cdf = 0.5 * std::erfc(-x / std::sqrt(2.0)), pdf = std::exp(-x * x / 2) / std::sqrt(2 * M_PI);
    x -= (cdf - p) / pdf;
  }
  return x;
}

TEST(Nf4, CodeTableIsThePapers) {
  // QLoRA (Dettmers et al. 2023), Appendix E
  const double paper[16] = {-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                            -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                            0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                            0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0};
  for (int j = 0; j < 16; j++) EXPECT_EQ(kNf4Code[j], float(paper[j])) << j;
  // Its definition: 8 positive quantiles of N(0, 1) at probabilities evenly spaced from
  // delta = 0.9677083 down to 0.5 (excluded), 7 negative ones likewise, and 0; divided by the
  // largest. (bitsandbytes' create_normal_map, whose probabilities are fp32.)
  std::vector<double> v = {0.0};
  for (int k = 0; k < 8; k++) v.push_back(normal_ppf(double(float(0.9677083 + (0.5 - 0.9677083) * k / 8))));
  for (int k = 0; k < 7; k++) v.push_back(-normal_ppf(double(float(0.9677083 + (0.5 - 0.9677083) * k / 7))));
  std::sort(v.begin(), v.end());
  for (int j = 0; j < 16; j++) EXPECT_NEAR(kNf4Code[j], v[j] / v[15], 3e-7) << j;
  for (int j = 0; j < 255; j++) EXPECT_LT(kDynamicCode[j], kDynamicCode[j + 1]) << j;
  EXPECT_EQ(kDynamicCode[127], 0.0f);
  EXPECT_EQ(kDynamicCode[255], 1.0f);
}

struct Case {
  int64_t rows, cols;
  float scale;
};

TEST(Nf4, PackedCodesAbsmaxesAndDequantizedValuesEqualBitsandbytes) {
  // 64 blocks; 1200 blocks (5 absmax2 blocks, the last partial); n = 3700 (a partial block);
  // odd n; one value; a block of zeros and an outlier
  const Case cases[] = {{64, 64, 0.02f}, {300, 256, 0.02f}, {37, 100, 1.0f}, {33, 77, 0.05f}, {1, 1, 1.0f}, {16, 128, 0.02f}};
  test::TempDir dir;
  std::vector<std::vector<float>> ws;
  std::string shapes;
  for (size_t i = 0; i < std::size(cases); i++) {
    const Case& c = cases[i];
    ws.push_back(randn(size_t(c.rows * c.cols), c.scale, 10 + i));
    if (c.rows == 16) {
      std::fill(ws.back().begin() + 64, ws.back().begin() + 128, 0.0f);
      ws.back()[300] = 40.0f;
    }
    write_raw(dir / fmt::format("w{}.f32", i), ws.back());
    shapes += fmt::format(" {}x{}", c.rows, c.cols);
  }
  ASSERT_TRUE(test::run_reference("nf4_reference.py", dir.path.string() + shapes));
  auto nf4_code = read_raw<float>(dir / "nf4_code.f32"), dyn_code = read_raw<float>(dir / "dynamic_code.f32");
  ASSERT_EQ(nf4_code.size(), 16u);
  ASSERT_EQ(dyn_code.size(), 256u);
  EXPECT_EQ(std::memcmp(nf4_code.data(), kNf4Code, sizeof kNf4Code), 0) << "bitsandbytes' NF4 table";
  EXPECT_EQ(std::memcmp(dyn_code.data(), kDynamicCode, sizeof kDynamicCode), 0) << "bitsandbytes' dynamic map";
  for (size_t i = 0; i < std::size(cases); i++) {
    const Case& c = cases[i];
    const std::string at = fmt::format("case ({}, {}), seed {}", c.rows, c.cols, test::test_seed());
    const std::string p = dir / std::to_string(i);
    const float offset = read_raw<float>(p + ".offset").at(0);
    const QuantTensor t = quantize_nf4(ws[i].data(), c.rows, c.cols, offset);
    EXPECT_EQ(t.q, read_raw<uint8_t>(p + ".q")) << "packed codes, " << at;
    EXPECT_EQ(t.absmax, read_raw<uint8_t>(p + ".absmax")) << "absmax codes, " << at;
    EXPECT_EQ(t.scale, read_raw<float>(p + ".absmax2")) << "absmax2, " << at;
    EXPECT_EQ(t.q.size() + t.absmax.size() + 4 * t.scale.size(), quant_bytes(QuantFormat::nf4, c.rows * c.cols));
    const std::vector<float> deq = dequantized(t), want = read_raw<float>(p + ".deq.f32");
    ASSERT_EQ(deq.size(), want.size()) << at;
    EXPECT_EQ(std::memcmp(deq.data(), want.data(), deq.size() * 4), 0) << "dequantized fp32, " << at;
    const auto bf = read_raw<uint16_t>(p + ".deq.bf16"), hf = read_raw<uint16_t>(p + ".deq.f16");
    ASSERT_EQ(bf.size(), deq.size());
    ASSERT_EQ(hf.size(), deq.size());
    size_t bad_bf = 0, bad_hf = 0;
    for (size_t k = 0; k < deq.size(); k++) {
      bad_bf += from_f32<bf16>(deq[k]).bits != bf[k];
      bad_hf += from_f32<f16>(deq[k]).bits != hf[k];
    }
    EXPECT_EQ(bad_bf, 0u) << "dequantized bf16, " << at;
    EXPECT_EQ(bad_hf, 0u) << "dequantized fp16, " << at;
    // frugal's own offset: the float64 mean, rounded once; torch's fp32 sum may differ in the last bits
    const float own = quantize_nf4(ws[i].data(), c.rows, c.cols).offset;
    EXPECT_LE(std::abs(own - offset), 2 * (std::nextafter(offset, INFINITY) - offset)) << "offset, " << at;
  }
}

TEST(Nf4, ErrorAgainstFloat64IsWhatTheFormatImplies) {
  const int64_t rows = 96, cols = 1000, n = rows * cols;  // 1500 blocks
  std::vector<float> w = randn(size_t(n), 0.02f, 20);
  const QuantTensor t = quantize_nf4(w.data(), rows, cols);
  const QuantView v = t.view();
  const std::vector<float> deq = dequantized(t);
  const int64_t nb = (n + 63) / 64;
  double err2 = 0, w2 = 0;
  for (int64_t b = 0; b < nb; b++) {
    double am = 0;
    for (int64_t i = b * 64; i < std::min(n, b * 64 + 64); i++) am = std::max(am, std::abs(double(w[i])));
    // the absmax: the nearest dynamic-map value to (absmax - offset) / absmax2, up to the grid
    const double a2 = t.scale[b / 256], u = (am - double(t.offset)) / a2;
    double best = 1e9;
    for (float c : kDynamicCode) best = std::min(best, std::abs(double(c) - u));
    EXPECT_LE(std::abs(double(kDynamicCode[t.absmax[b]]) - u), best + 2.0 / 65535 + 1e-6) << "block " << b;
    const double am_q = nf4_absmax(v, b), am_err = std::abs(am_q - am);
    for (int64_t i = b * 64; i < std::min(n, b * 64 + 64); i++) {
      const double s = double(w[i]) / am;
      const int code = i % 2 ? t.q[i / 2] & 15 : t.q[i / 2] >> 4;
      int nearest = 0;
      for (int j = 1; j < 16; j++)
        if (std::abs(kNf4Code[j] - s) < std::abs(kNf4Code[nearest] - s)) nearest = j;
      if (code != nearest) {  // only at a midpoint
        EXPECT_NEAR(s, (double(kNf4Code[code]) + kNf4Code[nearest]) / 2, 1e-6) << "element " << i;
      }
      const double gap = std::max(code > 0 ? kNf4Code[code] - kNf4Code[code - 1] : 0.0f,
                                  code < 15 ? kNf4Code[code + 1] - kNf4Code[code] : 0.0f);
      EXPECT_LE(std::abs(double(deq[i]) - w[i]), gap / 2 * am + am_err + 1e-6 * am) << "element " << i;
      err2 += (double(deq[i]) - w[i]) * (double(deq[i]) - w[i]);
      w2 += double(w[i]) * w[i];
    }
  }
  // the RMS error of NF4 on a normal tensor, relative: about 0.1 (4 bits over about 3.4 sigma)
  const double rel = std::sqrt(err2 / w2);
  EXPECT_GT(rel, 0.05);
  EXPECT_LT(rel, 0.13);
  std::printf("nf4 relative RMS error on N(0, 0.02): %.4f\n", rel);
}

TEST(Int8, MatchesFloat64) {
  const int64_t rows = 50, cols = 77, n = rows * cols;  // a partial last block
  std::vector<float> w = randn(size_t(n), 0.02f, 30);
  std::fill(w.begin() + 128, w.begin() + 192, 0.0f);  // a zero block
  const QuantTensor t = quantize_int8(w.data(), rows, cols);
  EXPECT_EQ(t.q.size() + 4 * t.scale.size(), quant_bytes(QuantFormat::int8, n));
  const std::vector<float> deq = dequantized(t);
  int ties = 0;
  for (int64_t b = 0; b < (n + 63) / 64; b++) {
    double am = 0;
    for (int64_t i = b * 64; i < std::min(n, b * 64 + 64); i++) am = std::max(am, std::abs(double(w[i])));
    const float s = t.scale[b];
    EXPECT_EQ(s, float(am / 127)) << "block " << b;
    for (int64_t i = b * 64; i < std::min(n, b * 64 + 64); i++) {
      const int q = int8_t(t.q[i]);
      const double x = s == 0 ? 0.0 : double(w[i]) / s;
      if (q != int(std::nearbyint(x))) {
        EXPECT_NEAR(std::abs(x - std::trunc(x)), 0.5, 1e-4) << "element " << i;
        ties++;
      }
      EXPECT_LE(std::abs(q), 127);
      EXPECT_EQ(double(deq[i]), double(float(q * double(s)))) << "element " << i;
      EXPECT_LE(std::abs(double(deq[i]) - w[i]), s / 2 * (1 + 1e-5) + 1e-12) << "element " << i;
    }
  }
  EXPECT_LE(ties, 2);
}

}  // namespace
}  // namespace frugal
