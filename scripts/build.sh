#!/usr/bin/env bash
# Installs the dependencies (Debian packages) and builds frugal into build/. Where a CUDA
# toolkit is found (nvcc on PATH or in $CUDA_HOME/bin), the CUDA backend is built too
# (FRUGAL_CUDA=ON): compiled and linked, so that it never rots; its tests skip without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cuda=OFF
nvcc=$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")
if [ -x "$nvcc" ]; then
  cuda=ON
  export CUDACXX=$nvcc
else
  echo "build.sh: no CUDA toolkit (nvcc is not on PATH nor in \$CUDA_HOME/bin): building without the CUDA backend"
fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DFRUGAL_CUDA=$cuda >/dev/null
cmake --build build -j2
