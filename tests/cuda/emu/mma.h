#pragma once
#include "cuda_runtime.h"  // nvcuda::wmma is in emu_device.h
