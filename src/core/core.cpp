// core: MemoryPool, RNG, checks, atomic file writes.
#include "core/core.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace frugal {

void check_failed(const char* file, int line, const char* cond, const std::string& msg) {
  std::fprintf(stderr, "frugal: internal error at %s:%d: %s %s\n", file, line, cond, msg.c_str());
  std::abort();
}

const char* mem_name(Mem m) {
  static const char* names[] = {"params", "grads", "optimizer", "activations", "comm", "workspace", "runtime"};
  return names[static_cast<int>(m)];
}

static void* host_alloc(size_t bytes) {
  void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (p) std::memset(p, 0, (bytes + 63) / 64 * 64);
  return p;
}

static void host_zero(void* p, size_t bytes) { std::memset(p, 0, bytes); }

Allocator host_allocator() { return {host_alloc, std::free, host_zero}; }

MemoryPool::MemoryPool() : allocator_(host_allocator()) {}

MemoryPool& MemoryPool::get() {
  static MemoryPool pool;
  return pool;
}

static constexpr size_t kCacheMax = size_t(2) << 30;

void* MemoryPool::alloc(size_t bytes, Mem cat, const Allocator& from) {
  const size_t rounded = (bytes + 63) / 64 * 64;  // what is allocated, and zeroed on reuse
  void* p = nullptr;
  auto hit = std::find_if(cache_.begin(), cache_.end(), [&](const Kept& k) { return k.rounded == rounded && k.from.alloc == from.alloc; });
  if (hit != cache_.end()) {
    p = hit->p;
    from.zero(p, rounded);
    cached_bytes_ -= rounded;
    cache_.erase(hit);
  } else {
    p = from.alloc(rounded);
    if (!p) {  // out: what this allocator's kept blocks hold may be enough
      auto mine = std::stable_partition(cache_.begin(), cache_.end(), [&](const Kept& k) { return k.from.alloc != from.alloc; });
      for (auto k = mine; k != cache_.end(); ++k) {
        k->from.free(k->p);
        cached_bytes_ -= k->rounded;
      }
      cache_.erase(mine, cache_.end());
      p = from.alloc(rounded);
    }
  }
  FRUGAL_CHECK(p != nullptr, "out of memory allocating {} bytes of {}", bytes, mem_name(cat));
  live_.push_back({p, bytes, cat, from});
  stats_.allocations++;
  int c = static_cast<int>(cat);
  stats_.current[c] += bytes;
  stats_.peak[c] = std::max(stats_.peak[c], stats_.current[c]);
  stats_.total_current += bytes;
  stats_.total_peak = std::max(stats_.total_peak, stats_.total_current);
  return p;
}

void MemoryPool::release(void* p) {
  auto it = std::find_if(live_.begin(), live_.end(), [p](const Entry& e) { return e.p == p; });
  FRUGAL_CHECK(it != live_.end(), "release of a pointer the pool does not own");
  stats_.current[static_cast<int>(it->cat)] -= it->bytes;
  stats_.total_current -= it->bytes;
  const size_t rounded = (it->bytes + 63) / 64 * 64;
  if (it->from.zero && cached_bytes_ + rounded <= kCacheMax) {
    cache_.push_back({rounded, p, it->from});
    cached_bytes_ += rounded;
  } else {
    it->from.free(p);
  }
  live_.erase(it);
}

void MemoryPool::trim() {
  for (const Kept& k : cache_) k.from.free(k.p);
  cache_.clear();
  cached_bytes_ = 0;
}

MemoryPool::~MemoryPool() {
  for (const Kept& k : cache_)
    if (k.from.free == host_allocator().free) k.from.free(k.p);
}

void MemoryPool::reset_peak() {
  stats_.peak = stats_.current;
  stats_.total_peak = stats_.total_current;
}

static uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

Rng::Rng(uint64_t seed) {
  for (auto& s : s_) s = splitmix64(seed);
}

uint64_t Rng::next() {
  auto rotl = [](uint64_t x, int k) { return (x << k) | (x >> (64 - k)); };
  uint64_t result = rotl(s_[1] * 5, 7) * 9, t = s_[1] << 17;
  s_[2] ^= s_[0]; s_[3] ^= s_[1]; s_[1] ^= s_[2]; s_[0] ^= s_[3];
  s_[2] ^= t; s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::uniform() { return (next() >> 11) * 0x1.0p-53; }

static double box_muller(double u1, double u2) {
  return std::sqrt(-2.0 * std::log1p(-u1)) * std::cos(2.0 * M_PI * u2);
}

double Rng::normal() {
  double u1 = uniform(), u2 = uniform();
  return box_muller(u1, u2);
}

// A model's init: ~40 ns a value in libm's log1p and cos, 5 s for gpt2's 124M on one thread.
void Rng::normals(float* out, int64_t n, double scale) {
  constexpr int64_t kChunk = int64_t(1) << 16;
  std::vector<double> u(2 * size_t(std::min(n, kChunk)));
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t m = std::min(kChunk, n - i0);
    for (int64_t i = 0; i < 2 * m; i++) u[size_t(i)] = uniform();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; i++) out[i0 + i] = float(scale * box_muller(u[size_t(2 * i)], u[size_t(2 * i + 1)]));
  }
}

uint64_t Rng::below(uint64_t n) { return n ? next() % n : 0; }

std::string read_whole_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) user_error("{}: a directory, expected a file", path);
  std::ifstream in(path, std::ios::binary);
  if (!in) user_error("{}: cannot read: {}", path, std::strerror(errno));
  std::string bytes{std::istreambuf_iterator<char>(in), {}};
  if (in.bad()) user_error("{}: read failed: {}", path, std::strerror(errno));
  return bytes;
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)), tmp_(path_ + ".tmp") {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd_ < 0) user_error("{}: cannot write: {}", path_, std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t bytes) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    ssize_t w = ::write(fd_, p, bytes);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) user_error("{}: write failed: {}", path_, std::strerror(errno));
    p += w;
    bytes -= size_t(w);
  }
}

void AtomicFile::write_at(size_t offset, const void* data, size_t bytes) {
  if (::pwrite(fd_, data, bytes, off_t(offset)) != ssize_t(bytes))
    user_error("{}: write failed: {}", path_, std::strerror(errno));
}

void AtomicFile::commit() {
  int fd = fd_;
  fd_ = -1;
  bool ok = ::fsync(fd) == 0;
  ok = (::close(fd) == 0) && ok;
  if (!ok || std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp_.c_str());
    user_error("{}: could not be written: {}", path_, std::strerror(e));
  }
}

void fsync_dir(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) user_error("{}: cannot open the directory: {}", path, std::strerror(errno));
  bool ok = ::fsync(fd) == 0;
  int e = errno;
  ::close(fd);
  if (!ok) user_error("{}: fsync failed: {}", path, std::strerror(e));
}

uint64_t checksum(const void* data, size_t bytes, uint64_t h) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t w;
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 1099511628211ull;
  }
  for (; i < bytes; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

}  // namespace frugal
