// Built without MPI: the only world is the local one.
#include <cstdio>
#include <cstdlib>

#include "dist/comm.h"

namespace frugal {

std::unique_ptr<Comm> make_comm(bool, double) {
  if (std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE")) {
    std::fprintf(stderr, "frugal: started by mpirun, but this build has no MPI (install libopenmpi-dev and rebuild)\n");
    std::exit(2);
  }
  const char* ntasks = std::getenv("SLURM_STEP_NUM_TASKS") ? std::getenv("SLURM_STEP_NUM_TASKS") : std::getenv("SLURM_NTASKS");
  if (ntasks && std::atoi(ntasks) > 1) {
    std::fprintf(stderr, "frugal: started by Slurm as one of %s tasks, but this build has no MPI (install libopenmpi-dev and rebuild)\n", ntasks);
    std::exit(2);
  }
  return make_local_comm();
}

void abort_world(int code) { std::exit(code); }

}  // namespace frugal
