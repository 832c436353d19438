// bf16 or fp32 for gradient reductions over MPI? The gradients are fp32 (accumulated across
// micro-batches). Reducing in bf16 halves the bytes on the wire but adds a cast down before
// and a cast up after, and needs a user-defined MPI_Op (sum in fp32, round to nearest even).
// This times both for a buffer of N fp32 gradients, median of 7 runs, in the same process, and
// zero2/zero3's reduce-scatter both ways (an all-reduce and a slice, or MPI_Reduce_scatter_block),
// and an all-gather of it (zero3's parameter gathers).
//   mpirun -np 2 ./build/bench/reduce_bench [millions of elements, default 25]
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/dtype.h"

using frugal::bf16;

static void sum_bf16(void* in, void* inout, int* len, MPI_Datatype*) {
  auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; i++)
    b[i] = frugal::from_f32<bf16>(frugal::to_f32(bf16{a[i]}) + frugal::to_f32(bf16{b[i]})).bits;
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const int64_t n = int64_t((argc > 1 ? std::atof(argv[1]) : 25.0) * 1e6);
  std::vector<float> g(static_cast<size_t>(n), 1e-3f * float(rank + 1));
  std::vector<uint16_t> h(static_cast<size_t>(n));
  MPI_Op op;
  MPI_Op_create(sum_bf16, 1, &op);
  auto time = [&](auto f) {
    std::vector<double> t;
    for (int k = 0; k < 7; k++) {
      MPI_Barrier(MPI_COMM_WORLD);
      auto t0 = std::chrono::steady_clock::now();
      f();
      t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(t.begin(), t.end());
    return t[3];
  };
  double f32 = time([&] { MPI_Allreduce(MPI_IN_PLACE, g.data(), int(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); });
  double b16 = time([&] {
    for (int64_t i = 0; i < n; i++) h[i] = frugal::from_f32<bf16>(g[i]).bits;
    MPI_Allreduce(MPI_IN_PLACE, h.data(), int(n), MPI_UINT16_T, op, MPI_COMM_WORLD);
    for (int64_t i = 0; i < n; i++) g[i] = frugal::to_f32(bf16{h[i]});
  });
  // zero2/zero3's reduce-scatter of the same buffer: an in-place all-reduce and a copy of this
  // rank's slice (MpiComm's), against MPI_Reduce_scatter_block (half the bytes on the wire)
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  const int64_t len = n / world;
  std::vector<float> out(static_cast<size_t>(len));
  double ar_slice = time([&] {
    MPI_Allreduce(MPI_IN_PLACE, g.data(), int(len * world), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    std::copy(g.begin() + rank * len, g.begin() + (rank + 1) * len, out.begin());
  });
  double rsb = time([&] {
    MPI_Reduce_scatter_block(g.data(), out.data(), int(len), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  });
  // ZeRO-3's parameter gathers and zero1/zero2's gather after the optimizer: each rank's slice
  // of the same buffer to every rank
  double ag = time([&] {
    MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, g.data(), int(len), MPI_FLOAT, MPI_COMM_WORLD);
  });
  if (rank == 0) {
    std::printf("all-reduce of %.2f M fp32 gradients: fp32 %.1f ms, bf16 (cast + custom op + cast) %.1f ms: "
                "bf16 / fp32 = %.2fx time\n", n / 1e6, f32 * 1e3, b16 * 1e3, b16 / f32);
    std::printf("reduce-scatter over %d ranks: all-reduce + slice %.1f ms, MPI_Reduce_scatter_block %.1f ms: "
                "block / all-reduce = %.2fx time\n", world, ar_slice * 1e3, rsb * 1e3, rsb / ar_slice);
    std::printf("all-gather of the same buffer (in place): %.1f ms\n", ag * 1e3);
  }
  MPI_Op_free(&op);
  MPI_Finalize();
}
