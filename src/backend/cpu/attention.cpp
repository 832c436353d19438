// Causal multi-head self-attention, memory-efficient (the FlashAttention-2 algorithm on the
// CPU): queries and keys are processed in tiles of kTile rows; the forward keeps a running max
// and sum per query row (online softmax) and stores only the output and the per-row
// log-sum-exp; the backward recomputes each tile of probabilities from the log-sum-exp. No
// T x T tensor exists, in forward or backward. Tiles are widened to fp32 scratch of their
// thread and multiplied with dnnl_sgemm; parallel over (b, h), each task owning its outputs.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/cpu.h"

namespace frugal {

static constexpr int64_t kTile = 64;

// rows x HS tile of q, k or v (or of a (B,T,C) tensor with stride C) -> fp32 (rows, HS)
template <class S>
static void load_tile(float* dst, const S* src, int64_t rows, int64_t HS, int64_t stride) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t d = 0; d < HS; d++) dst[r * HS + d] = to_f32(src[r * stride + d]);
}

template <class S>
static void attention_forward_t(S* out, float* lse, const S* qkv, float* scratch, int64_t B,
                                int64_t T, int64_t C, int64_t NH) {
  const int64_t HS = C / NH, C3 = 3 * C;
  const float scale = 1.0f / std::sqrt(float(HS));
  const int64_t per_thread = 4 * kTile * HS + kTile * kTile + 2 * kTile;
#pragma omp parallel
  {
    float* q = scratch + int64_t(omp_get_thread_num()) * per_thread;  // (kTile, HS)
    float* k = q + kTile * HS;                                        // (kTile, HS)
    float* v = k + kTile * HS;                                        // (kTile, HS)
    float* o = v + kTile * HS;                                        // (kTile, HS) unnormalised
    float* s = o + kTile * HS;                                        // (kTile, kTile) scores/probs
    float* m = s + kTile * kTile;                                     // (kTile) running max
    float* l = m + kTile;                                             // (kTile) running sum
#pragma omp for collapse(3) schedule(static)
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < NH; h++)
        for (int64_t q0 = 0; q0 < T; q0 += kTile) {
          const S* base = qkv + b * T * C3 + h * HS;
          const int64_t nq = std::min(kTile, T - q0);
          load_tile(q, base + q0 * C3, nq, HS, C3);
          std::memset(o, 0, sizeof(float) * nq * HS);
          for (int64_t i = 0; i < nq; i++) { m[i] = -3.0e38f; l[i] = 0.0f; }  // finite: built with -ffast-math
          for (int64_t k0 = 0; k0 <= q0 + nq - 1; k0 += kTile) {
            const int64_t nk = std::min(kTile, T - k0);
            load_tile(k, base + k0 * C3 + C, nk, HS, C3);
            load_tile(v, base + k0 * C3 + 2 * C, nk, HS, C3);
            sgemm(false, true, nq, nk, HS, q, HS, k, HS, 0.0f, s, kTile);  // S = Q K^T
            for (int64_t i = 0; i < nq; i++) {
              float* row = s + i * kTile;
              const int64_t valid = std::clamp<int64_t>(q0 + i - k0 + 1, 0, nk);  // causal: keys <= query
              float mx = m[i];
              for (int64_t j = 0; j < valid; j++) mx = std::max(mx, row[j] * scale);
              const float corr = std::exp(m[i] - mx);  // rescales what was summed so far
              float sum = 0.0f;
              for (int64_t j = 0; j < valid; j++) sum += row[j] = std::exp(row[j] * scale - mx);
              for (int64_t j = valid; j < nk; j++) row[j] = 0.0f;
              l[i] = l[i] * corr + sum;
              m[i] = mx;
              for (int64_t d = 0; d < HS; d++) o[i * HS + d] *= corr;
            }
            sgemm(false, false, nq, HS, nk, s, kTile, v, HS, 1.0f, o, HS);  // O += P V
          }
          for (int64_t i = 0; i < nq; i++) {
            S* orow = out + (b * T + q0 + i) * C + h * HS;
            const float inv = 1.0f / l[i];
            for (int64_t d = 0; d < HS; d++) orow[d] = from_f32<S>(o[i * HS + d] * inv);
            lse[(b * NH + h) * T + q0 + i] = m[i] + std::log(l[i]);
          }
        }
  }
}

