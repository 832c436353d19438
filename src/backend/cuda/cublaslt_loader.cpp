// cuBLASLt, loaded when the CUDA backend first calls it, not when frugal starts. Linked, the
// library runs its ~6,500 static constructors at every start and faults in ~150 MB: every
// process paid that, CPU runs, prepare, plan and each MPI rank included. These are the twelve
// functions frugal calls; each finds the library's own the first time it is called. (The
// emulated device, tests/cuda/emu, has its own cuBLASLt and does not build this file.)
#include <dlfcn.h>

#include <cublasLt.h>

#include "core/core.h"

namespace frugal {
namespace {

#define FRUGAL_STR2(x) #x
#define FRUGAL_STR(x) FRUGAL_STR2(x)

// The toolkit's library the build linked against (FRUGAL_CUBLASLT, from CMake), else the
// soname of this header's major version where the loader finds it.
void* library() {
  static void* lib = [] {
    std::string errors;
    for (const char* name : {FRUGAL_CUBLASLT, "libcublasLt.so." FRUGAL_STR(CUBLAS_VER_MAJOR)}) {
      if (void* h = dlopen(name, RTLD_NOW | RTLD_LOCAL)) return h;
      errors += fmt::format("; {}", dlerror());
    }
    user_error("the CUDA backend needs cuBLASLt {}: cannot load it{}", CUBLAS_VER_MAJOR, errors);
  }();
  return lib;
}

// The library's function `name`, of the type of frugal's declaration of it.
template <class F>
F real(F, const char* name) {
  void* p = dlsym(library(), name);
  if (!p) user_error("cuBLASLt: no function {} in the library loaded: {}", name, dlerror());
  return reinterpret_cast<F>(p);
}

}  // namespace
}  // namespace frugal

#define FRUGAL_REAL(name) static const auto fn = frugal::real(&name, #name)

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  FRUGAL_REAL(cublasLtCreate);
  return fn(handle);
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  FRUGAL_REAL(cublasLtDestroy);
  return fn(handle);
}
cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha, const void* A,
                              cublasLtMatrixLayout_t Adesc, const void* B, cublasLtMatrixLayout_t Bdesc, const void* beta,
                              const void* C, cublasLtMatrixLayout_t Cdesc, void* D, cublasLtMatrixLayout_t Ddesc,
                              const cublasLtMatmulAlgo_t* algo, void* workspace, size_t workspace_bytes,
                              cudaStream_t stream) {
  FRUGAL_REAL(cublasLtMatmul);
  return fn(handle, desc, alpha, A, Adesc, B, Bdesc, beta, C, Cdesc, D, Ddesc, algo, workspace, workspace_bytes, stream);
}
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute, cudaDataType_t scale) {
  FRUGAL_REAL(cublasLtMatmulDescCreate);
  return fn(desc, compute, scale);
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  FRUGAL_REAL(cublasLtMatmulDescDestroy);
  return fn(desc);
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, size_t bytes) {
  FRUGAL_REAL(cublasLtMatmulDescSetAttribute);
  return fn(desc, attr, buf, bytes);
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, uint64_t rows, uint64_t cols,
                                          int64_t ld) {
  FRUGAL_REAL(cublasLtMatrixLayoutCreate);
  return fn(layout, type, rows, cols, ld);
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  FRUGAL_REAL(cublasLtMatrixLayoutDestroy);
  return fn(layout);
}
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  FRUGAL_REAL(cublasLtMatmulPreferenceCreate);
  return fn(pref);
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  FRUGAL_REAL(cublasLtMatmulPreferenceDestroy);
  return fn(pref);
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
                                                    size_t bytes) {
  FRUGAL_REAL(cublasLtMatmulPreferenceSetAttribute);
  return fn(pref, attr, buf, bytes);
}
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                              cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int* returned) {
  FRUGAL_REAL(cublasLtMatmulAlgoGetHeuristic);
  return fn(handle, desc, Adesc, Bdesc, Cdesc, Ddesc, pref, requested, results, returned);
}
