// A QLoRA base layer against the plain one it replaces: one linear layer of llama-7b's MLP shape
// (IC 4096, OC 11008) at BT 512 in bf16. Times forward + backward without a weight gradient
// (the base is frozen) with the weight in bf16 (linear_forward, linear_backward with no dweight:
// the reference, in the same run) and quantized (NF4 and int8: quant_linear_forward /
// quant_linear_backward, dequantizing a panel at a time), medians of reps; and the quantization
// error on N(0, 0.02) weights against the bf16 weight they were made from, and what it does to
// the layer's out and dinp (relative to the bf16 layer's, whole tensors).
//   usage: quant_bench [cpu|cuda] [BT] [IC] [OC] [reps]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>
#include <string>

#include "backend/backend.h"
#include "core/core.h"

using namespace frugal;

// n bytes in the backend's memory (device memory once cuda_backend() is up), from host bytes.
static PoolArray<uint8_t> put(Backend& be, const void* src, size_t n) {
  PoolArray<uint8_t> a(std::max<size_t>(n, 1), Mem::workspace);
  be.copy(a.data(), src, n);
  return a;
}

// A quantized weight in the backend's memory.
struct DeviceQuant {
  PoolArray<uint8_t> q, absmax, scale;
  QuantView v;
  DeviceQuant(Backend& be, const QuantTensor& t)
      : q(put(be, t.q.data(), t.q.size())), absmax(put(be, t.absmax.data(), t.absmax.size())),
        scale(put(be, t.scale.data(), t.scale.size() * sizeof(float))), v(t.view()) {
    v.q = q.data();
    v.absmax = t.absmax.empty() ? nullptr : absmax.data();
    v.scale = reinterpret_cast<const float*>(scale.data());
  }
};

