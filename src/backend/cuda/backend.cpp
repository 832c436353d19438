// The CUDA backend object, device memory behind the MemoryPool, token staging, reductions, and
// the ops that are one kernel launch each.
#include <cmath>
#include <cstring>

#include "backend/cuda/cuda.h"

namespace frugal {

void cuda_check(cudaError_t e, const char* what, const char* file, int line) {
  if (e == cudaSuccess) return;
  check_failed(file, line, what, fmt::format("failed: {}", cudaGetErrorString(e)));
}

// Plain device memory, zero-filled. The host never reads or writes it directly: it goes
// through Backend::copy. Never more than the device has free, less a margin for the CUDA
// libraries' own allocations, so that running out is frugal's out-of-memory report.
static void* device_alloc(size_t bytes) {
  size_t free_b = 0, total = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total));
  void* p = nullptr;
  if (bytes + (size_t(64) << 20) > free_b || cudaMalloc(&p, bytes) != cudaSuccess) return nullptr;
  CUDA_CHECK(cudaMemset(p, 0, bytes));
  return p;
}
static void device_free(void* p) { CUDA_CHECK(cudaFree(p)); }
// A kept block's next use is ordered after its last one by the compute stream (and after NCCL's,
// whose work the host has waited for before releasing anything it touched).
static void device_zero(void* p, size_t bytes) { CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, 0)); }
static constexpr Allocator kDevice{device_alloc, device_free, device_zero};

int64_t CudaBackend::memory_available() const {
  size_t free_b = 0, total = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total));
  return std::max<int64_t>(0, int64_t(free_b) - (int64_t(64) << 20));  // device_alloc's margin
}

Backend& cuda_backend() {
  static CudaBackend* b = [] {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0)
      user_error("device.backend = cuda: no CUDA device ({})", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    MemoryPool::get().set_allocator(kDevice);
    return new CudaBackend();  // lives as long as the process
  }();
  return *b;
}

CudaBackend::CudaBackend() {
  FRUGAL_CHECK(cublasLtCreate(&lt_) == CUBLAS_STATUS_SUCCESS, "cublasLtCreate");
  CUDA_CHECK(cudaMallocHost(&red_host_, kReduceSlots * sizeof(double)));
}

void CudaBackend::synchronize() { CUDA_CHECK(cudaDeviceSynchronize()); }

// In order with the compute stream's work; host-synchronous for every direction.
void CudaBackend::copy(void* dst, const void* src, size_t bytes) {
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, 0));
  CUDA_CHECK(cudaStreamSynchronize(0));
}

// The old buffer goes back to the pool, freed (cudaFree waits for the device) or kept for a
// later request, which the compute stream orders after the ops that may still read it.
void* CudaBackend::grow(Scratch& s, size_t bytes) {
  if (bytes > s.bytes) {
    if (s.p) MemoryPool::get().release(s.p);
    s.p = MemoryPool::get().alloc(bytes, Mem::runtime, kDevice);
    s.bytes = bytes;
  }
  return s.p;
}

