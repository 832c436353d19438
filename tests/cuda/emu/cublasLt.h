// cuBLASLt as frugal calls it (src/backend/cuda/matmul.cpp), for the emulated device: the
// documented semantics of cublasLtMatmul on column-major layouts, D = alpha op(A) op(B) +
// beta C (C not read when beta is 0), plus bias[row] with the BIAS epilogues; GELU_AUX(_BIAS)
// writes that pre-activation x to the aux matrix (D's type, its own ld) and gelu(x) to D, DGELU
// writes x * gelu'(aux) (tanh GELU, as cuBLASLt's); products summed in double and rounded once
// to D's type, queued as device work (cuda_runtime.h). Layouts, attribute sizes, operand shapes
// and the aux ld (a multiple of 8, at least D's rows) are checked as cuBLASLt checks them
// (CUBLAS_STATUS_INVALID_VALUE). The heuristic offers the epilogues for 16-bit inputs only, so
// that both of matmul.cpp's paths (fused, and the kernels after) run.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "cuda_runtime.h"

enum cublasStatus_t { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7, CUBLAS_STATUS_NOT_SUPPORTED = 15 };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68 };
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cublasLtMatmulDescAttributes_t {
  CUBLASLT_MATMUL_DESC_TRANSA = 3,
  CUBLASLT_MATMUL_DESC_TRANSB = 4,
  CUBLASLT_MATMUL_DESC_EPILOGUE = 7,
  CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8,
  CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER = 11,
  CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD = 12,
  CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = 26,
};
enum cublasLtEpilogue_t {
  CUBLASLT_EPILOGUE_DEFAULT = 1,
  CUBLASLT_EPILOGUE_BIAS = 4,
  CUBLASLT_EPILOGUE_GELU_AUX = 160,
  CUBLASLT_EPILOGUE_GELU_AUX_BIAS = 164,
  CUBLASLT_EPILOGUE_DGELU = 192,
};
enum cublasLtMatmulPreferenceAttributes_t {
  CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8,
};
struct cublasLtMatmulAlgo_t {
  uint64_t data[8];
};
struct cublasLtMatmulHeuristicResult_t {
  cublasLtMatmulAlgo_t algo;
  size_t workspaceSize;
  cublasStatus_t state;
  float wavesCount;
  int reserved[4];
};
struct cublasLtContext {};
struct cublasLtMatmulDescOpaque_t {
  cublasOperation_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_N;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  int32_t bias_type = -1;
  void* aux = nullptr;
  int64_t aux_ld = 0;
};
struct cublasLtMatrixLayoutOpaque_t {
  cudaDataType_t type;
  uint64_t rows, cols;
  int64_t ld;
};
struct cublasLtMatmulPreferenceOpaque_t {};
using cublasLtHandle_t = cublasLtContext*;
using cublasLtMatmulDesc_t = cublasLtMatmulDescOpaque_t*;
using cublasLtMatrixLayout_t = cublasLtMatrixLayoutOpaque_t*;
using cublasLtMatmulPreference_t = cublasLtMatmulPreferenceOpaque_t*;

