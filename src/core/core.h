// core: errors and checks, the tagged MemoryPool, the deterministic RNG.
// Everything large in frugal is allocated from the MemoryPool under a category, so that
// `train` can report (and `plan` can predict) the peak bytes of each category.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace frugal {

// Bad input (config, flags, data file, run directory): one line naming file, field, expected.
struct UserError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... A>
[[noreturn]] void user_error(fmt::format_string<A...> f, A&&... a) {
  throw UserError(fmt::format(f, std::forward<A>(a)...));
}

// A broken invariant is a bug: print file:line and abort.
[[noreturn]] void check_failed(const char* file, int line, const char* cond, const std::string& msg);
#define FRUGAL_CHECK(cond, ...)                                                          \
  do {                                                                                   \
    if (!(cond)) ::frugal::check_failed(__FILE__, __LINE__, #cond, fmt::format(__VA_ARGS__)); \
  } while (0)

// ---- MemoryPool ---------------------------------------------------------------------------
// runtime: device memory a GPU backend keeps for itself (cuBLASLt's workspace, token staging,
// reduction slots, attention's row sums); 0 on the CPU.
enum class Mem { params, grads, optimizer, activations, comm, workspace, runtime };
inline constexpr int num_mem = 7;
const char* mem_name(Mem m);

struct MemStats {
  std::array<size_t, num_mem> current{}, peak{};
  size_t total_current = 0, total_peak = 0;
  size_t allocations = 0;  // alloc() calls since the start
};

// What stands behind the pool: zero-filled allocations of at least 64-byte alignment. The
// default is host memory; the CUDA backend installs device memory.
struct Allocator {
  void* (*alloc)(size_t bytes);  // null when out of memory
  void (*free)(void* p);
  // Zero-fills a released block for its next use (on a GPU in order with the device's work);
  // null: released blocks go straight back to free.
  void (*zero)(void* p, size_t bytes) = nullptr;
};
Allocator host_allocator();  // the default

// Process-wide pool: 64-byte aligned, zero-filled allocations, accounted per category. Blocks are
// kept when released (up to 2 GiB in all) and handed out again for the same size and
// allocator, zero-filled: a buffer allocated and freed around every block (zero3) then
// costs a memset, not fresh pages from the kernel (or a cudaMalloc and a cudaFree, which waits
// for the device) each time. When an allocator runs out, its kept blocks are freed and the
// request tried once more. The statistics count bytes in use, not kept blocks. train() trims
// the kept blocks when it returns, so a process that goes on after a run keeps none.
class MemoryPool {
 public:
  static MemoryPool& get();
  // Frees the host's kept blocks; a device's, whose runtime may be gone at exit, stay.
  ~MemoryPool();
  void* alloc(size_t bytes, Mem cat) { return alloc(bytes, cat, allocator_); }
  void* alloc(size_t bytes, Mem cat, const Allocator& from);  // from `from`, whatever is installed
  void release(void* p);
  void trim();  // frees every kept block, each by its own allocator
  size_t kept_bytes() const { return cached_bytes_; }
  const MemStats& stats() const { return stats_; }
  void reset_peak();  // peak := current, e.g. at the start of a step
  // Allocations from now on come from `a`; live ones are released by the allocator that made
  // them. Returns the allocator it replaces.
  Allocator set_allocator(Allocator a) {
    Allocator old = allocator_;
    allocator_ = a;
    return old;
  }

 private:
  struct Entry { void* p; size_t bytes; Mem cat; Allocator from; };
  struct Kept { size_t rounded; void* p; Allocator from; };
  Allocator allocator_;
  std::vector<Kept> cache_;  // released blocks, for reuse
  size_t cached_bytes_ = 0;
  MemoryPool();
  std::vector<Entry> live_;
  MemStats stats_;
};

// Owning handle to a pooled array of T (moves only).
template <class T>
class PoolArray {
 public:
  PoolArray() = default;
  PoolArray(size_t n, Mem cat) : n_(n) {
    if (n) p_ = static_cast<T*>(MemoryPool::get().alloc(n * sizeof(T), cat));
  }
  PoolArray(PoolArray&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; o.n_ = 0; }
  PoolArray& operator=(PoolArray&& o) noexcept {
    if (this != &o) { reset(); p_ = o.p_; n_ = o.n_; o.p_ = nullptr; o.n_ = 0; }
    return *this;
  }
  ~PoolArray() { reset(); }
  void reset() { if (p_) MemoryPool::get().release(p_); p_ = nullptr; n_ = 0; }
  T* data() const { return p_; }
  size_t size() const { return n_; }
  T& operator[](size_t i) const { return p_[i]; }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// ---- RNG ------------------------------------------------------------------------------------
// splitmix64-seeded xoshiro256**: fast, portable and identical on every platform, so a seed
// fixes init and data order everywhere.
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();
  double uniform();                 // [0, 1)
  double normal();                  // N(0, 1), Box-Muller
  // out[i] = float(scale * normal()) for i < n: the same values as n calls, the transforms on
  // every thread (the uniforms are drawn in order first).
  void normals(float* out, int64_t n, double scale);
  uint64_t below(uint64_t n);       // [0, n)
  std::array<uint64_t, 4> state() const { return s_; }

 private:
  std::array<uint64_t, 4> s_;
};

// A file written atomically: bytes go to "<path>.tmp"; commit() flushes, fsyncs and renames it
// into place. Destroyed without commit (an error, an exception), the temporary is removed, so a
// reader never sees a half-written file. Errors are UserErrors naming the path.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  AtomicFile(const AtomicFile&) = delete;
  ~AtomicFile();
  void write(const void* data, size_t bytes);
  void write_at(size_t offset, const void* data, size_t bytes);  // over bytes already written
  void commit();

 private:
  std::string path_, tmp_;
  int fd_ = -1;
};

// fsync of a directory, so that the renames and new entries in it are durable.
void fsync_dir(const std::string& path);

// A checksum of bytes (checkpoint tensors, token shards): FNV-1a over 8-byte little-endian
// words, then the tail's bytes. Each step is a bijection of the state, so one changed word, a
// flipped bit say, always changes the sum. Continues from h when every earlier part had a
// multiple of 8 bytes.
inline constexpr uint64_t kChecksumStart = 1469598103934665603ull;
uint64_t checksum(const void* data, size_t bytes, uint64_t h = kChecksumStart);

// A file's bytes; UserError naming it if it is missing, a directory or unreadable.
std::string read_whole_file(const std::string& path);

inline void write_file_atomic(const std::string& path, const void* data, size_t bytes) {
  AtomicFile f(path);
  f.write(data, bytes);
  f.commit();
}

}  // namespace frugal
