// The CUDA backend: GEMMs through cuBLASLt (fp32, or bf16/fp16 with fp32 accumulation; bias
// fused as an epilogue where cuBLASLt offers it), own kernels for the rest, all on the compute
// stream (the legacy default stream, so that NcclComm's stream can order itself after it).
// This file and backend.cpp (host code, compiled by the C++ compiler) drive the kernels of
// kernels.h (one op family per .cu file). Scratch the backend owns (cuBLASLt workspace, token
// staging, reduction slots, attention's row sums, partial sums, AdamW's span table) comes from the
// MemoryPool as Mem::runtime, grows during the first step and never after.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <map>
#include <tuple>

#include "backend/backend.h"
#include "backend/cuda/kernels.h"
#include "core/core.h"

namespace frugal {

void cuda_check(cudaError_t e, const char* what, const char* file, int line);
#define CUDA_CHECK(x) ::frugal::cuda_check((x), #x, __FILE__, __LINE__)
// After a kernel launch: a bad configuration is reported at once.
#define CUDA_LAUNCHED() CUDA_CHECK(cudaGetLastError())

class CudaBackend final : public Backend {
 public:
  CudaBackend();
  ~CudaBackend() override;
  const char* name() const override { return "cuda"; }
  bool native_gemm(DType) const override { return true; }
  bool gpu() const override { return true; }
  int64_t memory_available() const override;
  void matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const void* A,
              int64_t lda, const void* B, int64_t ldb, void* C, int64_t ldc, DType ab, DType c,
              const float* bias, bool accumulate, PackedB* packed = nullptr) override;
  void linear_forward(void* out, const void* inp, const void* weight, const float* bias,
                      int64_t BT, int64_t IC, int64_t OC, DType dt) override;
  void linear_backward(void* dinp, float* dweight, float* dbias, const void* dout,
                       const void* inp, const void* weight, int64_t BT, int64_t IC, int64_t OC,
                       DType dt) override;
  void linear_gelu_forward(void* out, void* pre, const void* inp, const void* weight,
                           const float* bias, int64_t BT, int64_t IC, int64_t OC, DType dt) override;
  void linear_backward_gelu(void* dinp, float* dweight, float* dbias, const void* dout,
                            const void* inp, const void* pre, const void* weight, int64_t BT,
                            int64_t IC, int64_t OC, DType dt) override;
  void layernorm_forward(void* out, float* mean, float* rstd, const float* inp, const float* w,
                         const float* b, int64_t N, int64_t C, DType dt) override;
  void layernorm_backward(float* dinp, float* dw, float* db, const void* dout, const float* inp,
                          const float* w, const float* mean, const float* rstd, int64_t N,
                          int64_t C, DType dt, void* dinp_copy) override;
  void rmsnorm_forward(void* out, float* rstd, const float* inp, const float* w, int64_t N, int64_t C,
                       float eps, DType dt) override;
  void rmsnorm_backward(float* dinp, float* dw, const void* dout, const float* inp, const float* w,
                        const float* rstd, int64_t N, int64_t C, DType dt, void* dinp_copy) override;
  void swiglu_forward(void* out, const void* gu, int64_t N, int64_t H, DType dt) override;
  void swiglu_backward(void* dgu, const void* gu, const void* dout, int64_t N, int64_t H, DType dt) override;
  void rope(void* x, const float* cos, const float* sin, int64_t B, int64_t T, int64_t stride,
            int64_t num_heads, int64_t HS, bool inverse, DType dt) override;
  void gelu_forward(void* out, const void* inp, int64_t n, DType dt) override;
  void gelu_backward(void* dinp, const void* inp, const void* dout, int64_t n, DType dt) override;
  void attention_forward(void* out, float* lse, const void* qkv, int64_t B, int64_t T,
                         int64_t NH, int64_t NKV, int64_t HS, DType dt) override;
  void attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out,
                          const float* lse, int64_t B, int64_t T, int64_t NH, int64_t NKV,
                          int64_t HS, DType dt) override;
  void attention_decode(void* out, const void* q, const void* k, const void* v, int64_t T, int64_t NH, int64_t NKV,
                        int64_t HS, DType dt, float* scratch) override;
  void embedding_forward(float* out, const int32_t* tokens, const void* wte, const void* wpe,
                         int64_t B, int64_t T, int64_t C, DType wdt) override;
  void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                          int64_t B, int64_t T, int64_t C) override;
  void add(float* out, const float* a, const void* b, int64_t n, DType dt) override;
  void cast(void* dst, const float* src, int64_t n, DType dt) override;
  void dequantize(void* out, const QuantView& q, int64_t row0, int64_t rows, int64_t col0, int64_t cols,
                  DType dt) override;
  void scale(void* x, float s, int64_t n, DType dt) override;
  void dropout(void* out, const void* in, int64_t n, float p, uint64_t seed, bool accumulate, DType dt) override;
  void softmax_xent(void* logits, float* losses, const int32_t* targets, int64_t N, int64_t V,
                    int64_t Vp, float grad_scale, DType dt) override;
  void adamw(const std::vector<AdamWSpan>& spans, const AdamWArgs& a, DType copy_dt) override;
  using Backend::sum_squares;
  double sum_squares(const std::vector<FloatSpan>& spans) override;
  void fill_zero(float* x, int64_t n) override;
  double sum(const float* x, int64_t n) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void synchronize() override;

 private:
  // Device scratch that grows to the largest request, then stays.
  struct Scratch {
    void* p = nullptr;
    size_t bytes = 0;
  };
  void* grow(Scratch& s, size_t bytes);
  template <class T>
  T* scratch(Scratch& s, int64_t n) { return static_cast<T*>(grow(s, size_t(n) * sizeof(T))); }
  // A device copy of tokens or targets(n), which the caller holds in host memory.
  const int32_t* stage(const int32_t* idx, int64_t n);
  struct Pinned {  // a staging slot of pinned_n_ elements
    int32_t* host = nullptr;
    cudaEvent_t done = nullptr;  // its last copy
  };
  std::array<Pinned, 4> pinned_;
  int64_t pinned_n_ = 0;
  unsigned next_pinned_ = 0;
  std::vector<int64_t> keys_;  // embedding_backward's (token, position) pairs
  std::vector<int32_t> rows_by_token_;
  double reduce(const std::vector<FloatSpan>& spans, bool squares);

  enum class Gelu { none, forward, backward };
  bool gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void* A, int64_t lda,
            const void* B, int64_t ldb, void* C, int64_t ldc, DType ab, DType c, const float* bias,
            bool accumulate, Gelu gelu, void* aux);
  struct GemmPlan;  // cuBLASLt descriptors and the chosen algorithm for one shape
  using GemmKey = std::tuple<bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int,
                             int, bool, bool, int, int>;
  std::map<GemmKey, GemmPlan*> gemms_;
  cublasLtHandle_t lt_ = nullptr;
  Scratch lt_ws_, idx_, red_, rows_, part_, adamw_;
  std::vector<AdamWSpanDev> adamw_sent_, adamw_next_;  // the span table in adamw_, and this call's
  double* red_host_ = nullptr;  // pinned, kReduceSlots
};

}  // namespace frugal
