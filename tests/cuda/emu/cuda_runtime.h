// The CUDA runtime API as frugal calls it, for the emulated device (emu_device.h): device
// memory is host memory. Device work (kernels, GEMMs, async copies and memsets) is queued and
// runs in order only at a synchronisation (device, stream or event synchronize, a blocking
// copy, a free, a collective), so a host read of a result without one sees stale data, as it
// may on a GPU. There is one queue: streams and events are tokens. cudaMalloc'd memory starts
// as 0xff bytes (NaN), so a read before a write shows, and it is unmapped for the host
// (PROT_NONE) except while device work or a copy runs: a host access to it stops the process
// with a line naming the address, where a GPU would crash or read garbage. Managed and pinned
// host memory (cudaMallocManaged, cudaMallocHost) stay open to the host. Frees of unknown
// pointers fail; cudaMemGetInfo counts what is allocated against a 16 GiB device.
#pragma once
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "emu_device.h"

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2, cudaErrorNotReady = 600 };
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice, cudaMemcpyDefault };
enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14 };  // library_types.h's values
enum cudaMemoryAdvise { cudaMemAdviseSetPreferredLocation = 3 };
enum cudaMemLocationType { cudaMemLocationTypeDevice = 1 };
enum cudaMemoryType { cudaMemoryTypeUnregistered = 0, cudaMemoryTypeHost = 1, cudaMemoryTypeDevice = 2, cudaMemoryTypeManaged = 3 };
struct cudaPointerAttributes {
  cudaMemoryType type;
  int device;
  void* devicePointer;
  void* hostPointer;
};
struct cudaMemLocation {
  cudaMemLocationType type;
  int id;
};
using cudaStream_t = struct CUstream_st*;
using cudaEvent_t = struct CUevent_st*;
constexpr unsigned cudaStreamNonBlocking = 1, cudaEventDisableTiming = 2;

namespace emu {
enum class Kind { device, managed, pinned };
struct Allocation {
  size_t bytes, mapped;  // mapped: whole pages, for device memory
  Kind kind;
};
inline std::map<const void*, Allocation> allocations;
inline size_t allocated = 0;
constexpr size_t kDeviceBytes = size_t(16) << 30;
inline int open_depth = 0;  // > 0 while device work or a copy runs: device memory is mapped
inline int blocking_copies = 0;  // cudaMemcpy calls so far (tests count those a step makes)
inline int device_mallocs = 0, device_frees = 0;  // cudaMalloc and cudaFree calls so far
// Calls that make the host wait for all the device's work so far (a stream or device
// synchronisation, a blocking copy, cudaFree, a copy out of pageable memory); not counted: an
// event's synchronisation, which waits for one point of the stream.
inline int device_waits = 0;

inline const std::pair<const void* const, Allocation>* find(const void* p) {  // the allocation holding p
  auto it = allocations.upper_bound(p);
  if (it == allocations.begin()) return nullptr;
  --it;
  const char* b = static_cast<const char*>(it->first);
  return static_cast<const char*>(p) < b + std::max(it->second.bytes, it->second.mapped) ? &*it : nullptr;
}
// [p, p + n) inside one allocation, where p is in one; else the process stops naming the call.
inline void check_range(const void* p, size_t n, const char* what) {
  auto* hit = find(p);
  if (hit && static_cast<const char*>(p) + n > static_cast<const char*>(hit->first) + hit->second.bytes) {
    std::fprintf(stderr, "cuda emulation: %s of %zu bytes at %p runs past its allocation of %zu bytes\n", what, n, p,
                 hit->second.bytes);
    std::abort();
  }
}
inline void protect(const void* p, const Allocation& a, bool open) {
  if (mprotect(const_cast<void*>(p), a.mapped, open ? PROT_READ | PROT_WRITE : PROT_NONE) != 0) std::abort();
}
inline void set_open(bool open) {
  for (auto& [p, a] : allocations)
    if (a.kind == Kind::device) protect(p, a, open);
}
struct Open {  // device memory is mapped while one lives
  Open() { if (open_depth++ == 0) set_open(true); }
  ~Open() { if (--open_depth == 0) set_open(false); }
  Open(const Open&) = delete;
};
inline void on_fault(int, siginfo_t* info, void*) {
  auto* hit = find(info->si_addr);
  if (hit && hit->second.kind == Kind::device) {
    char line[200];
    int n = std::snprintf(line, sizeof line, "emulated device: the host touched device memory at %p (%zu bytes into a cudaMalloc'd block of %zu)\n",
                          info->si_addr, size_t(static_cast<char*>(info->si_addr) - static_cast<const char*>(hit->first)), hit->second.bytes);
    if (write(2, line, size_t(n)) < 0) {}
    std::abort();
  }
  signal(SIGSEGV, SIG_DFL);  // any other fault: the default report on return
}

inline cudaError_t alloc(void** p, size_t n, Kind kind) {
  static bool handler = [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO;
    return sigaction(SIGSEGV, &sa, nullptr) == 0;
  }();
  (void)handler;
  Allocation a{n, 0, kind};
  if (kind == Kind::device) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    a.mapped = (std::max<size_t>(n, 1) + page - 1) / page * page;
    *p = mmap(nullptr, a.mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (*p == MAP_FAILED) return *p = nullptr, cudaErrorMemoryAllocation;
  } else {
    *p = std::aligned_alloc(256, (std::max<size_t>(n, 1) + 255) / 256 * 256);
    if (!*p) return cudaErrorMemoryAllocation;
  }
  std::memset(*p, 0xff, n);
  if (kind == Kind::device && open_depth == 0) protect(*p, a, false);
  allocations[*p] = a;
  allocated += n;
  return cudaSuccess;
}
inline cudaError_t release(void* p) {
  if (!p) return cudaSuccess;
  auto it = allocations.find(p);
  if (it == allocations.end()) return cudaErrorInvalidValue;
  allocated -= it->second.bytes;
  if (it->second.kind == Kind::device) munmap(p, it->second.mapped);
  else std::free(p);
  allocations.erase(it);
  return cudaSuccess;
}
inline std::vector<std::function<void()>> queue;  // device work not yet run
inline void enqueue(std::function<void()> f) { queue.push_back(std::move(f)); }
inline void flush() {
  if (queue.empty()) return;
  Open open;
  for (size_t i = 0; i < queue.size(); i++) queue[i]();
  queue.clear();
}
inline bool on_device(const void* p) { return find(p) != nullptr; }  // inside any CUDA allocation
template <class T>
T* token() {  // a distinct non-null handle
  static char slots[1024];
  static int next = 0;
  return reinterpret_cast<T*>(&slots[next++ % 1024]);
}
}  // namespace emu

inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated CUDA error"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidValue; }
inline cudaError_t cudaDeviceSynchronize() {
  emu::device_waits++;
  emu::flush();
  return cudaSuccess;
}

template <class T>
cudaError_t cudaMalloc(T** p, size_t n) {
  emu::device_mallocs++;
  return emu::alloc(reinterpret_cast<void**>(p), n, emu::Kind::device);
}
inline cudaError_t cudaMallocManaged(void** p, size_t n, unsigned = 1) { return emu::alloc(p, n, emu::Kind::managed); }
template <class T>
cudaError_t cudaMallocHost(T** p, size_t n) { return emu::alloc(reinterpret_cast<void**>(p), n, emu::Kind::pinned); }
inline cudaError_t cudaFree(void* p) {
  emu::device_frees++;
  emu::device_waits++;
  emu::flush();
  return emu::release(p);
}
inline cudaError_t cudaFreeHost(void* p) { emu::flush(); return emu::release(p); }
inline cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total) {
  *total = emu::kDeviceBytes;
  *free_b = emu::kDeviceBytes - emu::allocated;
  return cudaSuccess;
}
inline cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* a, const void* p) {
  *a = cudaPointerAttributes{cudaMemoryTypeUnregistered, -1, nullptr, nullptr};
  auto* hit = emu::find(p);
  if (!hit) return cudaSuccess;
  void* q = const_cast<void*>(p);
  switch (hit->second.kind) {
    case emu::Kind::device: *a = cudaPointerAttributes{cudaMemoryTypeDevice, 0, q, nullptr}; break;
    case emu::Kind::managed: *a = cudaPointerAttributes{cudaMemoryTypeManaged, 0, q, q}; break;
    case emu::Kind::pinned: *a = cudaPointerAttributes{cudaMemoryTypeHost, 0, q, q}; break;
  }
  return cudaSuccess;
}
inline cudaError_t cudaMemAdvise(const void*, size_t, cudaMemoryAdvise, cudaMemLocation) { return cudaSuccess; }
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) {
  emu::blocking_copies++;
  emu::device_waits++;
  emu::flush();
  emu::Open open;
  std::memmove(d, s, n);
  return cudaSuccess;
}
// From device or pinned memory the copy is queued and reads its source when it runs (so a
// pinned source the host overwrites before then shows). From or into pageable host memory it
// waits for the stream (the driver stages it through pinned memory of its own, as it may).
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind k, cudaStream_t = nullptr) {
  if (!emu::on_device(d) || !emu::on_device(s)) return cudaMemcpy(d, s, n, k);
  emu::check_range(d, n, "cudaMemcpyAsync's destination");
  emu::check_range(s, n, "cudaMemcpyAsync's source");
  emu::enqueue([=] { std::memmove(d, s, n); });
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t = nullptr) {
  emu::check_range(p, n, "cudaMemsetAsync");
  emu::enqueue([=] { std::memset(p, v, n); });
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void* p, int v, size_t n) { return cudaMemsetAsync(p, v, n); }  // async to the host too

inline cudaError_t cudaStreamCreate(cudaStream_t* s) { *s = emu::token<CUstream_st>(); return cudaSuccess; }
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return cudaStreamCreate(s); }
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) {
  emu::device_waits++;
  emu::flush();
  return cudaSuccess;
}
inline cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned = 0) { return cudaSuccess; }
inline cudaError_t cudaEventCreate(cudaEvent_t* e) { *e = emu::token<CUevent_st>(); return cudaSuccess; }
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
inline cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t = nullptr) { return cudaSuccess; }
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { emu::flush(); return cudaSuccess; }
inline cudaError_t cudaEventQuery(cudaEvent_t) { emu::flush(); return cudaSuccess; }  // done once run
inline cudaError_t cudaEventDestroy(cudaEvent_t) { return cudaSuccess; }
