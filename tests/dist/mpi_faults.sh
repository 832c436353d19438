#!/usr/bin/env bash
# Faults under mpirun end every rank with a clear message and a non-zero exit, never a hang:
# mismatched configs across ranks, a global batch the world size does not divide, and a rank
# killed mid-step. Usage: mpi_faults.sh FRUGAL_BINARY
set -u
F=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
export OMP_NUM_THREADS=1
run="mpirun --allow-run-as-root --oversubscribe"
fail() { echo "FAIL: $*"; exit 1; }
printf 'In the beginning was the word %.0s\n' $(seq 1 3000) > corpus.txt
"$F" prepare corpus.txt --out data --val-every 5 >/dev/null || fail "prepare"
A="--model.preset=tiny --train.seq_len=64 --train.micro_batch=4 --train.eval_batches=1 --run.log_every=1000 --data.train=data/train_*.bin --data.val=data/val_*.bin"

out=$(timeout 60 $run -np 1 "$F" train $A --train.lr=0.001 --run.dir=r1 : -np 1 "$F" train $A --train.lr=0.002 --run.dir=r1 2>&1)
rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "mismatched configs: exit status $rc"
grep -Eq "rank [01] of 2: error: command line: the ranks were started with different configurations" <<<"$out" || fail "mismatched configs: $out"

out=$(timeout 60 $run -np 3 "$F" train $A --train.batch_tokens=512 --run.dir=r2 2>&1) && fail "batch not divisible: exit 0"
grep -q "train.batch_tokens = 512 must be a multiple of micro_batch \* seq_len \* ranks = 4 \* 64 \* 3 = 768" <<<"$out" || fail "batch: $out"

(timeout 120 $run -np 2 "$F" train $A --train.steps=100000 --run.dir=r3 > kill.log 2>&1; echo "rc=$?" >> kill.log) &
for _ in $(seq 1 100); do grep -q "\"step\"" r3/metrics.jsonl 2>/dev/null && break; sleep 0.2; done  # training has begun
victim=$(pgrep -f "^$F train .*steps=100000" | tail -1)  # a rank, not mpirun or timeout
kill -9 "$victim"
start=$(date +%s)
wait
took=$(( $(date +%s) - start ))
[ "$took" -le 60 ] || fail "killed rank: the others took ${took}s to stop"
grep -q "rc=0" kill.log && fail "killed rank: exit 0"
grep -q "exited on signal 9" kill.log || fail "killed rank: no message naming it: $(cat kill.log)"
echo "mpi faults: 3 passed, 0 failed"