inline cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) { *h = new cublasLtContext; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) { delete h; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t c, cudaDataType_t scale) {
  if (c != CUBLAS_COMPUTE_32F || scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  *d = new cublasLtMatmulDescOpaque_t;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) { delete d; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, const void* buf, size_t n) {
  auto set = [&](auto& field) {
    if (n != sizeof(field)) return CUBLAS_STATUS_INVALID_VALUE;
    std::memcpy(&field, buf, n);
    return CUBLAS_STATUS_SUCCESS;
  };
  switch (a) {
    case CUBLASLT_MATMUL_DESC_TRANSA: return set(d->ta);
    case CUBLASLT_MATMUL_DESC_TRANSB: return set(d->tb);
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return set(d->epilogue);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return set(d->bias);
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: return set(d->bias_type);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER: return set(d->aux);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: return set(d->aux_ld);
  }
  return CUBLAS_STATUS_INVALID_VALUE;
}
inline cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* l, cudaDataType_t t, uint64_t rows, uint64_t cols, int64_t ld) {
  if (ld < int64_t(std::max<uint64_t>(rows, 1))) return CUBLAS_STATUS_INVALID_VALUE;  // column-major: ld >= rows
  *l = new cublasLtMatrixLayoutOpaque_t{t, rows, cols, ld};
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) { delete l; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) { *p = new cublasLtMatmulPreferenceOpaque_t; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) { delete p; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t a, const void*, size_t n) {
  return n == (a == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES ? sizeof(uint64_t) : sizeof(uint32_t)) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

namespace emu {
// The shapes of D = op(A) op(B) with C like D: CUBLAS_STATUS_SUCCESS when they agree.
inline cublasStatus_t check_matmul(cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t A, cublasLtMatrixLayout_t B,
                                   cublasLtMatrixLayout_t C, cublasLtMatrixLayout_t D) {
  const uint64_t am = d->ta == CUBLAS_OP_N ? A->rows : A->cols, ak = d->ta == CUBLAS_OP_N ? A->cols : A->rows;
  const uint64_t bk = d->tb == CUBLAS_OP_N ? B->rows : B->cols, bn = d->tb == CUBLAS_OP_N ? B->cols : B->rows;
  const bool ok = am == D->rows && bn == D->cols && ak == bk && C->rows == D->rows && C->cols == D->cols &&
                  A->type == B->type && C->type == D->type && (D->type == CUDA_R_32F || D->type == A->type);
  const auto e = d->epilogue;
  const bool bias = e == CUBLASLT_EPILOGUE_BIAS || e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
  const bool aux = e == CUBLASLT_EPILOGUE_GELU_AUX || e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS || e == CUBLASLT_EPILOGUE_DGELU;
  const bool epi_ok = (e == CUBLASLT_EPILOGUE_DEFAULT || bias || aux) && (!bias || (d->bias && d->bias_type == CUDA_R_32F)) &&
                      (!aux || (d->aux && d->aux_ld % 8 == 0 && d->aux_ld >= int64_t(D->rows)));
  return ok && epi_ok ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}
inline double gelu(double x) { return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }
inline double gelu_grad(double x) {
  const double t = std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x));
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x);
}
inline double element(const void* p, cudaDataType_t t, int64_t i) {
  switch (t) {
    case CUDA_R_16BF: return frugal::to_f32(static_cast<const frugal::bf16*>(p)[i]);
    case CUDA_R_16F: return frugal::to_f32(static_cast<const frugal::f16*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}
inline void set_element(void* p, cudaDataType_t t, int64_t i, double v) {
  switch (t) {
    case CUDA_R_16BF: static_cast<frugal::bf16*>(p)[i] = frugal::from_f32<frugal::bf16>(float(v)); break;
    case CUDA_R_16F: static_cast<frugal::f16*>(p)[i] = frugal::from_f32<frugal::f16>(float(v)); break;
    default: static_cast<float*>(p)[i] = float(v); break;
  }
}
}  // namespace emu

inline cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t A,
                                                     cublasLtMatrixLayout_t B, cublasLtMatrixLayout_t C,
                                                     cublasLtMatrixLayout_t D, cublasLtMatmulPreference_t, int requested,
                                                     cublasLtMatmulHeuristicResult_t* results, int* found) {
  *found = 0;
  if (cublasStatus_t st = emu::check_matmul(d, A, B, C, D)) return st;
  if (d->epilogue != CUBLASLT_EPILOGUE_DEFAULT && A->type == CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
  results[0] = cublasLtMatmulHeuristicResult_t{};
  *found = 1;
  return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t d, const void* alpha, const void* a,
                                     cublasLtMatrixLayout_t A, const void* b, cublasLtMatrixLayout_t B, const void* beta,
                                     const void* c, cublasLtMatrixLayout_t C, void* out, cublasLtMatrixLayout_t D,
                                     const cublasLtMatmulAlgo_t*, void*, size_t, cudaStream_t) {
  if (cublasStatus_t st = emu::check_matmul(d, A, B, C, D)) return st;
  // queued like any device work: descriptors and scalars as they are now
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  emu::enqueue([=, d = *d, A = *A, B = *B, C = *C, D = *D] {
    const int64_t M = int64_t(D.rows), N = int64_t(D.cols), K = int64_t(d.ta == CUBLAS_OP_N ? A.cols : A.rows);
    std::vector<double> at(M * K), bk(K * N), acc(M * N, 0.0);  // op(A) by rows, op(B) by rows
    for (int64_t i = 0; i < M; i++)
      for (int64_t p = 0; p < K; p++) at[i * K + p] = emu::element(a, A.type, d.ta == CUBLAS_OP_N ? i + p * A.ld : p + i * A.ld);
    for (int64_t p = 0; p < K; p++)
      for (int64_t j = 0; j < N; j++) bk[p * N + j] = emu::element(b, B.type, d.tb == CUBLAS_OP_N ? p + j * B.ld : j + p * B.ld);
    for (int64_t i = 0; i < M; i++)
      for (int64_t p = 0; p < K; p++)
        for (int64_t j = 0; j < N; j++) acc[i * N + j] += at[i * K + p] * bk[p * N + j];
    for (int64_t j = 0; j < N; j++)
      for (int64_t i = 0; i < M; i++) {
        double v = al * acc[i * N + j];
        if (be != 0.0f) v += be * emu::element(c, C.type, i + j * C.ld);
        if (d.epilogue == CUBLASLT_EPILOGUE_BIAS || d.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS)
          v += static_cast<const float*>(d.bias)[i];
        if (d.epilogue == CUBLASLT_EPILOGUE_GELU_AUX || d.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS) {
          emu::set_element(d.aux, D.type, i + j * d.aux_ld, v);
          v = emu::gelu(v);
        }
        if (d.epilogue == CUBLASLT_EPILOGUE_DGELU) v *= emu::gelu_grad(emu::element(d.aux, D.type, i + j * d.aux_ld));
        emu::set_element(out, D.type, i + j * D.ld, v);
      }
  });
  return CUBLAS_STATUS_SUCCESS;
}
