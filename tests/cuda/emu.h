// A CPU emulation of the CUDA device side, just enough to run frugal's own kernels
// (src/backend/cuda/*.cu, included as C++ after this header) where no GPU is present, so that
// CI checks their indexing, masking, barriers and shuffles against the CPU backend on every run.
//
// Blocks run one after another. The threads of a block are fibers (ucontext) on one OS thread:
// each runs until it reaches a barrier (__syncthreads, __syncwarp, a shuffle), and a barrier
// opens when every thread of its block (or warp) has reached it or exited; threads waiting at
// different kinds of barrier are a divergence, reported as a deadlock. __shared__ variables
// become static (one block at a time shares them), dynamic shared memory is filled with 0xff
// bytes (NaN) at each launch so that a read before a write shows. Atomics are plain updates.
// WMMA fragments hold the whole 16x16 tile in every lane (the hardware's element layout is
// opaque to kernels, so a kernel that uses only load/store/fill/mma cannot tell), and products
// are formed in fp32 from the 16-bit inputs, as on the tensor cores.
// Not emulated: timing, memory coalescing, shared-memory limits, and host API calls (the
// launchers call none; kernels.h's launch() sets the >48 KiB shared memory attribute on CUDA).
#pragma once
#include <ucontext.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>

#include "core/dtype.h"

#define FRUGAL_CUDA_EMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using __nv_bfloat16 = frugal::bf16;
using __half = frugal::f16;
inline float __bfloat162float(__nv_bfloat16 x) { return frugal::to_f32(x); }
inline __nv_bfloat16 __float2bfloat16_rn(float x) { return frugal::from_f32<frugal::bf16>(x); }
inline float __half2float(__half x) { return frugal::to_f32(x); }
inline __half __float2half_rn(float x) { return frugal::from_f32<frugal::f16>(x); }
using std::max;
using std::min;

namespace emu {

enum State { kReady, kAtWarp, kAtBlock, kDone };
struct Thread {
  ucontext_t ctx;
  dim3 idx;
  int tid;
  State state;
};

inline dim3 block_idx, block_dim, grid_dim;
inline Thread* cur = nullptr;
inline ucontext_t scheduler;
inline std::vector<Thread> threads;
inline std::vector<char*> stacks;
inline std::vector<uint64_t> slots;  // one shuffle slot per thread
inline unsigned char* dynamic_smem = nullptr;
inline const std::function<void()>* body = nullptr;
constexpr size_t kStack = 256 << 10;

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "cuda emulation: %s (block %u,%u,%u)\n", what, block_idx.x, block_idx.y, block_idx.z);
  std::abort();
}

inline void wait(State s) {
  cur->state = s;
  swapcontext(&cur->ctx, &scheduler);
}

inline void entry() {
  (*body)();
  cur->state = kDone;  // uc_link returns to the scheduler
}

// Opens the barriers every waiter has reached; false when none can open.
inline bool release() {
  const int n = int(threads.size());
  bool opened = false;
  for (int w = 0; w < n; w += 32) {
    bool all = true, any = false;
    for (int t = w; t < std::min(n, w + 32); t++) {
      all &= threads[t].state == kAtWarp || threads[t].state == kDone;
      any |= threads[t].state == kAtWarp;
    }
    if (all && any) {
      for (int t = w; t < std::min(n, w + 32); t++)
        if (threads[t].state == kAtWarp) threads[t].state = kReady;
      opened = true;
    }
  }
  if (opened) return true;
  bool all = true, any = false;
  for (auto& t : threads) {
    all &= t.state == kAtBlock || t.state == kDone;
    any |= t.state == kAtBlock;
  }
  if (all && any)
    for (auto& t : threads)
      if (t.state == kAtBlock) t.state = kReady;
  return all && any;
}

