// Built without CUDA: asking for the cuda backend is a user error.
#include "backend/backend.h"
#include "core/core.h"

namespace frugal {

Backend& cuda_backend() {
  user_error("device.backend = cuda: this frugal was built without CUDA (configure with -DFRUGAL_CUDA=ON)");
}

}  // namespace frugal
