// backend: the op table. Every op the model and the trainer run goes through a Backend, so that
// a CUDA backend can implement the same table and be checked against the CPU one.
//
// Dimension letters: B batch, T time, C channels, NH heads, HS = C/NH head size,
// BT = B*T rows, OC/IC out/in channels, V vocab, Vp padded vocab.
// All tensors are contiguous row-major fp32 unless stated. "+=" marks outputs that accumulate
// (gradients of parameters accumulate across micro-batches; activations' gradients do not
// unless stated).
#pragma once
#include <cstddef>
#include <cstdint>

namespace frugal {

struct AdamWArgs {
  float lr, beta1, beta2, eps, weight_decay;
  int step;  // 1-based, for bias correction
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // C(M,N) = alpha * op(A) op(B) + beta * C; op(A) is (M,K), op(B) is (K,N); row-major,
  // lda/ldb/ldc are the row strides of A, B, C as stored.
  virtual void matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                      const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                      float* C, int64_t ldc) = 0;

  // out(BT,OC) = inp(BT,IC) weight(OC,IC)^T + bias(OC); bias may be null.
  virtual void linear_forward(float* out, const float* inp, const float* weight,
                              const float* bias, int64_t BT, int64_t IC, int64_t OC) = 0;
  // dinp(BT,IC) = dout weight (overwritten); dweight(OC,IC) += dout^T inp; dbias(OC) += sum dout.
  virtual void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                               const float* inp, const float* weight, int64_t BT, int64_t IC,
                               int64_t OC) = 0;

  // out(N,C), mean(N), rstd(N) = LayerNorm(inp(N,C)) * w(C) + b(C), eps 1e-5.
  virtual void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                                 const float* w, const float* b, int64_t N, int64_t C) = 0;
  // dinp(N,C) +=, dw(C) +=, db(C) += from dout(N,C).
  virtual void layernorm_backward(float* dinp, float* dw, float* db, const float* dout,
                                  const float* inp, const float* w, const float* mean,
                                  const float* rstd, int64_t N, int64_t C) = 0;

  // GELU, tanh approximation. out(n) = gelu(inp(n)); dinp(n) = dout * gelu'(inp) (overwritten;
  // dinp may alias dout).
  virtual void gelu_forward(float* out, const float* inp, int64_t n) = 0;
  virtual void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n) = 0;

  // Causal multi-head attention. qkv(B,T,3C) holds q, k, v side by side, heads interleaved
  // (channel h*HS+d). out(B,T,C); probs(B,NH,T,T) is stashed for backward (rows beyond the
  // diagonal are zero). dqkv(B,T,3C) is overwritten.
  virtual void attention_forward(float* out, float* probs, const float* qkv, int64_t B,
                                 int64_t T, int64_t C, int64_t NH) = 0;
  virtual void attention_backward(float* dqkv, const float* dout, const float* qkv,
                                  const float* probs, int64_t B, int64_t T, int64_t C,
                                  int64_t NH) = 0;

  // out(B,T,C) = wte[tokens] + wpe[t]; backward: dwte(Vp,C) +=, dwpe(maxT,C) +=.
  virtual void embedding_forward(float* out, const int32_t* tokens, const float* wte,
                                 const float* wpe, int64_t B, int64_t T, int64_t C) = 0;
  virtual void embedding_backward(float* dwte, float* dwpe, const float* dout,
                                  const int32_t* tokens, int64_t B, int64_t T, int64_t C) = 0;

  // out(n) = a(n) + b(n); out may alias a or b.
  virtual void add(float* out, const float* a, const float* b, int64_t n) = 0;

  // Fused softmax cross-entropy over rows of logits(N,Vp); columns >= V are padding and are
  // masked out. losses(N) = -log p[target]. When grad_scale != 0, logits are overwritten in
  // place by dlogits = grad_scale * (p - onehot(target)) (0 in the padding): the probability
  // tensor never exists separately.
  virtual void softmax_xent(float* logits, float* losses, const int32_t* targets, int64_t N,
                            int64_t V, int64_t Vp, float grad_scale) = 0;

  // AdamW (PyTorch semantics) on param(n) with grad(n) and fp32 moments m(n), v(n).
  virtual void adamw(float* param, const float* grad, float* m, float* v, int64_t n,
                     const AdamWArgs& a) = 0;
  // sum of squares of x(n), accumulated in double (for the global gradient norm).
  virtual double sum_squares(const float* x, int64_t n) = 0;
  // x(n) *= s
  virtual void scale(float* x, int64_t n, float s) = 0;
};

Backend& cpu_backend();

}  // namespace frugal
