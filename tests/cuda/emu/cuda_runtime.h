// The CUDA runtime API as frugal calls it, for the emulated device (emu_device.h): device
// memory is host memory. Device work (kernels, GEMMs, async copies and memsets) is queued and
// runs in order only at a synchronisation (device, stream or event synchronize, a blocking
// copy, a free, a collective), so a host read of a result without one sees stale data, as it
// may on a GPU. There is one queue: streams and events are tokens. cudaMalloc'd memory starts
// as 0xff bytes (NaN), so a read before a write shows; frees of unknown pointers fail;
// cudaMemGetInfo counts what is allocated against a 16 GiB device.
#pragma once
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "emu_device.h"

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2 };
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
inline std::map<const void*, size_t> allocations;
inline size_t allocated = 0;
constexpr size_t kDeviceBytes = size_t(16) << 30;

inline cudaError_t alloc(void** p, size_t n) {
  *p = std::aligned_alloc(256, (std::max<size_t>(n, 1) + 255) / 256 * 256);
  if (!*p) return cudaErrorMemoryAllocation;
  std::memset(*p, 0xff, n);
  allocations[*p] = n;
  allocated += n;
  return cudaSuccess;
}
inline cudaError_t release(void* p) {
  if (!p) return cudaSuccess;
  auto it = allocations.find(p);
  if (it == allocations.end()) return cudaErrorInvalidValue;
  allocated -= it->second;
  allocations.erase(it);
  std::free(p);
  return cudaSuccess;
}
inline std::vector<std::function<void()>> queue;  // device work not yet run
inline void enqueue(std::function<void()> f) { queue.push_back(std::move(f)); }
inline void flush() {
  for (size_t i = 0; i < queue.size(); i++) queue[i]();
  queue.clear();
}
inline bool on_device(const void* p) {  // inside a cudaMalloc'd range
  auto it = allocations.upper_bound(p);
  return it != allocations.begin() && (--it, static_cast<const char*>(p) < static_cast<const char*>(it->first) + it->second);
}
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
inline cudaError_t cudaDeviceSynchronize() { emu::flush(); return cudaSuccess; }

template <class T>
cudaError_t cudaMalloc(T** p, size_t n) { return emu::alloc(reinterpret_cast<void**>(p), n); }
inline cudaError_t cudaMallocManaged(void** p, size_t n, unsigned = 1) { return emu::alloc(p, n); }
template <class T>
cudaError_t cudaMallocHost(T** p, size_t n) { return emu::alloc(reinterpret_cast<void**>(p), n); }
inline cudaError_t cudaFree(void* p) { emu::flush(); return emu::release(p); }
inline cudaError_t cudaFreeHost(void* p) { emu::flush(); return emu::release(p); }
inline cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total) {
  *total = emu::kDeviceBytes;
  *free_b = emu::kDeviceBytes - emu::allocated;
  return cudaSuccess;
}
// Managed inside a cudaMalloc'd range, else unregistered host memory.
inline cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* a, const void* p) {
  *a = cudaPointerAttributes{cudaMemoryTypeUnregistered, -1, nullptr, nullptr};
  if (emu::on_device(p)) *a = cudaPointerAttributes{cudaMemoryTypeManaged, 0, const_cast<void*>(p), const_cast<void*>(p)};
  return cudaSuccess;
}
inline cudaError_t cudaMemAdvise(const void*, size_t, cudaMemoryAdvise, cudaMemLocation) { return cudaSuccess; }
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) {
  emu::flush();
  std::memmove(d, s, n);
  return cudaSuccess;
}
// From pageable host memory the source is staged before the call returns: taken now.
// Into pageable host memory it returns once the copy is done.
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind k, cudaStream_t = nullptr) {
  if (!emu::on_device(d)) return cudaMemcpy(d, s, n, k);
  if (emu::on_device(s)) {
    emu::enqueue([=] { std::memmove(d, s, n); });
  } else {
    auto staged = std::make_shared<std::vector<char>>(static_cast<const char*>(s), static_cast<const char*>(s) + n);
    emu::enqueue([=] { std::memcpy(d, staged->data(), n); });
  }
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t = nullptr) {
  emu::enqueue([=] { std::memset(p, v, n); });
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void* p, int v, size_t n) { return cudaMemsetAsync(p, v, n); }  // async to the host too

inline cudaError_t cudaStreamCreate(cudaStream_t* s) { *s = emu::token<CUstream_st>(); return cudaSuccess; }
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return cudaStreamCreate(s); }
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { emu::flush(); return cudaSuccess; }
inline cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned = 0) { return cudaSuccess; }
inline cudaError_t cudaEventCreate(cudaEvent_t* e) { *e = emu::token<CUevent_st>(); return cudaSuccess; }
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
inline cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t = nullptr) { return cudaSuccess; }
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { emu::flush(); return cudaSuccess; }
inline cudaError_t cudaEventDestroy(cudaEvent_t) { return cudaSuccess; }
