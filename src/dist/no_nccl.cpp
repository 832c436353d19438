// Built without NCCL: several GPU ranks need it.
#include "core/core.h"
#include "dist/comm.h"

namespace frugal {

std::unique_ptr<Comm> make_nccl_comm(std::unique_ptr<Comm>, double) {
  user_error("device.backend = cuda with several ranks needs NCCL: this frugal was built without it "
             "(configure with -DFRUGAL_CUDA=ON where the CUDA toolkit has libnccl)");
}

}  // namespace frugal
