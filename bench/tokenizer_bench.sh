#!/usr/bin/env bash
# Tokenizer speed on one core. GPT-2: frugal vs the reference, OpenAI's tiktoken (the venv of
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

# A Llama 2 style directory (tests/reference/pretrained_tokenizers.py's sp_hf: a SentencePiece BPE
# of 2000 pieces trained on the text, converted to a byte-fallback tokenizer.json, LlamaTokenizer):
# frugal against transformers' AutoTokenizer (the Rust tokenizers backend, one thread), the text
# as one document; sentencepiece on its tokenizer.model timed beside (other ids at the start).
"$root/.venv/bin/python" "$root/tests/reference/pretrained_tokenizers.py" train "$text" "$tmp/fx" > /dev/null
taskset -c 0 "$root/build/bench/tokenizer_bench" "$text" "$tmp/frugal_sp.bin" "$tmp/fx/sp_hf"
RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false taskset -c 0 "$root/.venv/bin/python" - "$tmp/fx" "$text" "$tmp/ref_sp.bin" <<'PY'
import sys, time
import numpy as np
import sentencepiece as spm
from transformers import AutoTokenizer
fx, path, out = sys.argv[1:4]
text = open(path, encoding="utf-8", newline="").read()
mb = len(text.encode("utf-8")) / 1e6
tok = AutoTokenizer.from_pretrained(f"{fx}/sp_hf")
c0 = time.process_time()
ids = tok(text, add_special_tokens=False)["input_ids"]
cpu = time.process_time() - c0
print(f"transformers AutoTokenizer ({type(tok).__name__}): {mb:.2f} MB in {cpu:.3f} s CPU, {mb / cpu:.2f} MB/s, {len(ids)} tokens")
np.asarray(ids, dtype="<u4").tofile(out)
sp = spm.SentencePieceProcessor(model_file=f"{fx}/sp_hf/tokenizer.model")
c0 = time.process_time()
n = len(sp.encode(text))
cpu = time.process_time() - c0
print(f"sentencepiece: {mb:.2f} MB in {cpu:.3f} s CPU, {mb / cpu:.2f} MB/s, {n} tokens")
PY
cmp -s "$tmp/frugal_sp.bin" "$tmp/ref_sp.bin" && echo "same tokens as transformers" || { echo "tokens differ"; exit 1; }
