// backend: the op table. Every op the model and the trainer run goes through a Backend, so that
// a CUDA backend can implement the same table and be checked against the CPU one.
//
// Dimension letters: B batch, T time, C channels, NH heads, HS = C/NH head size,
// BT = B*T rows, OC/IC out/in channels, V vocab, Vp padded vocab.
// All tensors are contiguous row-major fp32 unless stated. "+=" marks outputs that accumulate
// (gradients of parameters accumulate across micro-batches; activations' gradients do not
// unless stated).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/quant.h"

namespace frugal {

struct AdamWArgs {
  float lr, beta1, beta2, eps, weight_decay;
  int step;  // 1-based, for bias correction
  float grad_scale = 1.0f;  // the gradient as read: grad * grad_scale (loss unscaling, clipping)
};

// Parameters that adamw updates: param(n), grad(n), moments m(n), v(n), all fp32; copy: null,
// or where the updated param is also written in the compute dtype (the compute copy).
struct AdamWSpan {
  float* param;
  const float* grad;
  float *m, *v;
  int64_t n;
  bool decay;  // weight decay applies
  void* copy;
};

struct FloatSpan {
  const float* x;
  int64_t n;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  // Whether GEMMs in dtype d run natively (not through fp32 conversions).
  virtual bool native_gemm(DType d) const = 0;
  virtual bool gpu() const { return false; }
  // Bytes the backend's device can still give (a GPU's free memory less a margin for its
  // libraries), or -1 where the backend does not own its memory (the CPU: see the host's).
  virtual int64_t memory_available() const { return -1; }

  // A copy of B in the backend's own layout, kept by the caller across calls that share B (the
  // lm head's weight over its chunks): `data` holds packed_bytes() bytes. The backend packs B
  // into it at a call where !filled and sets filled; the caller clears filled whenever B may
  // have changed since.
  struct PackedB {
    void* data;
    bool filled;
  };
  // Bytes of such a copy of op(B) (K,N) in dtype ab; 0 where the backend keeps none.
  virtual size_t packed_bytes(bool trans_b, int64_t K, int64_t N, DType ab) const { return 0; }
  // C(M,N) = op(A) op(B) [+ bias(N)] [+ C when accumulate]; A and B in dtype ab, C in dtype c,
  // fp32 accumulation; op(A) is (M,K), op(B) is (K,N); row-major with row strides lda/ldb/ldc.
  // packed: where the backend may keep B packed (see PackedB), or null.
  virtual void matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const void* A,
                      int64_t lda, const void* B, int64_t ldb, void* C, int64_t ldc, DType ab,
                      DType c, const float* bias, bool accumulate, PackedB* packed = nullptr) = 0;

  // Activations (void*) are in the compute dtype dt; the residual stream, LayerNorm
  // statistics, master weights and their gradients are fp32.
  // out(BT,OC) = inp(BT,IC) weight(OC,IC)^T + bias(OC); weight in dt, bias fp32 or null.
  virtual void linear_forward(void* out, const void* inp, const void* weight, const float* bias,
                              int64_t BT, int64_t IC, int64_t OC, DType dt) = 0;
  // dweight(OC,IC) += dout^T inp (null: a frozen weight, skipped), then dinp(BT,IC) = dout weight (overwritten; may be null, and
  // may be inp itself: recompute policies keep inp in dinp's buffer); dbias(OC) += sum dout
  // (may be null). dweight, dbias fp32.
  virtual void linear_backward(void* dinp, float* dweight, float* dbias, const void* dout,
                               const void* inp, const void* weight, int64_t BT, int64_t IC,
                               int64_t OC, DType dt) = 0;

  // out(N,C) (dt), mean(N), rstd(N) = LayerNorm(inp(N,C) fp32) * w(C) + b(C), eps 1e-5.
  virtual void layernorm_forward(void* out, float* mean, float* rstd, const float* inp,
                                 const float* w, const float* b, int64_t N, int64_t C, DType dt) = 0;
  // dinp(N,C) fp32 +=, dw(C) +=, db(C) += from dout(N,C) (dt); dinp_copy: null, or where the
  // updated dinp is also written, rounded to dt (the next GEMM's input, in the same pass).
  virtual void layernorm_backward(float* dinp, float* dw, float* db, const void* dout,
                                  const float* inp, const float* w, const float* mean,
                                  const float* rstd, int64_t N, int64_t C, DType dt,
                                  void* dinp_copy) = 0;

