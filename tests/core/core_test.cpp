// MemoryPool accounting, RNG determinism and statistics, atomic files, dtype conversions.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>

#include <omp.h>

#include "core/core.h"
#include "core/dtype.h"
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
  EXPECT_EQ(Budget::live, 3);  // kept
  pool.trim();  // each freed by its own allocator
  EXPECT_EQ(Budget::live, 0);
  EXPECT_EQ(pool.kept_bytes(), 0u);
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

TEST(Rng, NormalsOnEveryThreadAreTheCallsInOrder) {
  // the model's init draws through normals(): the values (and so every pinned run) of one
  // normal() at a time, across its chunks (2^16), on 2 threads, and the stream left where n
  // calls leave it
  const int threads = omp_get_max_threads();
  omp_set_num_threads(2);
  for (int64_t n : {int64_t(1), int64_t(1000), int64_t(65536), int64_t(150001)}) {
    Rng a(11), b(11);
    std::vector<float> got(size_t(n) + 1, -1.0f), want(static_cast<size_t>(n));
    a.normals(got.data(), n, 0.02);
    for (auto& x : want) x = float(0.02 * b.normal());
    EXPECT_EQ(0, std::memcmp(got.data(), want.data(), want.size() * sizeof(float))) << n;
    EXPECT_EQ(got[size_t(n)], -1.0f);
    EXPECT_EQ(a.next(), b.next());
  }
  omp_set_num_threads(threads);
}

// fp16 against its definition: each of the 65,536 values widens to sign x (1024 + m) 2^(e-25)
// (subnormals m 2^-24; inf; NaN), and a float narrows to the nearest fp16, ties to the even one,
// to inf from 65520 on. Both the conversions in use (F16C where the build has it, whose NaNs the
// integer ones must also match bit for bit) and the integer ones; floats: every fp16 value, its
// midpoints with the floats on either side, and fresh random bit patterns.
TEST(DType, Fp16ConversionsAreExactAndRoundToNearestEven) {
  std::vector<double> value(0x7c00);  // the finite non-negative fp16 values, increasing
  for (uint32_t h = 0; h < 65536; h++) {
    const int e = h >> 10 & 31, m = h & 1023;
    const double mag = e == 0 ? std::ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : std::ldexp(1024 + m, e - 25);
    const double want = h & 0x8000 ? -mag : mag;
    if (h < 0x7c00) value[h] = mag;
    const float soft = f16_bits_to_f32(uint16_t(h)), used = to_f32(f16{uint16_t(h)});
    EXPECT_EQ(std::bit_cast<uint32_t>(soft), std::bit_cast<uint32_t>(used)) << "fp16 " << h;
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(soft)) << "fp16 " << h;
    } else {
      EXPECT_EQ(double(soft), want) << "fp16 " << h;
      EXPECT_EQ(std::signbit(soft), bool(h & 0x8000)) << "fp16 " << h;
    }
  }
  auto nearest = [&](float x) -> uint32_t {  // the fp16 bits x rounds to
    const double a = std::fabs(double(x));
    const uint32_t sign = std::signbit(x) ? 0x8000u : 0u;
    if (a >= 65520.0) return sign | 0x7c00u;
    const uint32_t lo = uint32_t(std::upper_bound(value.begin(), value.end(), a) - value.begin()) - 1;
    if (lo == 0x7bffu) return sign | lo;
    const double dl = a - value[lo], dh = value[lo + 1] - a;
    return sign | (dl < dh || (dl == dh && lo % 2 == 0) ? lo : lo + 1);
  };
  std::vector<float> xs;
  for (uint32_t h = 0; h < 0x7c00; h++) {
    const float v = float(value[h]), mid = float((value[h] + (h + 1 < 0x7c00 ? value[h + 1] : 65536.0)) / 2);
    for (float x : {v, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)}) xs.insert(xs.end(), {x, -x});
  }
  std::mt19937_64 g(test::test_seed());
  for (int i = 0; i < 1000000; i++) xs.push_back(std::bit_cast<float>(uint32_t(g())));
  for (int i = 0; i < 1000000; i++)  // exponents around fp16's range
    xs.push_back(std::bit_cast<float>(uint32_t(g() & 0x807fffffu) | uint32_t(96 + g() % 50) << 23));
  for (float x : xs) {
    const uint32_t soft = f32_to_f16_bits(x), used = from_f32<f16>(x).bits;
    if (std::isnan(x)) {
      EXPECT_EQ(soft, used) << "float bits " << std::bit_cast<uint32_t>(x);
      EXPECT_TRUE((soft & 0x7c00u) == 0x7c00u && (soft & 0x3ffu)) << "float bits " << std::bit_cast<uint32_t>(x);
      continue;
    }
    const uint32_t want = nearest(x);
    if (soft != want || used != want) {
      ADD_FAILURE() << "float " << x << " (bits " << std::bit_cast<uint32_t>(x) << "): fp16 " << want
                    << " expected, integer " << soft << ", in use " << used << " (seed " << test::test_seed() << ")";
      break;
    }
  }
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