int main(int argc, char** argv) {
  const bool cuda = argc > 1 && std::string(argv[1]) == "cuda";
  const int64_t BT = argc > 2 ? atoi(argv[2]) : 512, IC = argc > 3 ? atoi(argv[3]) : 4096,
                OC = argc > 4 ? atoi(argv[4]) : 11008;
  const int reps = argc > 5 ? atoi(argv[5]) : 5;
  const DType dt = DType::bf16;
  Backend& be = cuda ? cuda_backend() : cpu_backend();

  // the weight: N(0, 0.02), rounded to bf16 (a bf16 checkpoint); quantized from those values
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::vector<float> w(size_t(OC * IC)), x(size_t(BT * IC)), dy(size_t(BT * OC));
  for (float& v : w) v = to_f32(from_f32<bf16>(nd(rng)));
  for (float& v : x) v = nd(rng) * 50.0f;
  for (float& v : dy) v = nd(rng) * 50.0f;
  const QuantTensor nf4 = quantize_nf4(w.data(), OC, IC), int8 = quantize_int8(w.data(), OC, IC);

  // error against the bf16 weight: RMS relative to its RMS; the largest, relative to its RMS
  // and to its block's absmax
  fmt::print("quantization error on N(0, 0.02) weights ({} x {}), against the bf16 weight:\n", OC, IC);
  fmt::print("  {:<6} {:>12} {:>14} {:>16} {:>12}\n", "format", "RMS / RMS(w)", "max / RMS(w)", "max / blk absmax", "bits/value");
  for (const QuantTensor* t : {&nf4, &int8}) {
    std::vector<float> deq(w.size());
    dequantize_ref(deq.data(), t->view(), 0, OC * IC);
    double e2 = 0, w2 = 0, emax = 0, emax_blk = 0;
    for (int64_t b = 0; b < OC * IC / kQuantBlock; b++) {
      double am = 0;
      for (int64_t i = b * kQuantBlock; i < (b + 1) * kQuantBlock; i++) am = std::max(am, std::abs(double(w[i])));
      for (int64_t i = b * kQuantBlock; i < (b + 1) * kQuantBlock; i++) {
        const double e = std::abs(double(deq[i]) - w[i]);
        e2 += e * e;
        w2 += double(w[i]) * w[i];
        emax = std::max(emax, e);
        emax_blk = std::max(emax_blk, e / am);
      }
    }
    const double rms_w = std::sqrt(w2 / double(w.size()));
    fmt::print("  {:<6} {:>12.4f} {:>14.4f} {:>16.4f} {:>12.3f}\n", quant_format_name(t->format), std::sqrt(e2 / w2),
               emax / rms_w, emax_blk, 8.0 * double(quant_bytes(t->format, OC * IC)) / double(w.size()));
  }

  // buffers in the backend's memory, in bf16
  const size_t es = dtype_size(dt);
  std::vector<uint8_t> wb(w.size() * es), xb(x.size() * es), dyb(dy.size() * es);
  cpu_backend().cast(wb.data(), w.data(), OC * IC, dt);
  cpu_backend().cast(xb.data(), x.data(), BT * IC, dt);
  cpu_backend().cast(dyb.data(), dy.data(), BT * OC, dt);
  PoolArray<uint8_t> W = put(be, wb.data(), wb.size()), X = put(be, xb.data(), xb.size()),
                     DY = put(be, dyb.data(), dyb.size());
  PoolArray<uint8_t> Y(size_t(BT * OC) * es, Mem::workspace), DX(size_t(BT * IC) * es, Mem::workspace),
      WS(size_t(quant_panel_rows(IC, OC) * IC) * es, Mem::workspace);
  const DeviceQuant qn(be, nf4), qi(be, int8);

  auto median_ms = [&](auto fn) {
    fn();  // warm-up: primitives, caches
    be.synchronize();
    std::vector<double> t;
    for (int r = 0; r < reps; r++) {
      const auto t0 = std::chrono::steady_clock::now();
      fn();
      be.synchronize();
      t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() * 1e3);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  };
  // out and dinp read back as fp32: each quantized layer's against the bf16 layer's
  auto outputs = [&] {
    std::vector<uint8_t> y(Y.size()), dx(DX.size());
    be.copy(y.data(), Y.data(), y.size());
    be.copy(dx.data(), DX.data(), dx.size());
    std::vector<double> v;
    for (size_t i = 0; i < y.size() / es; i++) v.push_back(to_f32(reinterpret_cast<const bf16*>(y.data())[i]));
    for (size_t i = 0; i < dx.size() / es; i++) v.push_back(to_f32(reinterpret_cast<const bf16*>(dx.data())[i]));
    return v;
  };
  struct Row {
    std::string name;
    double fwd, bwd, mib, err;
  };
  std::vector<Row> rows;
  rows.push_back({"bf16 linear", median_ms([&] { be.linear_forward(Y.data(), X.data(), W.data(), nullptr, BT, IC, OC, dt); }),
                  median_ms([&] { be.linear_backward(DX.data(), nullptr, nullptr, DY.data(), X.data(), W.data(), BT, IC, OC, dt); }),
                  double(wb.size()) / (1 << 20), 0.0});
  const std::vector<double> ref_out = outputs();
  for (const DeviceQuant* q : {&qn, &qi}) {
    const QuantView v = q->v;
    Row r{std::string(quant_format_name(v.format)) + " linear",
          median_ms([&] { quant_linear_forward(be, Y.data(), X.data(), {v}, nullptr, WS.data(), BT, IC, OC, dt); }),
          median_ms([&] { quant_linear_backward(be, DX.data(), DY.data(), {v}, WS.data(), BT, IC, OC, dt); }),
          double(quant_bytes(v.format, OC * IC)) / (1 << 20), 0.0};
    const std::vector<double> out = outputs();
    double num = 0, den = 0;
    for (size_t i = 0; i < out.size(); i++) {
      num += (out[i] - ref_out[i]) * (out[i] - ref_out[i]);
      den += ref_out[i] * ref_out[i];
    }
    r.err = std::sqrt(num / den);
    rows.push_back(r);
    rows.push_back({std::string("  ") + quant_format_name(v.format) + " dequantize alone",
                    median_ms([&] {
                      const int64_t P = quant_panel_rows(IC, OC);
                      for (int64_t o0 = 0; o0 < OC; o0 += P) be.dequantize(WS.data(), v, o0, std::min(P, OC - o0), 0, IC, dt);
                    }),
                    0.0, 0.0, 0.0});
  }
  fmt::print("\nforward + backward (no weight gradient), BT {} IC {} OC {}, {} on {}{}, median of {}; panels: "
             "{} rows forward, workspace {:.1f} MiB\n",
             BT, IC, OC, dtype_name(dt), be.name(), cuda ? "" : fmt::format(" ({}, {} threads)", cpu_bf16_isa(), omp_get_max_threads()),
             reps, quant_panel_rows(IC, OC), double(WS.size()) / (1 << 20));
  fmt::print("  {:<24} {:>9} {:>9} {:>11} {:>13} {:>11} {:>14}\n", "", "fwd ms", "bwd ms", "fwd+bwd ms", "vs bf16",
             "weight MiB", "out, dinp err");
  const double ref = rows[0].fwd + rows[0].bwd;
  for (const Row& r : rows) {
    if (r.mib == 0) {
      fmt::print("  {:<24} {:>9.1f}\n", r.name, r.fwd);
      continue;
    }
    fmt::print("  {:<24} {:>9.1f} {:>9.1f} {:>11.1f} {:>12.2f}x {:>11.1f} {:>14.4f}\n", r.name, r.fwd, r.bwd, r.fwd + r.bwd,
               (r.fwd + r.bwd) / ref, r.mib, r.err);
  }
}