  // RMSNorm (the Llama family's): out(N,C) (dt) = inp(N,C) fp32 * rstd * w(C), rstd(N) =
  // 1 / sqrt(mean(inp^2) + eps).
  virtual void rmsnorm_forward(void* out, float* rstd, const float* inp, const float* w, int64_t N,
                               int64_t C, float eps, DType dt) = 0;
  // dinp(N,C) fp32 +=, dw(C) += from dout(N,C) (dt); dinp_copy as in layernorm_backward.
  virtual void rmsnorm_backward(float* dinp, float* dw, const void* dout, const float* inp,
                                const float* w, const float* rstd, int64_t N, int64_t C, DType dt,
                                void* dinp_copy) = 0;

  // SwiGLU: gu(N,2H) holds the gate and up projections side by side in each row ([gate | up]);
  // out(N,H) = silu(gate) * up. Backward: dgu(N,2H) (overwritten; may alias gu) from dout(N,H).
  // All dt.
  virtual void swiglu_forward(void* out, const void* gu, int64_t N, int64_t H, DType dt) = 0;
  virtual void swiglu_backward(void* dgu, const void* gu, const void* dout, int64_t N, int64_t H,
                               DType dt) = 0;

  // Rotary position embeddings in Hugging Face's rotate-half layout, in place: in row (b,t) of
  // x(B,T,stride) (dt), each of the first num_heads heads of HS channels is rotated by position
  // t's angles: for i < HS/2, x[i] = x[i] cos - x[i+HS/2] sin, x[i+HS/2] = x[i+HS/2] cos + x[i] sin,
  // with cos, sin(T, HS/2) fp32. inverse rotates by the opposite angles (the backward: the
  // transpose of a rotation).
  virtual void rope(void* x, const float* cos, const float* sin, int64_t B, int64_t T, int64_t stride,
                    int64_t num_heads, int64_t HS, bool inverse, DType dt) = 0;

  // GELU, tanh approximation. out(n) = gelu(inp(n)); dinp(n) = dout * gelu'(inp) (overwritten;
  // dinp may alias dout). All dt.
  virtual void gelu_forward(void* out, const void* inp, int64_t n, DType dt) = 0;
  virtual void gelu_backward(void* dinp, const void* inp, const void* dout, int64_t n, DType dt) = 0;

  // The MLP's first layer and its GELU: pre(BT,OC) = linear_forward(inp, weight, bias) and
  // out(BT,OC) = gelu(pre), both dt. A backend may do both in one GEMM (a GELU epilogue).
  virtual void linear_gelu_forward(void* out, void* pre, const void* inp, const void* weight,
                                   const float* bias, int64_t BT, int64_t IC, int64_t OC, DType dt) {
    linear_forward(pre, inp, weight, bias, BT, IC, OC, dt);
    gelu_forward(out, pre, BT * OC, dt);
  }
  // linear_backward of a layer whose input was gelu(pre), pre(BT,IC): dinp becomes the
  // gradient at pre, (dout weight) * gelu'(pre). A backend may fold the GELU into the GEMM.
  virtual void linear_backward_gelu(void* dinp, float* dweight, float* dbias, const void* dout,
                                    const void* inp, const void* pre, const void* weight,
                                    int64_t BT, int64_t IC, int64_t OC, DType dt) {
    linear_backward(dinp, dweight, dbias, dout, inp, weight, BT, IC, OC, dt);
    gelu_backward(dinp, pre, dinp, BT * IC, dt);
  }

