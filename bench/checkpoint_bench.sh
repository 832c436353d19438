#!/usr/bin/env bash
# Checkpoint write and resume load for a preset (default gpt2), against the disk in the same run:
# dd writing the checkpoint's bytes with fsync, and cat reading its files.
# Usage: bash bench/checkpoint_bench.sh [FRUGAL_BINARY] [PRESET]
set -euo pipefail
F=$(realpath "${1:-build/frugal}")
P=${2:-gpt2}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
printf 'In the beginning was the word %.0s\n' $(seq 1 3000) > corpus.txt
"$F" prepare corpus.txt --out data --val-every 5 >/dev/null
A="--model.preset=$P --model.vocab_size=50257 --train.seq_len=64 --train.micro_batch=1 --train.steps=1 --train.eval_batches=1 --data.train=data/train_*.bin --data.val=data/val_*.bin --run.dir=run"
write=$("$F" train $A --run.checkpoint_every=1 | sed -n 's/^checkpoint: .* written in \([0-9.]*\) s$/\1/p')
bytes=$(du -sb run/ckpt-1 | cut -f1)
load=$("$F" train --resume run | sed -n 's/^resuming from .* (loaded in \([0-9.]*\) s)$/\1/p')
t0=$(date +%s.%N); dd if=/dev/zero of=dd.bin bs=1M count=$((bytes / 1048576)) conv=fsync status=none; t1=$(date +%s.%N)
cat run/ckpt-1/* > /dev/null; t2=$(date +%s.%N)
echo "$P checkpoint: $bytes bytes"
echo "  write  frugal ${write} s | dd + fsync $(awk "BEGIN { printf \"%.2f\", $t1 - $t0 }") s"
echo "  load   frugal ${load} s | cat $(awk "BEGIN { printf \"%.2f\", $t2 - $t1 }") s"
