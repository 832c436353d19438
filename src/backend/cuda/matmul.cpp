// GEMMs and linear layers through cuBLASLt, fp32 accumulation (fp32 inputs: plain fp32, no
// TF32). Row-major C(M,N) = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, so the operands
// are passed swapped. The bias is a cuBLASLt epilogue where an algorithm for it exists, else a
// kernel after the GEMM; so is the MLP's GELU (forward, and its gradient in backward), else
// the GELU kernels. Descriptors and the algorithm are chosen once per shape and pointer
// alignment, then cached.
#include "backend/cuda/cuda.h"

namespace frugal {

#define LT_CHECK(x)                                                                          \
  do {                                                                                       \
    cublasStatus_t st_ = (x);                                                                \
    FRUGAL_CHECK(st_ == CUBLAS_STATUS_SUCCESS, "{} failed with cublas status {}", #x, int(st_)); \
  } while (0)

struct CudaBackend::GemmPlan {
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t a, b, c;
  cublasLtMatmulAlgo_t algo;
  bool fused;  // the epilogue asked for runs in the GEMM (else: bias kernel after; no GELU plan)
};

static cudaDataType_t cuda_type(DType d) {
  return d == DType::f32 ? CUDA_R_32F : d == DType::bf16 ? CUDA_R_16BF : CUDA_R_16F;
}

static int alignment(const void* p) {
  int a = 1;
  while (a < 256 && (reinterpret_cast<uintptr_t>(p) % (2 * a)) == 0) a *= 2;
  return a;
}

CudaBackend::~CudaBackend() {
  for (auto& [key, p] : gemms_) {
    cublasLtMatmulDescDestroy(p->desc);
    cublasLtMatrixLayoutDestroy(p->a);
    cublasLtMatrixLayoutDestroy(p->b);
    cublasLtMatrixLayoutDestroy(p->c);
    delete p;
  }
  cublasLtDestroy(lt_);
}

void CudaBackend::matmul(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void* A,
                         int64_t lda, const void* B, int64_t ldb, void* C, int64_t ldc, DType ab,
                         DType c, const float* bias, bool accumulate, PackedB*) {
  gemm(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, ab, c, bias, accumulate, Gelu::none, nullptr);
}

// The GELU epilogues take aux(M,N) with C's leading dimension (a multiple of 8, as cuBLASLt
// requires): forward writes the pre-activation there and gelu of it to C; backward reads it
// and writes (A B) * gelu'(aux) to C. Returns false, having done nothing, for fp32 (whose
// tolerance a fast tanh in the epilogue could exceed: its own kernels are exact) and where
// cuBLASLt has no algorithm for the GELU epilogue; the caller then runs the two ops.
bool CudaBackend::gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void* A, int64_t lda,
                       const void* B, int64_t ldb, void* C, int64_t ldc, DType ab, DType c,
                       const float* bias, bool accumulate, Gelu gelu, void* aux) {
  FRUGAL_CHECK(c == DType::f32 || c == ab, "matmul {} x {} -> {}", dtype_name(ab), dtype_name(ab), dtype_name(c));
  FRUGAL_CHECK(gelu == Gelu::none || (aux && c == ab && !accumulate && (gelu == Gelu::forward || !bias)),
               "matmul with a GELU epilogue: aux, the compute dtype out, no accumulation, no bias backward");
  if (gelu != Gelu::none && (ab == DType::f32 || ldc % 8 || (bias && alignment(bias) < 16))) return false;
  int align = std::min({alignment(A), alignment(B), alignment(C)});
  if (aux) align = std::min(align, alignment(aux));
  const bool want_bias = bias && alignment(bias) >= 16;
  GemmKey key{ta, tb, M, N, K, lda, ldb, ldc, int(ab), int(c), want_bias, accumulate, align, int(gelu)};
  auto it = gemms_.find(key);
  if (it == gemms_.end()) {
    auto* p = new GemmPlan{};
    const cudaDataType_t t = cuda_type(ab);
    LT_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t op_first = tb ? CUBLAS_OP_T : CUBLAS_OP_N, op_second = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    LT_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first)));
    LT_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second)));
    // first operand: B as stored, column-major view (N,K) or (K,N); second: A, (K,M) or (M,K)
    LT_CHECK(cublasLtMatrixLayoutCreate(&p->a, t, tb ? K : N, tb ? N : K, ldb));
    LT_CHECK(cublasLtMatrixLayoutCreate(&p->b, t, ta ? M : K, ta ? K : M, lda));
    LT_CHECK(cublasLtMatrixLayoutCreate(&p->c, cuda_type(c), N, M, ldc));
    cublasLtMatmulPreference_t pref;
    LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &kGemmWorkspace, sizeof(kGemmWorkspace)));
    uint32_t al = uint32_t(align);
    for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
      LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &al, sizeof(al)));
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    const cublasLtEpilogue_t epi = gelu == Gelu::forward ? (want_bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX)
                                   : gelu == Gelu::backward ? CUBLASLT_EPILOGUE_DGELU
                                   : want_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    if (epi != CUBLASLT_EPILOGUE_DEFAULT) {
      LT_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
      if (want_bias) {  // bias vector: fp32, length N (the rows of column-major D)
        int32_t bias_type = CUDA_R_32F;
        LT_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
        LT_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
      }
      if (gelu != Gelu::none) {  // the heuristic reads the pointer for its alignment
        LT_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ldc, sizeof(ldc)));
        LT_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
      }
      if (cublasLtMatmulAlgoGetHeuristic(lt_, p->desc, p->a, p->b, p->c, p->c, pref, 1, &res, &found) != CUBLAS_STATUS_SUCCESS)
        found = 0;
      p->fused = found > 0;
      if (!found) {  // no fused algorithm for this combination: plain GEMM, bias kernel after
        cublasLtEpilogue_t none = CUBLASLT_EPILOGUE_DEFAULT;
        LT_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &none, sizeof(none)));
      }
    }
    if (!found)
      LT_CHECK(cublasLtMatmulAlgoGetHeuristic(lt_, p->desc, p->a, p->b, p->c, p->c, pref, 1, &res, &found));
    cublasLtMatmulPreferenceDestroy(pref);
    FRUGAL_CHECK(found > 0, "cuBLASLt has no algorithm for matmul ta={} tb={} M={} N={} K={} {} -> {}",
                 ta, tb, M, N, K, dtype_name(ab), dtype_name(c));
    p->algo = res.algo;
    it = gemms_.emplace(key, p).first;
  }
  GemmPlan& p = *it->second;
  if (gelu != Gelu::none && !p.fused) return false;
  if (p.fused && want_bias)
    LT_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  if (p.fused && gelu != Gelu::none)
    LT_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  LT_CHECK(cublasLtMatmul(lt_, p.desc, &alpha, B, p.a, A, p.b, &beta, C, p.c, C, p.c, &p.algo, scratch<char>(lt_ws_, kGemmWorkspace),
                          kGemmWorkspace, 0));
  if (bias && !p.fused) {
    launch_add_bias(C, bias, M, N, ldc, c);
    CUDA_LAUNCHED();
  }
  return true;
}