  // Causal multi-head attention with grouped-query heads, memory-efficient: each row of
  // qkv(B,T,W), W = (NH + 2 NKV) HS, holds NH query heads, then NKV key heads, then NKV value
  // heads, HS channels each; query head h attends with key/value head h / (NH / NKV) (NKV = NH:
  // multi-head attention, GPT-2's c_attn layout). out(B,T,NH HS) in dt; lse(B,NH,T) fp32 is the
  // per-row log-sum-exp of the scaled scores, all backward needs besides qkv and out. No (T,T)
  // tensor is kept. dqkv(B,T,W) is overwritten.
  virtual void attention_forward(void* out, float* lse, const void* qkv, int64_t B, int64_t T,
                                 int64_t NH, int64_t NKV, int64_t HS, DType dt) = 0;
  virtual void attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out,
                                  const float* lse, int64_t B, int64_t T, int64_t NH, int64_t NKV,
                                  int64_t HS, DType dt) = 0;

  // One new query against a key/value cache (sampling, a token at a time): q(NH HS) attends with
  // keys k(T, NKV HS) and values v(T, NKV HS) of positions 0..T-1 (its own included), query head h
  // with key/value head h / (NH / NKV); out(NH HS) in dt. scratch: NH T fp32 (the probabilities).
  virtual void attention_decode(void* out, const void* q, const void* k, const void* v, int64_t T, int64_t NH,
                                int64_t NKV, int64_t HS, DType dt, float* scratch) = 0;

  // out(B,T,C) = wte[tokens] + wpe[t] (wpe null: no position table), wte and wpe in wdt (fp32
  // masters, or a frozen embedding's compute copy); backward: dwte(Vp,C) +=, dwpe(maxT,C) +=
  // (unless null), fp32.
  virtual void embedding_forward(float* out, const int32_t* tokens, const void* wte, const void* wpe,
                                 int64_t B, int64_t T, int64_t C, DType wdt) = 0;
  virtual void embedding_backward(float* dwte, float* dwpe, const float* dout,
                                  const int32_t* tokens, int64_t B, int64_t T, int64_t C) = 0;

  // Residual add: out(n) = a(n) + b(n), a and out fp32 (may alias), b in dt.
  virtual void add(float* out, const float* a, const void* b, int64_t n, DType dt) = 0;
  // LoRA's dropout, its mask a function of (seed, i) alone, so that recompute and every backend
  // draw the same: element i is kept when the top 24 bits of splitmix64's finaliser of
  // seed + (i + 1) * 0x9e3779b97f4a7c15 are >= p * 2^24 (dropout_keep); out(n) = kept ? in / (1 - p)
  // : 0, added into out when accumulate (in fp32, rounded once to dt). out may be in when not
  // accumulating.
  virtual void dropout(void* out, const void* in, int64_t n, float p, uint64_t seed, bool accumulate, DType dt) = 0;
  // x(n) *= s, in dt (computed in fp32, rounded once).
  virtual void scale(void* x, float s, int64_t n, DType dt) = 0;
  // dst(n) in dt = src(n) fp32, rounded to nearest even.
  virtual void cast(void* dst, const float* src, int64_t n, DType dt) = 0;
  // out(rows, cols) in dt = rows [row0, row0 + rows), columns [col0, col0 + cols) of the
  // quantized matrix q(q.rows, q.cols) dequantized: core/quant.h's values (bitsandbytes' for
  // nf4), rounded once to dt. q's buffers in this backend's memory.
  virtual void dequantize(void* out, const QuantView& q, int64_t row0, int64_t rows, int64_t col0,
                          int64_t cols, DType dt) = 0;

  // Fused softmax cross-entropy over rows of logits(N,Vp) in dt (the lm head's GEMM output, as
  // PyTorch's autocast has it), computed in fp32; columns >= V are padding and are masked out.
  // losses(N) fp32 = -log p[target]. When grad_scale != 0, the logits are overwritten in place
  // with dlogits = grad_scale * (p - onehot(target)) (0 in the padding), rounded once to dt.
  // A target < 0 is ignored (a prompt token, padding): its row's loss is 0 and, with a
  // gradient scale, its dlogits row all 0. The probability tensor never exists separately.
  virtual void softmax_xent(void* logits, float* losses, const int32_t* targets, int64_t N,
                            int64_t V, int64_t Vp, float grad_scale, DType dt) = 0;

  // AdamW (PyTorch semantics) over every span in one pass (one launch on a GPU): a.weight_decay
  // applies to the spans with decay; compute copies, in the same pass, are in copy_dt.
  virtual void adamw(const std::vector<AdamWSpan>& spans, const AdamWArgs& a, DType copy_dt) = 0;
  // sum of squares of every span's elements in double; inf or NaN when any element is (the
  // overflow check). One result for all spans: on a GPU, one wait for the host.
  virtual double sum_squares(const std::vector<FloatSpan>& spans) = 0;
  double sum_squares(const float* x, int64_t n) { return sum_squares({{x, n}}); }
  // x(n) = 0
  virtual void fill_zero(float* x, int64_t n) = 0;
  // sum of x(n) in double, in index order on the CPU (a loss over tokens).
  virtual double sum(const float* x, int64_t n) = 0;
  // dst(bytes) = src(bytes), each in host memory or in this backend's memory; returns when the
  // copy is done. The one way the host reads or writes a GPU backend's memory.
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;
  // Returns when every op issued so far is done (before the host reads what ops wrote).
  virtual void synchronize() = 0;
};

// Whether dropout keeps element i under (seed, p): the op's mask, for the host.
inline bool dropout_keep(uint64_t seed, int64_t i, float p) {
  uint64_t z = seed + uint64_t(i + 1) * 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return double(z >> 40) >= double(p) * 16777216.0;
}

// x(n) where the host can read it, after a synchronize(): x itself on the CPU, else a copy
// appended to `keep`, which must outlive the use.
inline const float* host_view(Backend& be, const float* x, int64_t n, std::vector<std::vector<float>>& keep) {
  if (!be.gpu()) return x;
  keep.emplace_back(size_t(n));
  be.copy(keep.back().data(), x, size_t(n) * sizeof(float));
  return keep.back().data();
}

