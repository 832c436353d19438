// NCCL as frugal's NcclComm calls it, for the emulated device: each collective is the MPI
// collective of the same meaning on MPI_COMM_WORLD (device memory is host memory here), run at
// once after the device work queued so far (NcclComm orders its stream after the compute
// stream's work); a group is its calls in order, which every rank issues alike. ncclCommInitRank
// checks that every rank got rank 0's unique id (NcclComm sends it through the bootstrap Comm).
#pragma once
#include <mpi.h>

#include <cstring>

#include "cuda_runtime.h"

enum ncclResult_t { ncclSuccess = 0, ncclInvalidArgument = 4 };
enum ncclDataType_t { ncclUint8 = 1, ncclFloat = 7, ncclBfloat16 = 9 };
enum ncclRedOp_t { ncclSum = 0, ncclMax = 2, ncclAvg = 4 };
struct ncclUniqueId {
  char internal[128];
};
struct ncclComm {
  int rank, size;
};
using ncclComm_t = ncclComm*;

inline const char* ncclGetErrorString(ncclResult_t r) { return r == ncclSuccess ? "no error" : "emulated NCCL error"; }
inline ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  for (int i = 0; i < 128; i++) id->internal[i] = char(i * 37 + 11);  // every byte value matters
  return ncclSuccess;
}
inline ncclResult_t ncclCommInitRank(ncclComm_t* c, int size, ncclUniqueId id, int rank) {
  ncclUniqueId root = id;
  MPI_Bcast(root.internal, 128, MPI_CHAR, 0, MPI_COMM_WORLD);
  int world = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (std::memcmp(root.internal, id.internal, 128) != 0 || size != world) return ncclInvalidArgument;
  *c = new ncclComm{rank, size};
  return ncclSuccess;
}
inline ncclResult_t ncclCommDestroy(ncclComm_t c) { delete c; return ncclSuccess; }
inline ncclResult_t ncclGroupStart() { return ncclSuccess; }
inline ncclResult_t ncclGroupEnd() { return ncclSuccess; }

namespace emu {
inline MPI_Datatype mpi_type(ncclDataType_t t) { return t == ncclFloat ? MPI_FLOAT : MPI_BYTE; }
inline MPI_Op bf16_sum() {  // pairwise in fp32, rounded to bf16
  static MPI_Op op = [] {
    MPI_Op o;
    MPI_Op_create([](void* in, void* inout, int* n, MPI_Datatype*) {
      auto* a = static_cast<const frugal::bf16*>(in);
      auto* b = static_cast<frugal::bf16*>(inout);
      for (int i = 0; i < *n; i++) b[i] = frugal::from_f32<frugal::bf16>(frugal::to_f32(a[i]) + frugal::to_f32(b[i]));
    }, 1, &o);
    return o;
  }();
  return op;
}
inline ncclResult_t reduce_done(ncclRedOp_t op, void* buf, size_t n, ncclComm_t c) {
  if (op == ncclAvg)
    for (size_t i = 0; i < n; i++) static_cast<float*>(buf)[i] /= float(c->size);
  return ncclSuccess;
}
}  // namespace emu

inline ncclResult_t ncclAllReduce(const void* in, void* out, size_t n, ncclDataType_t t, ncclRedOp_t op, ncclComm_t c, cudaStream_t) {
  emu::flush();
  emu::Open open;  // MPI reads and writes device memory
  if (t == ncclBfloat16 && op == ncclSum) {
    MPI_Allreduce(in == out ? MPI_IN_PLACE : in, out, int(n), MPI_UINT16_T, emu::bf16_sum(), MPI_COMM_WORLD);
    return ncclSuccess;
  }
  if (t != ncclFloat) return ncclInvalidArgument;
  MPI_Allreduce(in == out ? MPI_IN_PLACE : in, out, int(n), MPI_FLOAT, op == ncclMax ? MPI_MAX : MPI_SUM, MPI_COMM_WORLD);
  return emu::reduce_done(op, out, n, c);
}
inline ncclResult_t ncclReduceScatter(const void* in, void* out, size_t n, ncclDataType_t t, ncclRedOp_t op, ncclComm_t c, cudaStream_t) {
  emu::flush();
  emu::Open open;  // MPI reads and writes device memory
  if (t != ncclFloat) return ncclInvalidArgument;
  MPI_Reduce_scatter_block(in, out, int(n), MPI_FLOAT, op == ncclMax ? MPI_MAX : MPI_SUM, MPI_COMM_WORLD);
  return emu::reduce_done(op, out, n, c);
}
inline ncclResult_t ncclAllGather(const void* in, void* out, size_t n, ncclDataType_t t, ncclComm_t c, cudaStream_t) {
  emu::flush();
  emu::Open open;  // MPI reads and writes device memory
  const size_t bytes = n * (t == ncclFloat ? 4 : 1);
  const bool in_place = in == static_cast<char*>(out) + c->rank * bytes;
  MPI_Allgather(in_place ? MPI_IN_PLACE : in, int(n), emu::mpi_type(t), out, int(n), emu::mpi_type(t), MPI_COMM_WORLD);
  return ncclSuccess;
}
inline ncclResult_t ncclBroadcast(const void* in, void* out, size_t n, ncclDataType_t t, int root, ncclComm_t c, cudaStream_t) {
  emu::flush();
  emu::Open open;  // MPI reads and writes device memory
  if (c->rank == root && in != out) std::memcpy(out, in, n * (t == ncclFloat ? 4 : 1));
  MPI_Bcast(out, int(n), emu::mpi_type(t), root, MPI_COMM_WORLD);
  return ncclSuccess;
}
