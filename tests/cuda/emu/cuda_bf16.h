#pragma once
#include "cuda_runtime.h"  // the emulated device has the 16-bit types
