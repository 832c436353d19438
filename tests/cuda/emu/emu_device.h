// A CPU emulation of the CUDA device, just enough to run frugal's CUDA backend where no GPU is
// present: this directory stands in for the toolkit's headers (cuda_runtime.h, cublasLt.h,
// cuda_bf16.h, cuda_fp16.h) when the backend's sources are compiled as C++ with FRUGAL_CUDA_EMU,
// so that the CUDA tests run on every CI machine. This file is the device side: kernels'
// keywords, thread indices, barriers, shuffles, atomics, and the warp-wide tensor-core
// instructions (mma.sync m16n8k16, ldmatrix) with the hardware's per-lane fragment layout.
//
// Blocks run one after another, in an order shuffled afresh at every launch (seeded by a count
// of launches, so a failure repeats): a kernel whose result depends on the order of its blocks,
// such as one adding floats atomically, gives different bits from one run to the next here, as
// on a GPU. The threads of a block are fibers on one OS thread (switched by
// a few instructions on x86-64, by ucontext elsewhere), run a warp at a time: each runs until it
// reaches a barrier (__syncthreads, __syncwarp, a shuffle, an mma or ldmatrix), and a barrier
// opens when every thread of its block (or warp) has reached it or exited; threads of a warp
// waiting at different kinds of barrier are a divergence, reported as a deadlock. A race between
// threads with no barrier between them is not detected (fibers do not interleave). __shared__ variables
// become static (one block at a time shares them), as do __constant__ ones; dynamic shared memory
// is filled with 0xff bytes (NaN) at each launch so that a read before a write shows. Atomics are plain updates.
// mma and ldmatrix exchange the lanes' registers (or row addresses) at a warp barrier and give
// each lane exactly the elements the PTX ISA assigns to it, so that a kernel that gets the
// fragment layout wrong gets wrong numbers here too; products are formed in fp32 from the
// 16-bit inputs, as on the tensor cores.
// Asynchronous copies (cp.async) make their destination NaN bytes when issued and land only
// when their thread waits for their group, so a read before that wait, or by another warp
// while a copy is issued over what it reads, shows; a thread that exits with copies in flight
// is reported. A launch outside the hardware's limits (grid and block sizes, 227 KiB of dynamic
// shared memory) stops the process, as a GPU refuses it. Not emulated: timing, memory
// coalescing, register limits, static shared memory's size.
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

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__ static
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
// A rounded product and sum that the compiler may not fuse into one multiply-add, as nvcc's.
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
using std::max;
using std::min;

namespace emu {

// A fiber's saved context, switch_to(from, to), and start(c, stack, fn): fn runs on the stack
// at the first switch to c, and never returns.
#if defined(__x86_64__)
extern "C" void frugal_emu_switch(void** from_sp, void* to_sp);
// Pushes the callee-saved registers, swaps stack pointers, pops and returns on the other stack.
asm(R"(
  .text
  .weak frugal_emu_switch
  .type frugal_emu_switch, @function
frugal_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size frugal_emu_switch, .-frugal_emu_switch
)");
struct Context {
  void* sp;
};
inline void switch_to(Context& from, Context& to) { frugal_emu_switch(&from.sp, to.sp); }
inline void start(Context& c, char* stack, size_t size, void (*fn)()) {
  void** sp = reinterpret_cast<void**>(stack + size);  // 16-byte aligned
  *--sp = nullptr;                                     // fn's return address: fn never returns
  *--sp = reinterpret_cast<void*>(fn);                 // where the first switch returns to
  for (int i = 0; i < 6; i++) *--sp = nullptr;         // the callee-saved registers
  c.sp = sp;
}
#else
struct Context {
  ucontext_t uc;
};
inline void switch_to(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
inline void start(Context& c, char* stack, size_t size, void (*fn)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, fn, 0);
}
#endif

enum State { kReady, kAtWarp, kAtBlock, kDone };
struct AsyncCopy {  // 16 bytes from src (zeros where null) to dst
  void* dst;
  const void* src;
};
struct Thread {
  Context ctx;
  dim3 idx;
  int tid;
  State state;
  unsigned shuffles;  // how many this thread has made
  std::vector<AsyncCopy> open;               // issued since the last commit
  std::vector<std::vector<AsyncCopy>> groups;  // committed, in flight, oldest first
};

inline dim3 block_idx, block_dim, grid_dim;
inline Thread* cur = nullptr;
inline Context scheduler;
inline std::vector<Thread> threads;
inline std::vector<char*> stacks;
inline std::vector<uint64_t> slots;  // warp exchange slots: two sets of 32 bytes per thread
inline unsigned char* dynamic_smem = nullptr;
inline size_t dynamic_bytes = 0;
inline const std::function<void()>* body = nullptr;
inline uint64_t launches = 0;  // seeds each launch's block order
constexpr size_t kStack = 256 << 10;

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "cuda emulation: %s (block %u,%u,%u)\n", what, block_idx.x, block_idx.y, block_idx.z);
  std::abort();
}

