#!/usr/bin/env bash
# Installs every dependency of frugal from Debian's packages. Idempotent; run as root (or with sudo).
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config
      libdnnl-dev libtomlplusplus-dev libcli11-dev nlohmann-json3-dev libfmt-dev
      libgtest-dev googletest python3-torch python3-numpy bible-kjv
      libopenmpi-dev openmpi-bin
      libopenblas0-pthread)  # PyTorch's BLAS: without it torch 1.13 falls back to reference BLAS (~6 GFLOP/s)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
