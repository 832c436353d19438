// The CUDA kernels' launchers (host functions, defined in the .cu files, one op family per
// file), and in device code the helpers they share. Kernels are templated on the storage type S
// (float, __nv_bfloat16, __half) and compute in fp32, as the CPU backend's. Every launcher
// issues its work on the compute stream (the legacy default stream) and returns at once; the
// caller checks cudaGetLastError. Shapes and semantics are those of the op in backend.h.
// No fmt here: nvcc cannot compile it.
#pragma once
#include <cstdint>

#include "backend/backend.h"

namespace frugal {

void launch_add(float* out, const float* a, const void* b, int64_t n, DType dt);
void launch_scale(void* x, float s, int64_t n, DType dt);
void launch_dropout(void* out, const void* in, int64_t n, float p, uint64_t seed, bool accumulate, DType dt);
void launch_attention_decode(void* out, const void* q, const void* k, const void* v, int64_t T, int64_t NH, int64_t NKV,
                             int64_t HS, DType dt, float* scratch);
// stream: a cudaStream_t (null: the compute stream)
void launch_cast(void* dst, const float* src, int64_t n, DType dt, void* stream = nullptr);
void launch_widen(float* dst, const void* src, int64_t n, DType dt, void* stream = nullptr);  // dt -> fp32
// slots(kReduceSlots) += partial sums of x(n), or of its squares, in double; their sum (in
// order) is the total
void launch_reduce(double* slots, const float* x, int64_t n, bool squares);
// One span of AdamW's parameters on the device; its elements are the blocks
// [first_block, first_block + ceil(n / kAdamWChunk)) of the launch.
struct AdamWSpanDev {
  float* param;
  const float* grad;
  float *m, *v;
  void* copy;  // null, or the compute copy in the launch's copy dtype
  int64_t n, first_block;
  int32_t decay;  // 1: weight decay applies
  int32_t pad = 0;  // no padding bytes: the backend compares spans bytewise
};
static_assert(sizeof(AdamWSpanDev) == 64);
constexpr int64_t kAdamWChunk = 4096;  // elements per block
// spans(count) in device memory, sorted by first_block; blocks: the total; decay: 1 - lr *
// weight_decay, for the spans that decay
void launch_adamw(const AdamWSpanDev* spans, int count, int64_t blocks, float beta1, float beta2,
                  float eps, float step_size, float bc2_sqrt, float grad_scale, float decay, DType copy_dt);
// C(M,N) row stride ldc, in dt: C += bias(N) per row
void launch_add_bias(void* C, const float* bias, int64_t M, int64_t N, int64_t ldc, DType dt);
// acc(cols) += part's rows (parts, row stride ld), in order
void launch_sum_parts(float* acc, const float* part, int64_t parts, int64_t cols, int64_t ld);
// acc(cols) += column sums of x(rows, cols) in dt; part: partial_rows(rows, kColumnParts) x cols scratch
void launch_column_sums(float* acc, float* part, const void* x, int64_t rows, int64_t cols, DType dt);
void launch_layernorm_forward(void* out, float* mean, float* rstd, const float* inp, const float* w,
                              const float* b, int64_t N, int64_t C, DType dt);
// part: partial_rows(N, kLayerNormParts) x 2 C scratch
void launch_layernorm_backward(float* dinp, float* dw, float* db, float* part, const void* dout,
                               const float* inp, const float* w, const float* mean, const float* rstd,
                               int64_t N, int64_t C, DType dt, void* dinp_copy);
void launch_rmsnorm_forward(void* out, float* rstd, const float* inp, const float* w, int64_t N, int64_t C,
                            float eps, DType dt);
// part: partial_rows(N, kLayerNormParts) x C scratch
void launch_rmsnorm_backward(float* dinp, float* dw, float* part, const void* dout, const float* inp,
                             const float* w, const float* rstd, int64_t N, int64_t C, DType dt, void* dinp_copy);
void launch_swiglu_forward(void* out, const void* gu, int64_t N, int64_t H, DType dt);
void launch_swiglu_backward(void* dgu, const void* gu, const void* dout, int64_t N, int64_t H, DType dt);
// cos, sin on the device
void launch_rope(void* x, const float* cos, const float* sin, int64_t B, int64_t T, int64_t stride,
                 int64_t num_heads, int64_t HS, bool inverse, DType dt);
void launch_gelu_forward(void* out, const void* inp, int64_t n, DType dt);
void launch_gelu_backward(void* dinp, const void* inp, const void* dout, int64_t n, DType dt);
// tokens on the device
void launch_embedding_forward(float* out, const int32_t* tokens, const void* wte, const void* wpe,
                              int64_t B, int64_t T, int64_t C, DType wdt);
// rows: the positions of dout grouped by token, on the device: starts(n_tokens + 1) into
// pos(B T), then tokens(n_tokens); each token's rows in increasing position
void launch_embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* rows,
                               int64_t n_tokens, int64_t B, int64_t T, int64_t C);
