// MemoryPool accounting, RNG determinism and statistics, atomic files.
#include <cstring>
#include <fstream>

#include "core/core.h"
#include "support/support.h"

namespace frugal {
namespace {

TEST(MemoryPool, TracksCurrentAndPeakPerCategory) {
  auto& pool = MemoryPool::get();
  pool.reset_peak();
  size_t base_act = pool.stats().current[int(Mem::activations)];
  size_t base_opt = pool.stats().current[int(Mem::optimizer)];
  {
    PoolArray<float> a(1000, Mem::activations), b(500, Mem::activations);
    PoolArray<float> o(250, Mem::optimizer);
    EXPECT_EQ(pool.stats().current[int(Mem::activations)], base_act + 6000);
    EXPECT_EQ(pool.stats().current[int(Mem::optimizer)], base_opt + 1000);
    EXPECT_EQ(a[999], 0.0f);  // zero-filled
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % 64, 0u);
  }
  EXPECT_EQ(pool.stats().current[int(Mem::activations)], base_act);
  EXPECT_EQ(pool.stats().peak[int(Mem::activations)], base_act + 6000);
  pool.reset_peak();
  EXPECT_EQ(pool.stats().peak[int(Mem::activations)], base_act);
}

// The device pool is an allocator behind the same accounting: allocations go to the allocator
// installed at the time, and each is released by the one that made it.
int counted_allocs = 0, counted_frees = 0;
void* counted_alloc(size_t bytes) {
  counted_allocs++;
  size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  std::memset(p, 0, rounded);
  return p;
}
void counted_free(void* p) {
  counted_frees++;
  std::free(p);
}

TEST(MemoryPool, AllocatorBehindTheAccountingAndReleasedByItsOwn) {
  auto& pool = MemoryPool::get();
  size_t base = pool.stats().current[int(Mem::grads)];
  PoolArray<float> host(10, Mem::grads);
  Allocator host_allocator = pool.set_allocator({counted_alloc, counted_free});
  PoolArray<float> dev(100, Mem::grads);
  EXPECT_EQ(dev[99], 0.0f);
  host.reset();  // made by the default allocator: not counted
  EXPECT_EQ(counted_allocs, 1);
  EXPECT_EQ(counted_frees, 0);
  EXPECT_EQ(pool.stats().current[int(Mem::grads)], base + 400);
  pool.set_allocator(host_allocator);
  dev.reset();  // made by the counting one, released by it
  EXPECT_EQ(counted_frees, 1);
  EXPECT_EQ(pool.stats().current[int(Mem::grads)], base);
}

// A released large block serves the next request of its size, zero-filled again (zero3 frees
// and allocates its buffers around every block); accounting counts bytes in use only.
TEST(MemoryPool, ReusesReleasedLargeBlocksZeroFilled) {
  const size_t n = (size_t(3) << 20) / 4;  // 3 MiB of floats
  const size_t before = MemoryPool::get().stats().current[int(Mem::comm)];
  float* first;
  {
    PoolArray<float> a(n, Mem::comm);
    first = a.data();
    std::fill(a.data(), a.data() + n, 7.0f);
  }
  EXPECT_EQ(MemoryPool::get().stats().current[int(Mem::comm)], before);
  PoolArray<float> b(n, Mem::comm);
  EXPECT_EQ(b.data(), first);
  EXPECT_EQ(std::count(b.data(), b.data() + n, 0.0f), std::ptrdiff_t(n));
  PoolArray<float> c(n + 16, Mem::comm);  // another size: a new block
  EXPECT_NE(c.data(), first);
}

// Any allocator with a zero function gets the same reuse (the device's: zero3 on a GPU would
// otherwise cudaMalloc and cudaFree, which waits for the device, around every block). When it
// runs out, the pool frees the blocks it kept for it and tries once more.
struct Budget {  // an allocator with room for 3 blocks of 2 MiB
  static inline int live = 0, allocs = 0, frees = 0, zeros = 0;
  static void* alloc(size_t bytes) {
    if (live == 3) return nullptr;
    live++, allocs++;
    return counted_alloc(bytes);
  }
  static void free(void* p) {
    live--, frees++;
    std::free(p);
  }
  static void zero(void* p, size_t bytes) {
    zeros++;
    std::memset(p, 0, bytes);
  }
};

TEST(MemoryPool, KeepsReleasedBlocksOfAnyAllocatorAndFreesThemWhenItRunsOut) {
  auto& pool = MemoryPool::get();
  const Allocator budget{Budget::alloc, Budget::free, Budget::zero};
  const size_t mib2 = size_t(2) << 20;
  void* a = pool.alloc(mib2, Mem::comm, budget);
  void* b = pool.alloc(mib2 + 64, Mem::comm, budget);
  static_cast<char*>(a)[5] = 1;
  pool.release(a);
  pool.release(b);
  EXPECT_EQ(Budget::frees, 0);  // both kept
  void* c = pool.alloc(mib2, Mem::comm, budget);  // a, zero-filled again, no new allocation
  EXPECT_EQ(c, a);
  EXPECT_EQ(static_cast<char*>(c)[5], 0);
  EXPECT_EQ(Budget::allocs, 2);
  EXPECT_EQ(Budget::zeros, 1);
  void* d = pool.alloc(mib2 + 128, Mem::comm, budget);  // the third block fits
  void* e = pool.alloc(mib2 + 192, Mem::comm, budget);  // no room: b, kept, is freed for it
  EXPECT_EQ(Budget::frees, 1);
  EXPECT_EQ(Budget::allocs, 4);
  EXPECT_EQ(Budget::live, 3);
  for (void* p : {c, d, e}) pool.release(p);
}

TEST(Rng, SameSeedSameStreamAndNormalMoments) {
  Rng a(42), b(42), c(43);
  for (int i = 0; i < 100; i++) EXPECT_EQ(a.next(), b.next());
  EXPECT_NE(Rng(42).next(), c.next());
  Rng r(7);
  double s = 0, s2 = 0;
  const int n = 200000;
  for (int i = 0; i < n; i++) {
    double x = r.normal();
    s += x;
    s2 += x * x;
  }
  EXPECT_NEAR(s / n, 0.0, 0.01);
  EXPECT_NEAR(s2 / n, 1.0, 0.01);
}

TEST(AtomicFile, CommitRenamesAndAbandonLeavesNothing) {
  test::TempDir d;
  write_file_atomic(d / "a.txt", "hello", 5);
  std::ifstream in(d / "a.txt");
  std::string s;
  in >> s;
  EXPECT_EQ(s, "hello");
  {
    AtomicFile f(d / "b.txt");
    f.write("partial", 7);
  }  // destroyed without commit
  EXPECT_FALSE(std::filesystem::exists(d / "b.txt"));
  EXPECT_FALSE(std::filesystem::exists(d / "b.txt.tmp"));
  EXPECT_THROW(write_file_atomic(d / "no/such/dir/c.txt", "x", 1), UserError);
}

}  // namespace
}  // namespace frugal