// Runs kernel(...) (bound in f) over grid x block threads with smem bytes of dynamic shared memory.
inline void run(dim3 grid, dim3 block, size_t smem, const std::function<void()>& f) {
  const int n = int(block.x * block.y * block.z);
  if (n < 1 || n > 1024) fail("a block of 1..1024 threads expected");
  while (int(stacks.size()) < n) stacks.push_back(static_cast<char*>(std::malloc(kStack)));
  threads.assign(n, Thread{});
  slots.assign(n, 0);
  std::vector<unsigned char> shared(smem + 128);
  dynamic_smem = shared.data() + (128 - reinterpret_cast<uintptr_t>(shared.data()) % 128);
  body = &f;
  block_dim = block;
  grid_dim = grid;
  for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
      for (unsigned bx = 0; bx < grid.x; bx++) {
        block_idx = dim3(bx, by, bz);
        std::memset(dynamic_smem, 0xff, smem);
        for (int t = 0; t < n; t++) {
          Thread& th = threads[t];
          th.idx = dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
          th.tid = t;
          th.state = kReady;
          getcontext(&th.ctx);
          th.ctx.uc_stack.ss_sp = stacks[t];
          th.ctx.uc_stack.ss_size = kStack;
          th.ctx.uc_link = &scheduler;
          makecontext(&th.ctx, entry, 0);
        }
        for (;;) {
          bool ran = false;
          for (auto& th : threads)
            if (th.state == kReady) {
              cur = &th;
              swapcontext(&scheduler, &th.ctx);
              ran = true;
            }
          if (ran || release()) continue;
          if (std::all_of(threads.begin(), threads.end(), [](auto& t) { return t.state == kDone; })) break;
          fail("deadlock: threads wait at different barriers");
        }
      }
  cur = nullptr;
}

template <class T>
T shfl_xor(T v, int mask) {
  static_assert(sizeof(T) <= sizeof(uint64_t));
  std::memcpy(&slots[cur->tid], &v, sizeof v);
  wait(kAtWarp);
  const int from = (cur->tid & ~31) | ((cur->tid & 31) ^ mask);
  T r = v;
  if (from < int(threads.size())) std::memcpy(&r, &slots[from], sizeof r);
  wait(kAtWarp);  // every lane has read before the slots are reused
  return r;
}

}  // namespace emu

#define threadIdx (::emu::cur->idx)
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)
inline void __syncthreads() { emu::wait(emu::kAtBlock); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::wait(emu::kAtWarp); }
template <class T>
T __shfl_xor_sync(unsigned, T v, int mask, int = 32) { return emu::shfl_xor(v, mask); }
template <class T>
T atomicAdd(T* p, T v) {
  T old = *p;
  *p += v;
  return old;
}

// nvcuda::wmma for the 16x16x16 shape with 16-bit inputs and fp32 accumulators.
namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulation has the 16x16x16 shape only");
  static constexpr int num_elements = 256;
  T x[256];  // x[r * 16 + c]: element (r, c) of the tile
};

// Loads and stores are collective: each starts at a warp barrier, so that no lane stores a tile
// before every lane has loaded what it held (on the GPU each lane moves only its own elements).
template <class Use, class T, class L>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, L>& f, const T* p, unsigned ldm) {
  emu::wait(emu::kAtWarp);
  for (int r = 0; r < 16; r++)
    for (int c = 0; c < 16; c++) f.x[r * 16 + c] = std::is_same_v<L, row_major> ? p[r * ldm + c] : p[c * ldm + r];
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm, layout_t l) {
  emu::wait(emu::kAtWarp);
  for (int r = 0; r < 16; r++)
    for (int c = 0; c < 16; c++) f.x[r * 16 + c] = l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t l) {
  emu::wait(emu::kAtWarp);
  for (int r = 0; r < 16; r++)
    for (int c = 0; c < 16; c++) (l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r * 16 + c];
}
template <class Use, class T, class L>
void fill_fragment(fragment<Use, 16, 16, 16, T, L>& f, T v) {
  std::fill(f.x, f.x + 256, v);
}
template <class T, class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[256];
  for (int r = 0; r < 16; r++)
    for (int col = 0; col < 16; col++) {
      float s = c.x[r * 16 + col];
      for (int k = 0; k < 16; k++) s += frugal::to_f32(a.x[r * 16 + k]) * frugal::to_f32(b.x[k * 16 + col]);
      out[r * 16 + col] = s;
    }
  std::copy(out, out + 256, d.x);
}
}  // namespace nvcuda::wmma