inline void wait(State s) {
  cur->state = s;
  switch_to(cur->ctx, scheduler);
}

[[noreturn]] inline void entry() {
  (*body)();
  for (auto& g : cur->groups)
    if (!g.empty()) fail("a thread exited with asynchronous copies in flight (no cp.async.wait_group for them)");
  cur->state = kDone;
  switch_to(cur->ctx, scheduler);
  __builtin_unreachable();
}

// Whether every thread in [t0, t1) waits at s or has exited, and one waits at s.
inline bool all_at(int t0, int t1, State s) {
  bool any = false;
  for (int t = t0; t < t1; t++) {
    if (threads[t].state != s && threads[t].state != kDone) return false;
    any |= threads[t].state == s;
  }
  return any;
}

// Runs one block: each warp in turn until all its threads wait at the block barrier or exited
// (a warp at a time keeps 32 fiber stacks in cache), then opens the block barrier.
inline void run_block(int n) {
  for (;;) {
    for (int w = 0; w < n; w += 32) {
      const int end = std::min(n, w + 32);
      for (;;) {
        bool ran = false;
        for (int t = w; t < end; t++)
          if (threads[t].state == kReady) {
            cur = &threads[t];
            switch_to(scheduler, threads[t].ctx);
            ran = true;
          }
        if (!ran || !all_at(w, end, kAtWarp)) break;
        for (int t = w; t < end; t++)
          if (threads[t].state == kAtWarp) threads[t].state = kReady;
      }
    }
    if (all_at(0, n, kAtBlock)) {
      for (auto& t : threads)
        if (t.state == kAtBlock) t.state = kReady;
      continue;
    }
    if (std::all_of(threads.begin(), threads.end(), [](auto& t) { return t.state == kDone; })) return;
    fail("deadlock: the threads of a warp wait at different barriers");
  }
}

// Runs kernel(...) (bound in f) over grid x block threads with smem bytes of dynamic shared memory.
inline void run(dim3 grid, dim3 block, size_t smem, const std::function<void()>& f) {
  const int n = int(block.x * block.y * block.z);
  if (n < 1 || n > 1024 || block.z > 64) fail("a block of 1..1024 threads expected, at most 64 in z");
  if (grid.x < 1 || grid.x > 0x7fffffffu || grid.y < 1 || grid.y > 65535 || grid.z < 1 || grid.z > 65535)
    fail("a grid of 1..2^31-1 x 1..65535 x 1..65535 blocks expected (a GPU refuses the launch)");
  if (smem > 227 * 1024) fail("more dynamic shared memory than an H100 block may have (227 KiB)");
  while (int(stacks.size()) < n) stacks.push_back(static_cast<char*>(std::aligned_alloc(64, kStack)));
  threads.assign(n, Thread{});
  slots.assign(2 * 4 * size_t(n), 0);
  std::vector<unsigned char> shared(smem + 128);
  dynamic_smem = shared.data() + (128 - reinterpret_cast<uintptr_t>(shared.data()) % 128);
  dynamic_bytes = smem;
  body = &f;
  block_dim = block;
  grid_dim = grid;
  std::vector<dim3> order;
  for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
      for (unsigned bx = 0; bx < grid.x; bx++) order.push_back(dim3(bx, by, bz));
  uint64_t x = ++launches * 0x9E3779B97F4A7C15ull;
  for (size_t i = order.size(); i > 1; i--) {  // Fisher-Yates on a xorshift stream
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::swap(order[i - 1], order[x % i]);
  }
  for (const dim3& blk : order) {
    block_idx = blk;
    std::memset(dynamic_smem, 0xff, smem);
    for (int t = 0; t < n; t++) {
      Thread& th = threads[t];
      th.idx = dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
      th.tid = t;
      th.state = kReady;
      th.shuffles = 0;
      th.open.clear();
      th.groups.clear();
      start(th.ctx, stacks[t], kStack, entry);
    }
    run_block(n);
  }
  cur = nullptr;
}

// Two sets of slots, used in turn: a lane writes the next exchange's value into the other set,
// which every lane has finished reading (they all passed this exchange's barrier since).
inline void* slot(int set, int tid) { return &slots[(size_t(set) * threads.size() + size_t(tid)) * 4]; }
template <class T>
T shfl_xor(T v, int mask) {
  static_assert(sizeof(T) <= 32);
  const int n = int(threads.size()), set = cur->shuffles++ % 2;
  std::memcpy(slot(set, cur->tid), &v, sizeof v);
  wait(kAtWarp);
  const int from = (cur->tid & ~31) | ((cur->tid & 31) ^ mask);
  T r = v;
  if (from < n) std::memcpy(&r, slot(set, from), sizeof r);
  return r;
}

