#!/usr/bin/env bash
# The main job on a fresh machine: install, build, train the default model on the default
# corpus (the King James Bible, prepared on first use), then print a sample from it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
./build/frugal train "$@"
./build/frugal sample --run runs/default --prompt "And God said" --tokens 300
