#!/usr/bin/env bash
# The main job on a fresh machine: install, build, train the default model on the default
# corpus (the King James Bible, prepared on first use), then print a sample from it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
# With no arguments: where the CPU multiplies bf16 natively (AVX512-BF16, AMX), mini in bf16 for
# 1000 steps (configs/mini-bf16.toml) in under 3 minutes; elsewhere the built-in default
# (configs/mini.toml's, fp32).
if [ $# -eq 0 ] && grep -qw -e avx512_bf16 -e amx_bf16 /proc/cpuinfo; then set -- configs/mini-bf16.toml; fi
./build/frugal train "$@"
./build/frugal sample --run runs/default --prompt "And God said" --tokens 300