// all[l] = v of lane l, for the 32 lanes of the caller's warp, every one of which must take part
// (as mma.sync and ldmatrix require).
template <class T>
void warp_share(const T& v, T (&all)[32]) {
  static_assert(sizeof(T) <= 28);
  const int n = int(threads.size()), set = cur->shuffles++ % 2, w = cur->tid & ~31;
  const unsigned seq = cur->shuffles;  // each lane's count of exchanges so far tags its value
  std::memcpy(slot(set, cur->tid), &seq, sizeof seq);
  std::memcpy(static_cast<char*>(slot(set, cur->tid)) + 4, &v, sizeof v);
  wait(kAtWarp);
  for (int l = 0; l < 32; l++) {
    unsigned theirs = 0;
    if (w + l < n) std::memcpy(&theirs, slot(set, w + l), sizeof theirs);
    if (theirs != seq) fail("mma.sync or ldmatrix without all 32 lanes of the warp");
    std::memcpy(&all[l], static_cast<char*>(slot(set, w + l)) + 4, sizeof(T));
  }
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lane l gives the address of row l % 8 of
// matrix l / 8; r[m] receives elements (l / 4, 2 (l % 4) + {0, 1}) of matrix m, or with trans
// (2 (l % 4) + {0, 1}, l / 4). Every lane reads before any goes on (a second barrier), as the
// one instruction does.
inline void ldmatrix_x4(uint32_t (&r)[4], const void* p, bool trans) {
  const auto* c = static_cast<const unsigned char*>(p);
  if (reinterpret_cast<uintptr_t>(p) % 16 || c < dynamic_smem || c + 16 > dynamic_smem + dynamic_bytes)
    fail("ldmatrix: a row address not 16-byte aligned in dynamic shared memory");
  const unsigned char* rows[32];
  warp_share(c, rows);
  const int lane = cur->tid & 31;
  for (int m = 0; m < 4; m++) {
    uint16_t e[2];
    for (int k = 0; k < 2; k++) {
      const int row = trans ? 2 * (lane % 4) + k : lane / 4, col = trans ? lane / 4 : 2 * (lane % 4) + k;
      std::memcpy(&e[k], rows[8 * m + row] + 2 * col, 2);
    }
    r[m] = e[0] | uint32_t(e[1]) << 16;
  }
  wait(kAtWarp);
}

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32, d += a b, with g = lane / 4,
// c = 2 (lane % 4): A(16 x 16) is a[0] = (g, c..c+1), a[1] = (g+8, c..), a[2] = (g, c+8..),
// a[3] = (g+8, c+8..), two elements per register, the lower column in the low half; B(16 x 8)
// is b0 = rows c..c+1, b1 = rows c+8.. of column g; d = (g, c), (g, c+1), (g+8, c), (g+8, c+1).
template <class S>
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  struct Regs { uint32_t a[4], b[2]; };
  Regs all[32];
  warp_share(Regs{{a[0], a[1], a[2], a[3]}, {b0, b1}}, all);
  auto elem = [](uint32_t r, int k) {
    const uint16_t bits = uint16_t(r >> (16 * (k % 2)));
    S x;
    std::memcpy(&x, &bits, 2);
    return frugal::to_f32(x);
  };
  auto A = [&](int row, int k) { return elem(all[4 * (row % 8) + (k % 8) / 2].a[row / 8 + 2 * (k / 8)], k); };
  auto B = [&](int k, int col) { return elem(all[4 * col + (k % 8) / 2].b[k / 8], k); };
  const int lane = cur->tid & 31, g = lane / 4, c = 2 * (lane % 4);
  for (int e = 0; e < 4; e++) {
    float acc = d[e];
    for (int k = 0; k < 16; k++) acc += A(g + 8 * (e / 2), k) * B(k, c + e % 2);
    d[e] = acc;
  }
}

// The destination holds NaN bytes from the issue until the wait: both a read before the wait
// and a copy issued over data another warp still reads show.
inline void copy_async(void* dst, const void* src, bool ok) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 || reinterpret_cast<uintptr_t>(src) % 16) fail("cp.async of 16 bytes misaligned");
  std::memset(dst, 0xff, 16);
  cur->open.push_back({dst, ok ? src : nullptr});
}
inline void async_commit() {
  cur->groups.push_back(std::move(cur->open));
  cur->open.clear();
}
inline void async_wait(size_t pending) {  // lands all but the newest `pending` groups
  while (cur->groups.size() > pending) {
    for (const AsyncCopy& c : cur->groups.front()) {
      if (c.src) std::memcpy(c.dst, c.src, 16);
      else std::memset(c.dst, 0, 16);
    }
    cur->groups.erase(cur->groups.begin());
  }
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
