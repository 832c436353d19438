// The quantized linear layers (QLoRA's frozen base) over the op table: a panel of the weight
// dequantized into the caller's workspace, then one GEMM per panel into its column block of the
// output. Forward takes panels of W's rows (out's columns), backward panels of W's columns
// (dinp's columns): each output element is then one GEMM's fp32 sum over the whole reduction,
// rounded once to dt, as linear_forward / linear_backward give it. (Panels of rows in backward
// would sum the panels' products through dt, or need an fp32 accumulator of dinp's size; the
// CPU backend's widened fp16 GEMMs cannot accumulate into a 16-bit output at all.)
#include <algorithm>

#include "backend/backend.h"
#include "core/core.h"

namespace frugal {

constexpr int64_t kPanelValues = int64_t(1) << 21;  // 4 MiB in a 16-bit dtype, 8 MiB in fp32

int64_t quant_panel_rows(int64_t IC, int64_t OC) {
  int64_t rows = std::max<int64_t>(1, kPanelValues / IC);
  if (rows >= 64) rows = rows / 64 * 64;
  rows = std::max(rows, (OC + IC - 1) / IC);
  return std::min(rows, OC);
}

// Columns of W per backward panel: (OC, cols) within quant_panel_rows(IC, OC) x IC values.
static int64_t quant_panel_cols(int64_t IC, int64_t OC) {
  int64_t cols = quant_panel_rows(IC, OC) * IC / OC;
  if (cols >= 64) cols = cols / 64 * 64;
  return std::min(cols, IC);
}

static void check_shape(const char* op, const QuantStack& w, int64_t IC, int64_t OC) {
  int64_t rows = 0;
  for (const QuantView& v : w) {
    FRUGAL_CHECK(v.cols == IC, "{}: a ({}, {}) {} part for IC {}", op, v.rows, v.cols, quant_format_name(v.format), IC);
    rows += v.rows;
  }
  FRUGAL_CHECK(rows == OC, "{}: parts of {} rows in all for OC {}", op, rows, OC);
}

// ws(rows, cols) in dt = W[r0 : r0 + rows, c0 : c0 + cols] of the stacked parts.
static void dequantize_stack(Backend& be, void* ws, const QuantStack& w, int64_t r0, int64_t rows, int64_t c0,
                             int64_t cols, DType dt) {
  int64_t first = 0;  // the stack's row where part v begins
  for (const QuantView& v : w) {
    const int64_t lo = std::max(r0, first), hi = std::min(r0 + rows, first + v.rows);
    if (lo < hi)
      be.dequantize(static_cast<char*>(ws) + size_t((lo - r0) * cols) * dtype_size(dt), v, lo - first, hi - lo, c0,
                    cols, dt);
    first += v.rows;
  }
}

void quant_linear_forward(Backend& be, void* out, const void* inp, const QuantStack& w, const float* bias,
                          void* ws, int64_t BT, int64_t IC, int64_t OC, DType dt) {
  check_shape("quant_linear_forward", w, IC, OC);
  const int64_t P = quant_panel_rows(IC, OC);
  const size_t es = dtype_size(dt);
  for (int64_t o0 = 0; o0 < OC; o0 += P) {
    const int64_t m = std::min(P, OC - o0);
    dequantize_stack(be, ws, w, o0, m, 0, IC, dt);  // ws(m, IC) = W[o0 : o0 + m]
    be.matmul(false, true, BT, m, IC, inp, IC, ws, IC, static_cast<char*>(out) + size_t(o0) * es, OC, dt, dt,
              bias ? bias + o0 : nullptr, false);
  }
}

void quant_linear_backward(Backend& be, void* dinp, const void* dout, const QuantStack& w, void* ws,
                           int64_t BT, int64_t IC, int64_t OC, DType dt) {
  check_shape("quant_linear_backward", w, IC, OC);
  const int64_t K = quant_panel_cols(IC, OC);
  const size_t es = dtype_size(dt);
  for (int64_t c0 = 0; c0 < IC; c0 += K) {
    const int64_t k = std::min(K, IC - c0);
    dequantize_stack(be, ws, w, 0, OC, c0, k, dt);  // ws(OC, k) = W[:, c0 : c0 + k]
    be.matmul(false, false, BT, k, OC, dout, OC, ws, k, static_cast<char*>(dinp) + size_t(c0) * es, IC, dt, dt,
              nullptr, false);
  }
}

}  // namespace frugal