// cuBLASLt's workspace in the CUDA backend (Mem::runtime).
constexpr size_t kGemmWorkspace = size_t(32) << 20;
// The CUDA backend sums gradients over rows the same way every run (no float atomics): blocks
// write partial sums into scratch (Mem::runtime), one more kernel adds them up in order. Rows
// of partial sums over n rows: partial_rows(n, kLayerNormParts) for LayerNorm's dw and db
// (2 C wide), partial_rows(n, kColumnParts) for a bias gradient (OC wide).
constexpr int64_t kLayerNormParts = 512, kColumnParts = 128;
constexpr int64_t partial_rows(int64_t n, int64_t most) { return n < 8 * most ? (n + 7) / 8 : most; }
// Its sums of whole buffers (the gradient norm) add blocks' partial sums into this many double
// slots, which the host adds up in order.
constexpr int kReduceSlots = 1024;
// What the CUDA backend keeps for itself (Mem::runtime) for BT rows: cuBLASLt's workspace, the
// staged tokens (the largest: the embedding's positions grouped by token, 3 BT + 1 int32 at
// most), the reduction slots, attention's row sums (lse_rows = B·NH·T), the partial sums of the
// norms' (2 C wide) and the widest bias's gradients, and AdamW's span table (64 bytes for each
// of num_tensors tensors, at most, that the rank updates).
inline size_t cuda_runtime_bytes(int64_t BT, int64_t lse_rows, int64_t C, int64_t widest_bias, size_t num_tensors) {
  const int64_t parts = std::max(partial_rows(BT, kLayerNormParts) * 2 * C, partial_rows(BT, kColumnParts) * widest_bias);
  return kGemmWorkspace + size_t((3 * BT + 1) * 4 + kReduceSlots * 8 + lse_rows * 4 + parts * 4) + 64 * num_tensors;
}

// Seconds and FLOPs (GEMMs, attention) per op family, summed over the ops a TimingBackend ran.
struct OpTime {
  double seconds = 0, flops = 0;
};
using OpTimes = std::map<std::string, OpTime>;
// A Backend that runs inner's ops and adds each one's time (synchronised around it on a GPU)
// into (*times)[its op family]: run.profile and bench/step_profile. gemms (unless null): each
// GEMM and linear layer's time also by its shape and pass, "linear 768x3072 backward".
std::unique_ptr<Backend> timing_backend(Backend& inner, OpTimes* times, OpTimes* gemms = nullptr);

// The quantized linear layers (QLoRA's frozen base), on any backend: dequantize + matmul, a
// panel of W at a time into ws, a workspace of quant_panel_rows(IC, OC) x IC values in dt (never
// the whole layer). w: the quantized weight (OC, IC), frozen: no weight gradient.
// out(BT,OC) = inp(BT,IC) deq(w)^T + bias(OC) (bias fp32 or null): OC in panels of rows of W,
// each panel's GEMM writing its column block of out.
// A weight may be several quantized tensors stacked by rows, each quantized on its own (as
// bitsandbytes quantizes transformers' q_proj, k_proj, v_proj that are rows of frugal's qkv).
using QuantStack = std::vector<QuantView>;
void quant_linear_forward(Backend& be, void* out, const void* inp, const QuantStack& w, const float* bias,
                          void* ws, int64_t BT, int64_t IC, int64_t OC, DType dt);
// dinp(BT,IC) = dout(BT,OC) deq(w) (overwritten): IC in panels of columns of W (OC x k, k a
// multiple of 64 where it can be, within the same workspace), each panel's GEMM writing its
// column block of dinp, summed over all of OC in fp32 in one GEMM (no 16-bit partial sums).
void quant_linear_backward(Backend& be, void* dinp, const void* dout, const QuantStack& w, void* ws,
                           int64_t BT, int64_t IC, int64_t OC, DType dt);
// Rows of W per forward panel: 2^21 values (4 MiB in a 16-bit dtype), a multiple of 64 where it
// can be, at most OC, and at least OC / IC (so that backward's panels hold one column or more).
int64_t quant_panel_rows(int64_t IC, int64_t OC);

Backend& cpu_backend();
// Where the CPU backend's bf16 products run on this machine: "amx" (oneDNN's GEMMs and frugal's
// attention on AMX tiles), "avx512_bf16" (vdpbf16ps pair products), or "fp32" (widened).
const char* cpu_bf16_isa();
// The CUDA backend on the current device (built with FRUGAL_CUDA=ON). Its first call puts
// device memory (cudaMalloc) behind the MemoryPool, so the model's buffers are device buffers
// that the host reaches only through copy() (init, files, tests). Ops run in order on the
// compute stream (the legacy default stream). UserError naming the reason when there is no
// usable device or frugal was built without CUDA.
Backend& cuda_backend();

}  // namespace frugal
