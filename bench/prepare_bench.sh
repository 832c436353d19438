#!/usr/bin/env bash
# frugal prepare at scale against tiktoken: a generated corpus of SIZE bytes (default 2.1 GB:
# the KJV's verses shuffled by seed, every tenth line random Unicode; bench/prepare_corpus.py) in
# WORK (default /tmp/frugal-prepare-bench, not kept by git); frugal prepare --tokenizer gpt2 on 1
# and 2 threads (MB/s of input, end to end: read, tokenize, write shards; peak RSS from
# /usr/bin/time -v) against tiktoken's encode_ordinary_batch with 1 and 2 threads on the same
# files (encoding time only); then the same tokens on a sample of 8 files.
# Usage: bash bench/prepare_bench.sh [SIZE] [WORK]   (needs build/ or $FRUGAL, data/gpt2, .venv)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
F=${FRUGAL:-$root/build/frugal}
size=${1:-2.1e9}
work=${2:-/tmp/frugal-prepare-bench}
py=$root/.venv/bin/python
ranks=$root/data/gpt2/gpt2.tiktoken
mkdir -p "$work"
if [ ! -d "$work/corpus" ]; then
  COLUMNS=80 bible 'Genesis 1:1-Revelation 22:21' > "$work/kjv.txt"
  /usr/bin/python3 "$root/bench/prepare_corpus.py" "$work/kjv.txt" "$work/corpus" "$size"
fi
bytes=$(du -cb "$work"/corpus/*.txt | tail -1 | cut -f1)
echo "corpus: $(ls "$work"/corpus | wc -l) files, $bytes bytes; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for t in 1 2; do
  rm -rf "$work/out"
  /usr/bin/time -v "$F" prepare "$work/corpus" --tokenizer gpt2 --gpt2-dir "$root/data/gpt2" --threads $t --val-fraction 0.2 \
    --out "$work/out" > "$work/log" 2> "$work/time"
  wall=$(grep "Elapsed (wall" "$work/time" | awk '{print $NF}' | awk -F: '{print ($1 * 60 + $2)}')
  rss=$(grep "Maximum resident" "$work/time" | awk '{print $NF}')
  cpu=$(grep -E "(User|System) time" "$work/time" | awk '{s += $NF} END {print s}')
  echo "frugal prepare --threads $t: $(tail -1 "$work/log")"
  echo "frugal prepare --threads $t: $bytes bytes in $wall s wall ($cpu s CPU): $(echo "$bytes / 1000000 / $wall" | bc -l | cut -c1-6) MB/s, peak RSS $((rss / 1024)) MiB"
done
rm -rf "$work/out"
for t in 1 2; do
  "$py" "$root/bench/prepare_tiktoken.py" "$ranks" $t "$work"/corpus/*.txt
done
sample=$(ls "$work"/corpus/*.txt | sed -n 1,8p)  # (head would end ls early: pipefail)
rm -rf "$work/sample"
"$F" prepare $sample --tokenizer gpt2 --gpt2-dir "$root/data/gpt2" --val-docs 2 --out "$work/sample" > /dev/null 2>&1
"$py" "$root/bench/prepare_tiktoken.py" "$ranks" check "$work/sample" $sample
