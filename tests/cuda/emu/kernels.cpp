// frugal's CUDA kernels compiled as C++ for the emulated device (emu_device.h): the launchers
// of src/backend/cuda/kernels.h, which backend.cpp and matmul.cpp call.
#include "backend/cuda/attention.cu"
#include "backend/cuda/elementwise.cu"
#include "backend/cuda/embedding.cu"
#include "backend/cuda/gelu.cu"
#include "backend/cuda/layernorm.cu"
#include "backend/cuda/quant.cu"
#include "backend/cuda/rmsnorm.cu"
#include "backend/cuda/rope.cu"
#include "backend/cuda/softmax_xent.cu"
#include "backend/cuda/swiglu.cu"