template <class S>
static void attention_backward_t(S* dqkv, const S* dout, const S* qkv, const S* out,
                                 const float* lse, float* scratch, int64_t B, int64_t T, int64_t C,
                                 int64_t NH) {
  const int64_t HS = C / NH, C3 = 3 * C;
  const float scale = 1.0f / std::sqrt(float(HS));
  const int64_t per_thread = 2 * T * HS + T + 6 * kTile * HS + 2 * kTile * kTile;
#pragma omp parallel
  {
    float* dq = scratch + int64_t(omp_get_thread_num()) * per_thread;  // (T, HS) fp32 accumulator
    float* qall = dq + T * HS;                                         // (T, HS) all queries
    float* Dv = qall + T * HS;                                         // (T) rowsum(dO * O)
    float* k = Dv + T;                                                 // (kTile, HS)
    float* v = k + kTile * HS;
    float* dk = v + kTile * HS;
    float* dv = dk + kTile * HS;
    float* dob = dv + kTile * HS;                                      // (kTile, HS) dO tile
    float* ob = dob + kTile * HS;                                      // (kTile, HS) O tile
    float* p = ob + kTile * HS;                                        // (kTile, kTile)
    float* ds = p + kTile * kTile;                                     // (kTile, kTile)
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < NH; h++) {
        const S* base = qkv + b * T * C3 + h * HS;
        const S* dbase = dout + b * T * C + h * HS;
        const S* obase = out + b * T * C + h * HS;
        const float* L = lse + (b * NH + h) * T;
        std::memset(dq, 0, sizeof(float) * T * HS);
        load_tile(qall, base, T, HS, C3);
        for (int64_t t = 0; t < T; t++) {  // D = rowsum(dO * O), as in FlashAttention-2
          float acc = 0.0f;
          for (int64_t d = 0; d < HS; d++) acc += to_f32(dbase[t * C + d]) * to_f32(obase[t * C + d]);
          Dv[t] = acc;
        }
        for (int64_t k0 = 0; k0 < T; k0 += kTile) {
          const int64_t nk = std::min(kTile, T - k0);
          load_tile(k, base + k0 * C3 + C, nk, HS, C3);
          load_tile(v, base + k0 * C3 + 2 * C, nk, HS, C3);
          std::memset(dk, 0, sizeof(float) * nk * HS);
          std::memset(dv, 0, sizeof(float) * nk * HS);
          for (int64_t q0 = k0; q0 < T; q0 += kTile) {  // the query tiles that see this key tile
            const int64_t nq = std::min(kTile, T - q0);
            const float* q = qall + q0 * HS;
            load_tile(dob, dbase + q0 * C, nq, HS, C);
            sgemm(false, true, nq, nk, HS, q, HS, k, HS, 0.0f, p, kTile);      // S = Q K^T
            for (int64_t i = 0; i < nq; i++) {  // P = exp(S * scale - LSE), causal mask
              const int64_t valid = std::clamp<int64_t>(q0 + i - k0 + 1, 0, nk);
              float* row = p + i * kTile;
              for (int64_t j = 0; j < valid; j++) row[j] = std::exp(row[j] * scale - L[q0 + i]);
              for (int64_t j = valid; j < nk; j++) row[j] = 0.0f;
            }
            sgemm(true, false, nk, HS, nq, p, kTile, dob, HS, 1.0f, dv, HS);     // dV += P^T dO
            sgemm(false, true, nq, nk, HS, dob, HS, v, HS, 0.0f, ds, kTile);     // dP = dO V^T
            for (int64_t i = 0; i < nq; i++)                                     // dS = P (dP - D) scale
              for (int64_t j = 0; j < nk; j++)
                ds[i * kTile + j] = p[i * kTile + j] * (ds[i * kTile + j] - Dv[q0 + i]) * scale;
            sgemm(false, false, nq, HS, nk, ds, kTile, k, HS, 1.0f, dq + q0 * HS, HS);  // dQ += dS K
            sgemm(true, false, nk, HS, nq, ds, kTile, q, HS, 1.0f, dk, HS);            // dK += dS^T Q
          }
          S* drow = dqkv + b * T * C3 + h * HS;
          for (int64_t j = 0; j < nk; j++)
            for (int64_t d = 0; d < HS; d++) {
              drow[(k0 + j) * C3 + C + d] = from_f32<S>(dk[j * HS + d]);
              drow[(k0 + j) * C3 + 2 * C + d] = from_f32<S>(dv[j * HS + d]);
            }
        }
        S* drow = dqkv + b * T * C3 + h * HS;
        for (int64_t t = 0; t < T; t++)
          for (int64_t d = 0; d < HS; d++) drow[t * C3 + d] = from_f32<S>(dq[t * HS + d]);
      }
  }
}

void CpuBackend::attention_forward(void* out, float* lse, const void* qkv, int64_t B, int64_t T,
                                   int64_t C, int64_t NH, DType dt) {
  const int64_t HS = C / NH;
  float* scratch = partials(4 * kTile * HS + kTile * kTile + 2 * kTile);
  dispatch(dt, [&](auto t) {
    using S = decltype(t);
    attention_forward_t(static_cast<S*>(out), lse, static_cast<const S*>(qkv), scratch, B, T, C, NH);
  });
}

void CpuBackend::attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out,
                                    const float* lse, int64_t B, int64_t T, int64_t C, int64_t NH,
                                    DType dt) {
  const int64_t HS = C / NH;
  float* scratch = partials(2 * T * HS + T + 6 * kTile * HS + 2 * kTile * kTile);
  dispatch(dt, [&](auto t) {
    using S = decltype(t);
    attention_backward_t(static_cast<S*>(dqkv), static_cast<const S*>(dout), static_cast<const S*>(qkv),
                         static_cast<const S*>(out), lse, scratch, B, T, C, NH);
  });
}

}  // namespace frugal
