#!/usr/bin/env bash
# Downloads, on a Debian 12 machine with network, the build dependencies that bench/gpu/check.sh
# needs on a GPU machine that has the CUDA toolkit, CMake, ninja, g++ and PyTorch but no network
# and none of scripts/setup.sh's packages: the .deb files go to .debs/ (about 9 MiB), which
# check.sh unpacks into .deps/ (no root needed) when it finds them. Carry .debs/ along (ignored by .gitignore, as .deps/ is).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .debs
cd .debs
apt-get download libdnnl-dev libdnnl2 ocl-icd-libopencl1 libfmt-dev libfmt9 libtomlplusplus-dev \
  libtomlplusplus3 libcli11-dev nlohmann-json3-dev libgtest-dev googletest
du -sh .
