#!/usr/bin/env bash
# GPT-2 tokenizer speed on one core: frugal vs the reference, OpenAI's tiktoken (the venv of
# scripts/setup.sh; one thread: encode_ordinary), same text, same tokens (checked).
# Usage: bash bench/tokenizer_bench.sh [TEXT_FILE]  (default: the KJV text `frugal prepare` uses).
# Needs a build (build/) and data/gpt2 from scripts/setup.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
text=${1:-$tmp/kjv.txt}
[ -n "${1:-}" ] || COLUMNS=80 bible 'Genesis 1:1-Revelation 22:21' > "$text"
taskset -c 0 "$root/build/bench/tokenizer_bench" "$text" "$tmp/frugal.bin" "$root/data/gpt2"
taskset -c 0 "$root/.venv/bin/python" "$root/tests/reference/tiktoken_encode.py" "$root/data/gpt2/gpt2.tiktoken" text "$text" "$tmp/ref.bin"
cmp -s "$tmp/frugal.bin" "$tmp/ref.bin" && echo "same tokens" || { echo "tokens differ"; exit 1; }
