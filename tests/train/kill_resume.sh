#!/usr/bin/env bash
# kill -9 at random moments, 20 times, while a run trains with a checkpoint after every step
# (so most kills land in a checkpoint write): after each kill the newest complete checkpoint
# must load (the next `train --resume` says it resumes from exactly that one), and the run
# finished through all the kills has the uninterrupted run's losses, bit for bit.
# Usage: kill_resume.sh FRUGAL_BINARY
F=$1
source "$(dirname "$0")/../support/scratch.sh"
pid=""
trap '[ -n "$pid" ] && kill -9 $pid 2>/dev/null; rm -rf "$dir"' EXIT
A="--model.preset=tiny --train.seq_len=32 --train.micro_batch=2 --train.steps=600 --train.eval_every=0 --train.eval_batches=1 --run.log_every=100000 --data.train=data/train_*.bin --data.val=data/val_*.bin"
"$F" train $A --run.checkpoint_every=0 --run.dir=whole >/dev/null || fail "uninterrupted run"

newest() { ls -d run/ckpt-* 2>/dev/null | grep -E '/ckpt-[0-9]+$' | sort -t- -k2 -n | tail -1; }
# start: resume from the newest complete checkpoint, or a fresh start while there is none
start() {
  expect=$(newest)
  if [ -n "$expect" ]; then
    "$F" train --resume run > log 2>&1 &
  else
    rm -f run/metrics.jsonl  # of a start killed before its first checkpoint
    "$F" train $A --run.checkpoint_every=1 --run.keep_checkpoints=2 --run.dir=run > log 2>&1 &
  fi
  pid=$!
  # wait until it trains: a resume must first load exactly the newest complete checkpoint
  for _ in $(seq 1 1500); do
    if [ -n "$expect" ]; then grep -q "resuming from $expect at step" log && return; else [ -s run/metrics.jsonl ] && return; fi
    kill -0 $pid 2>/dev/null || { wait $pid; fail "exited (status $?) before training: $(cat log)"; }
    sleep 0.02
  done
  fail "no progress in 30 s: $(cat log)"
}

kills=0; in_write=0
while [ $kills -lt 20 ]; do
  start
  sleep "0.$(printf '%03d' $((RANDOM % 150)))"
  kill -0 $pid 2>/dev/null || fail "the run finished before 20 kills (make train.steps larger)"
  kill -9 $pid
  wait $pid 2>/dev/null
  pid=""
  kills=$((kills + 1))
  ls -d run/ckpt-*.tmp >/dev/null 2>&1 && in_write=$((in_write + 1))
done
[ $in_write -ge 1 ] || fail "no kill landed in a checkpoint write"
expect=$(newest)
"$F" train --resume run --run.checkpoint_every=0 > log 2>&1 || fail "final resume: $(cat log)"
grep -q "resuming from $expect at step" log || fail "final resume did not load $expect: $(cat log)"
bit_identical run whole 600
echo "kill resume: $kills kills ($in_write during a checkpoint write), resumed from the newest checkpoint each time; losses equal"