void CudaBackend::linear_forward(void* out, const void* inp, const void* weight, const float* bias,
                                 int64_t BT, int64_t IC, int64_t OC, DType dt) {
  matmul(false, true, BT, OC, IC, inp, IC, weight, IC, out, OC, dt, dt, bias, false);
}

void CudaBackend::linear_gelu_forward(void* out, void* pre, const void* inp, const void* weight,
                                      const float* bias, int64_t BT, int64_t IC, int64_t OC, DType dt) {
  if (!gemm(false, true, BT, OC, IC, inp, IC, weight, IC, out, OC, dt, dt, bias, false, Gelu::forward, pre))
    Backend::linear_gelu_forward(out, pre, inp, weight, bias, BT, IC, OC, dt);
}

void CudaBackend::linear_backward(void* dinp, float* dweight, float* dbias, const void* dout,
                                  const void* inp, const void* weight, int64_t BT, int64_t IC,
                                  int64_t OC, DType dt) {
  linear_backward_gelu(dinp, dweight, dbias, dout, inp, nullptr, weight, BT, IC, OC, dt);
}

void CudaBackend::linear_backward_gelu(void* dinp, float* dweight, float* dbias, const void* dout,
                                       const void* inp, const void* pre, const void* weight,
                                       int64_t BT, int64_t IC, int64_t OC, DType dt) {
  if (dweight) matmul(true, false, OC, IC, BT, dout, OC, inp, IC, dweight, IC, dt, DType::f32, nullptr, true);
  if (dbias) {
    launch_column_sums(dbias, scratch<float>(part_, partial_rows(BT, kColumnParts) * OC), dout, BT, OC, dt);
    CUDA_LAUNCHED();
  }
  if (!dinp) return;
  void* aux = const_cast<void*>(pre);
  if (pre && gemm(false, false, BT, IC, OC, dout, OC, weight, IC, dinp, IC, dt, dt, nullptr, false, Gelu::backward, aux))
    return;
  matmul(false, false, BT, IC, OC, dout, OC, weight, IC, dinp, IC, dt, dt, nullptr, false);
  if (pre) gelu_backward(dinp, pre, dinp, BT * IC, dt);
}

}  // namespace frugal
