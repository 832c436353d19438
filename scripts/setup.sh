#!/usr/bin/env bash
# Installs every dependency of frugal: Debian's packages, and the Python references from PyPI into
# a venv (.venv, ignored by git; versions pinned in scripts/requirements.txt). Idempotent; run as
# root (or with sudo). PyPI's torch brings ~5.5 GB of CUDA libraries: the venv is made once per
# machine (about 1.5 minutes here) and reused by every checkout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pkgs=(build-essential cmake ninja-build pkg-config
      libdnnl-dev libtomlplusplus-dev libcli11-dev nlohmann-json3-dev libfmt-dev
      libgtest-dev googletest bible-kjv
      libopenmpi-dev openmpi-bin
      libsentencepiece-dev   # frugal prepare --train-tokenizer
      zlib1g-dev libzstd-dev # frugal prepare reads .gz and .zst corpora
      iproute2               # ip netns, veth, tc: the multi-host tests (tests/dist/netns.sh)
      clang libclang-rt-dev  # the libFuzzer target for the safetensors reader (tests/io/)
      python3 python3-venv)  # the references' environment
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The references (PyTorch 2.x, transformers, safetensors, tiktoken, numpy, tensorboard): one venv
# of Debian's python3 per machine and set of pins (~/.cache/frugal/venv-HASH, HASH from
# scripts/requirements.txt), made once and shared by every checkout; .venv links to it.
req=$root/scripts/requirements.txt
venv=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/frugal/venv-$(sha256sum "$req" | cut -c1-12)
if [ ! -f "$venv/complete" ]; then
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r "$req"
  touch "$venv/complete"
  for old in "$(dirname "$venv")"/venv-*; do [ "$old" = "$venv" ] || rm -rf "$old"; done  # ~5.5 GB each
fi
[ -L "$root/.venv" ] || rm -rf "$root/.venv"  # a venv made in place by an older setup.sh
ln -sfn "$venv" "$root/.venv"

# GPT-2's BPE ranks (OpenAI's gpt2.tiktoken, the file tiktoken's gpt2 encoding loads), from the
# sdist of PyPI's openai-whisper, which ships it; checked against its known digest.
gpt2=$root/data/gpt2/gpt2.tiktoken
sha=306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930
if ! echo "$sha  $gpt2" | sha256sum -c --status 2>/dev/null; then
  tmp=$(mktemp -d)
  "$venv/bin/python" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: -d "$tmp" openai-whisper==20250625
  tar xzf "$tmp"/openai_whisper-20250625.tar.gz -C "$tmp" openai_whisper-20250625/whisper/assets/gpt2.tiktoken
  echo "$sha  $tmp/openai_whisper-20250625/whisper/assets/gpt2.tiktoken" | sha256sum -c --status \
    || { echo "setup.sh: openai-whisper's gpt2.tiktoken does not have the expected sha256" >&2; exit 1; }
  mkdir -p "$(dirname "$gpt2")"
  mv "$tmp/openai_whisper-20250625/whisper/assets/gpt2.tiktoken" "$gpt2.tmp" && mv "$gpt2.tmp" "$gpt2"
  rm -rf "$tmp"
fi
