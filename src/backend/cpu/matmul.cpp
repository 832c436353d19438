// matmul and linear layers on dnnl_sgemm (row-major, oneDNN's gemm:jit).
#include <oneapi/dnnl/dnnl.h>

#include <cstring>

#include "backend/cpu/cpu.h"
#include "core/core.h"

namespace frugal {

void CpuBackend::matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                        const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                        float* C, int64_t ldc) {
  dnnl_status_t s = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda,
                               B, ldb, beta, C, ldc);
  FRUGAL_CHECK(s == dnnl_success, "dnnl_sgemm({}x{}x{}) failed with status {}", M, N, K, int(s));
}

// out(BT,OC) = inp(BT,IC) weight(OC,IC)^T + bias(OC)
void CpuBackend::linear_forward(float* out, const float* inp, const float* weight,
                                const float* bias, int64_t BT, int64_t IC, int64_t OC) {
  float beta = 0.0f;
  if (bias) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < BT; r++) std::memcpy(out + r * OC, bias, OC * sizeof(float));
    beta = 1.0f;
  }
  matmul(false, true, BT, OC, IC, 1.0f, inp, IC, weight, IC, beta, out, OC);
}

void CpuBackend::linear_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                                 const float* inp, const float* weight, int64_t BT, int64_t IC,
                                 int64_t OC) {
  if (dinp) matmul(false, false, BT, IC, OC, 1.0f, dout, OC, weight, IC, 0.0f, dinp, IC);
  matmul(true, false, OC, IC, BT, 1.0f, dout, OC, inp, IC, 1.0f, dweight, IC);
  if (dbias) {
    // column sums of dout(BT,OC): each thread owns a range of columns, rows in order.
#pragma omp parallel for schedule(static)
    for (int64_t c0 = 0; c0 < OC; c0 += 64) {
      int64_t c1 = c0 + 64 < OC ? c0 + 64 : OC;
      float acc[64] = {};
      for (int64_t r = 0; r < BT; r++) {
        const float* row = dout + r * OC;
#pragma omp simd
        for (int64_t c = c0; c < c1; c++) acc[c - c0] += row[c];
      }
      for (int64_t c = c0; c < c1; c++) dbias[c] += acc[c - c0];
    }
  }
}

}  // namespace frugal