// targets on the device; logits in dt, overwritten by dlogits when grad_scale != 0
void launch_softmax_xent(void* logits, float* losses, const int32_t* targets, int64_t N, int64_t V,
                         int64_t Vp, float grad_scale, DType dt);
// q's buffers on the device
void launch_dequantize(void* out, const QuantView& q, int64_t row0, int64_t rows, int64_t col0, int64_t cols,
                       DType dt);
// Head sizes with a kernel: 16, 32, 64, 128.
bool attention_supports(int64_t HS);
void launch_attention_forward(void* out, float* lse, const void* qkv, int64_t B, int64_t T,
                              int64_t NH, int64_t NKV, int64_t HS, DType dt);
// D(B,NH,T) fp32 scratch: the row sums of dout * out
void launch_attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out,
                               const float* lse, float* D, int64_t B, int64_t T, int64_t NH,
                               int64_t NKV, int64_t HS, DType dt);

}  // namespace frugal

// Device code below is compiled by nvcc, or as C++ with FRUGAL_CUDA_EMU, where tests/cuda/emu/
// stands in for the CUDA headers and emulates the device on the CPU.
#if defined(__CUDACC__) || defined(FRUGAL_CUDA_EMU)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

namespace frugal {

// Launches kernel k(args) on stream (null: the compute stream) with smem bytes of dynamic
// shared memory.
template <class... P, class... A>
inline void launch_on(void* stream, void (*k)(P...), dim3 grid, dim3 block, size_t smem, A... args) {
#if defined(__CUDACC__)
  if (smem > 48 * 1024) cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  k<<<grid, block, smem, static_cast<cudaStream_t>(stream)>>>(args...);
#else
  ::emu::enqueue([=] { ::emu::run(grid, block, smem, [&] { k(args...); }); });  // one queue
#endif
}
template <class... P, class... A>
inline void launch(void (*k)(P...), dim3 grid, dim3 block, size_t smem, A... args) {
  launch_on(nullptr, k, grid, block, smem, args...);
}

// The block's dynamic shared memory as a T*.
#if defined(__CUDACC__)
#define DYNAMIC_SHARED(T, name)                                   \
  extern __shared__ __align__(128) unsigned char frugal_smem_[]; \
  T* name = reinterpret_cast<T*>(frugal_smem_)
#else
#define DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::emu::dynamic_smem)
#endif

// 16 bytes from global src to shared dst (both 16-byte aligned), asynchronously (cp.async,
// sm_80+: without passing through registers); zeros when ok is false (src must still be a
// valid address). The copies land by the async_wait that covers their group; other threads see
// them after a barrier.
__device__ __forceinline__ void copy16_async(void* dst, const void* src, bool ok) {
#if defined(__CUDACC__)
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(ok ? 16 : 0));
#else
  ::emu::copy_async(dst, src, ok);
#endif
}
// Closes the group of this thread's asynchronous copies issued since the last commit.
__device__ __forceinline__ void async_commit() {
#if defined(__CUDACC__)
  asm volatile("cp.async.commit_group;\n" ::);
#else
  ::emu::async_commit();
#endif
}
// Returns when at most `pending` of this thread's committed groups (the newest) are in flight.
template <int pending>
__device__ __forceinline__ void async_wait() {
#if defined(__CUDACC__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(pending) : "memory");
#else
  ::emu::async_wait(pending);
#endif
}

// 16 bytes from src to dst, both 16-byte aligned, in one load and one store.
__device__ __forceinline__ void copy16(void* dst, const void* src) {
#if defined(__CUDACC__)
  *static_cast<uint4*>(dst) = *static_cast<const uint4*>(src);
#else
  if (reinterpret_cast<uintptr_t>(dst) % 16 || reinterpret_cast<uintptr_t>(src) % 16) ::emu::fail("a 16-byte load misaligned");
  memcpy(dst, src, 16);
#endif
}

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
template <class S> __device__ __forceinline__ S from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }

// Calls f with a null pointer of the device storage type of d, to pick a kernel.
template <class F>
inline void dispatch_cuda(DType d, F&& f) {
  switch (d) {
    case DType::bf16: f(static_cast<__nv_bfloat16*>(nullptr)); break;
    case DType::f16: f(static_cast<__half*>(nullptr)); break;
    default: f(static_cast<float*>(nullptr)); break;
  }
}
#define STORAGE(p) std::remove_pointer_t<decltype(p)>

inline unsigned grid_for(int64_t n, int threads = 256) {  // at least 1: a launch of 0 blocks fails
  return unsigned(std::clamp<int64_t>((n + threads - 1) / threads, 1, int64_t(1) << 20));
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

#define GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

}  // namespace frugal
#endif