// Through pinned slots, in turn, so that the copy is queued like a kernel: one out of pageable
// memory may wait for the whole stream, and the lm head stages targets once per chunk. A slot
// is refilled once its last copy is done (an event a few stagings old: the host does not wait
// for the device to run dry). The device buffer is one: each copy into it is queued after the
// kernel that read the one before.
const int32_t* CudaBackend::stage(const int32_t* idx, int64_t n) {
  int32_t* d = scratch<int32_t>(idx_, n);
  Pinned& s = pinned_[next_pinned_++ % pinned_.size()];
  const size_t bytes = size_t(n) * sizeof(int32_t);
  if (n > pinned_n_) {  // every slot grows to the largest request yet: in the first step only
    for (Pinned& p : pinned_) {
      if (p.done) CUDA_CHECK(cudaEventSynchronize(p.done));
      if (p.host) CUDA_CHECK(cudaFreeHost(p.host));
      CUDA_CHECK(cudaMallocHost(&p.host, bytes));
    }
    pinned_n_ = n;
  }
  if (s.done) CUDA_CHECK(cudaEventSynchronize(s.done));
  else CUDA_CHECK(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
  std::memcpy(s.host, idx, bytes);
  CUDA_CHECK(cudaMemcpyAsync(d, s.host, bytes, cudaMemcpyHostToDevice, 0));
  CUDA_CHECK(cudaEventRecord(s.done, 0));
  return d;
}

// Slots that every span's launch adds its blocks' partial sums to, in order; the host waits
// once, then adds the slots up in order: the same bits every run.
double CudaBackend::reduce(const std::vector<FloatSpan>& spans, bool squares) {
  double* d = scratch<double>(red_, kReduceSlots);
  CUDA_CHECK(cudaMemsetAsync(d, 0, kReduceSlots * sizeof(double), 0));
  for (const FloatSpan& s : spans) {
    if (s.n == 0) continue;
    launch_reduce(d, s.x, s.n, squares);
    CUDA_LAUNCHED();
  }
  CUDA_CHECK(cudaMemcpyAsync(red_host_, d, kReduceSlots * sizeof(double), cudaMemcpyDeviceToHost, 0));
  CUDA_CHECK(cudaStreamSynchronize(0));
  double total = 0.0;
  for (int i = 0; i < kReduceSlots; i++) total += red_host_[i];
  return total;
}

double CudaBackend::sum_squares(const std::vector<FloatSpan>& spans) { return reduce(spans, true); }
double CudaBackend::sum(const float* x, int64_t n) { return reduce({{x, n}}, false); }

void CudaBackend::fill_zero(float* x, int64_t n) {
  CUDA_CHECK(cudaMemsetAsync(x, 0, size_t(n) * sizeof(float), 0));
}

void CudaBackend::add(float* out, const float* a, const void* b, int64_t n, DType dt) {
  launch_add(out, a, b, n, dt);
  CUDA_LAUNCHED();
}

void CudaBackend::cast(void* dst, const float* src, int64_t n, DType dt) {
  launch_cast(dst, src, n, dt);
  CUDA_LAUNCHED();
}

void CudaBackend::attention_decode(void* out, const void* q, const void* k, const void* v, int64_t T, int64_t NH,
                                   int64_t NKV, int64_t HS, DType dt, float* scratch) {
  launch_attention_decode(out, q, k, v, T, NH, NKV, HS, dt, scratch);
  CUDA_LAUNCHED();
}

void CudaBackend::dropout(void* out, const void* in, int64_t n, float p, uint64_t seed, bool accumulate, DType dt) {
  launch_dropout(out, in, n, p, seed, accumulate, dt);
  CUDA_LAUNCHED();
}

void CudaBackend::scale(void* x, float s, int64_t n, DType dt) {
  launch_scale(x, s, n, dt);
  CUDA_LAUNCHED();
}

void CudaBackend::dequantize(void* out, const QuantView& q, int64_t row0, int64_t rows, int64_t col0,
                             int64_t cols, DType dt) {
  FRUGAL_CHECK(row0 >= 0 && col0 >= 0 && rows >= 0 && cols >= 0 && row0 + rows <= q.rows && col0 + cols <= q.cols,
               "dequantize rows [{}, {}) cols [{}, {}) of a ({}, {}) {} matrix", row0, row0 + rows, col0,
               col0 + cols, q.rows, q.cols, quant_format_name(q.format));
  if (rows == 0 || cols == 0) return;
  launch_dequantize(out, q, row0, rows, col0, cols, dt);
  CUDA_LAUNCHED();
}


// The span table (pointers, sizes, decay flags: nothing that changes per step, such as the
// learning rate) goes to the device only when it changes, the first step in practice: a
// blocking copy, in order with the compute stream, so that no earlier launch still reads it.
void CudaBackend::adamw(const std::vector<AdamWSpan>& spans, const AdamWArgs& a, DType copy_dt) {
  if (spans.empty()) return;
  // the scalars exactly as the CPU backend computes them
  const float bc1 = 1.0f - std::pow(a.beta1, float(a.step));
  const float bc2_sqrt = std::sqrt(1.0f - std::pow(a.beta2, float(a.step)));
  const float step_size = a.lr / bc1, decay = 1.0f - a.lr * a.weight_decay;
  adamw_next_.clear();
  int64_t blocks = 0;
  bool copies = false;
  for (const AdamWSpan& s : spans) {
    adamw_next_.push_back({s.param, s.grad, s.m, s.v, s.copy, s.n, blocks, s.decay});
    blocks += (s.n + kAdamWChunk - 1) / kAdamWChunk;
    copies |= s.copy != nullptr;
  }
  const size_t bytes = adamw_next_.size() * sizeof(AdamWSpanDev);
  if (adamw_next_.size() != adamw_sent_.size() || std::memcmp(adamw_next_.data(), adamw_sent_.data(), bytes) != 0) {
    CUDA_CHECK(cudaMemcpy(scratch<char>(adamw_, int64_t(bytes)), adamw_next_.data(), bytes, cudaMemcpyHostToDevice));
    adamw_sent_.swap(adamw_next_);
  }
  launch_adamw(static_cast<const AdamWSpanDev*>(adamw_.p), int(spans.size()), blocks, a.beta1, a.beta2, a.eps,
               step_size, bc2_sqrt, a.grad_scale, decay, copies ? copy_dt : DType::f32);
  CUDA_LAUNCHED();
}

void CudaBackend::layernorm_forward(void* out, float* mean, float* rstd, const float* inp,
                                    const float* w, const float* b, int64_t N, int64_t C, DType dt) {
  launch_layernorm_forward(out, mean, rstd, inp, w, b, N, C, dt);
  CUDA_LAUNCHED();
}

void CudaBackend::layernorm_backward(float* dinp, float* dw, float* db, const void* dout,
                                     const float* inp, const float* w, const float* mean,
                                     const float* rstd, int64_t N, int64_t C, DType dt,
                                     void* dinp_copy) {
  float* part = scratch<float>(part_, partial_rows(N, kLayerNormParts) * 2 * C);
  launch_layernorm_backward(dinp, dw, db, part, dout, inp, w, mean, rstd, N, C, dt, dinp_copy);
  CUDA_LAUNCHED();
}

void CudaBackend::rmsnorm_forward(void* out, float* rstd, const float* inp, const float* w, int64_t N,
                                  int64_t C, float eps, DType dt) {
  launch_rmsnorm_forward(out, rstd, inp, w, N, C, eps, dt);
  CUDA_LAUNCHED();
}

void CudaBackend::rmsnorm_backward(float* dinp, float* dw, const void* dout, const float* inp, const float* w,
                                   const float* rstd, int64_t N, int64_t C, DType dt, void* dinp_copy) {
  float* part = scratch<float>(part_, partial_rows(N, kLayerNormParts) * C);
  launch_rmsnorm_backward(dinp, dw, part, dout, inp, w, rstd, N, C, dt, dinp_copy);
  CUDA_LAUNCHED();
}

void CudaBackend::swiglu_forward(void* out, const void* gu, int64_t N, int64_t H, DType dt) {
  launch_swiglu_forward(out, gu, N, H, dt);
  CUDA_LAUNCHED();
}

void CudaBackend::swiglu_backward(void* dgu, const void* gu, const void* dout, int64_t N, int64_t H, DType dt) {
  launch_swiglu_backward(dgu, gu, dout, N, H, dt);
  CUDA_LAUNCHED();
}

void CudaBackend::rope(void* x, const float* cos, const float* sin, int64_t B, int64_t T, int64_t stride,
                       int64_t num_heads, int64_t HS, bool inverse, DType dt) {
  launch_rope(x, cos, sin, B, T, stride, num_heads, HS, inverse, dt);
  CUDA_LAUNCHED();
}

void CudaBackend::gelu_forward(void* out, const void* inp, int64_t n, DType dt) {
  launch_gelu_forward(out, inp, n, dt);
  CUDA_LAUNCHED();
}

void CudaBackend::gelu_backward(void* dinp, const void* inp, const void* dout, int64_t n, DType dt) {
  launch_gelu_backward(dinp, inp, dout, n, dt);
  CUDA_LAUNCHED();
}

void CudaBackend::embedding_forward(float* out, const int32_t* tokens, const void* wte,
                                    const void* wpe, int64_t B, int64_t T, int64_t C, DType wdt) {
  launch_embedding_forward(out, stage(tokens, B * T), wte, wpe, B, T, C, wdt);
  CUDA_LAUNCHED();
}

// The positions grouped by token, in increasing order within each (the kernel's layout), so
// that the device adds each token's rows in one fixed order.
void CudaBackend::embedding_backward(float* dwte, float* dwpe, const float* dout,
                                     const int32_t* tokens, int64_t B, int64_t T, int64_t C) {
  const int64_t BT = B * T;
  keys_.resize(size_t(BT));
  for (int64_t i = 0; i < BT; i++) keys_[i] = int64_t(tokens[i]) << 32 | i;
  std::sort(keys_.begin(), keys_.end());
  std::vector<int32_t>& r = rows_by_token_;
  r.assign(1, 0);  // starts, then positions, then tokens
  for (int64_t i = 0; i < BT; i++)
    if (i + 1 == BT || keys_[i + 1] >> 32 != keys_[i] >> 32) r.push_back(int32_t(i + 1));
  const int64_t n_tokens = int64_t(r.size()) - 1;
  for (int64_t i = 0; i < BT; i++) r.push_back(int32_t(keys_[i] & 0xffffffff));
  for (int64_t k = 0; k < n_tokens; k++) r.push_back(int32_t(keys_[r[k]] >> 32));
  r.resize(size_t(3 * BT + 1));  // its size with every token distinct: its buffers grow once
  launch_embedding_backward(dwte, dwpe, dout, stage(r.data(), int64_t(r.size())), n_tokens, B, T, C);
  CUDA_LAUNCHED();
}

void CudaBackend::softmax_xent(void* logits, float* losses, const int32_t* targets, int64_t N,
                               int64_t V, int64_t Vp, float grad_scale, DType dt) {
  launch_softmax_xent(logits, losses, stage(targets, N), N, V, Vp, grad_scale, dt);
  CUDA_LAUNCHED();
}

void CudaBackend::attention_forward(void* out, float* lse, const void* qkv, int64_t B, int64_t T,
                                    int64_t NH, int64_t NKV, int64_t HS, DType dt) {
  if (!attention_supports(HS))
    user_error("head size {}: the cuda attention kernels take head sizes 16, 32, 64 or 128", HS);
  launch_attention_forward(out, lse, qkv, B, T, NH, NKV, HS, dt);
  CUDA_LAUNCHED();
}

void CudaBackend::attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out,
                                     const float* lse, int64_t B, int64_t T, int64_t NH, int64_t NKV,
                                     int64_t HS, DType dt) {
  float* D = scratch<float>(rows_, B * NH * T);
  launch_attention_backward(dqkv, dout, qkv, out, lse, D, B, T, NH, NKV, HS, dt);
  CUDA_LAUNCHED();
}

}  // namespace frugal
