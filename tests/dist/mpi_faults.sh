#!/usr/bin/env bash
# Faults under mpirun end every rank with a clear message and a non-zero exit, never a hang:
# mismatched configs across ranks (but not the device each rank resolved for its own CPU), a
# global batch the world size does not divide, a rank killed mid-step, and a rank that hangs
# (stopped: the collective watchdog ends the job). Usage: mpi_faults.sh FRUGAL_BINARY
F=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
source "$(dirname "$0")/../support/scratch.sh"
run="mpirun --allow-run-as-root --oversubscribe"
A="--model.preset=tiny --train.seq_len=64 --train.micro_batch=4 --train.eval_batches=1 --run.log_every=1000 --data.train=data/train_*.bin --data.val=data/val_*.bin"

out=$(timeout 60 $run -np 1 "$F" train $A --train.lr=0.001 --run.dir=r1 : -np 1 "$F" train $A --train.lr=0.002 --run.dir=r1 2>&1)
rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "mismatched configs: exit status $rc"
grep -Eq "rank [01] of 2: error: command line: the ranks were started with different configurations" <<<"$out" || fail "mismatched configs: $out"

# hosts of different kinds: unset, device.name and its peaks are each rank's own CPU's (here:
# rank 1 reads a catalogue with other peaks), and the job trains
sed 's/^peak_flops = .*/peak_flops = 1e9/' "$root/configs/devices.toml" > other.toml
out=$(timeout 60 $run -np 1 "$F" train $A --train.steps=2 --run.dir=r5 : -np 1 -x FRUGAL_DEVICES=other.toml "$F" train $A --train.steps=2 --run.dir=r5 2>&1) ||
  fail "ranks on CPUs of different kinds: $out"

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
# a hung rank (SIGSTOP): the other ends the job within dist.timeout + 10 s, naming it
(timeout 120 $run -np 2 "$F" train $A --train.steps=100000 --dist.timeout=5 --run.dir=r4 > hang.log 2>&1; echo "rc=$?" >> hang.log) &
for _ in $(seq 1 100); do grep -q "\"step\"" r4/metrics.jsonl 2>/dev/null && break; sleep 0.2; done
for p in $(pgrep -f "^$F train .*run.dir=r4"); do
  grep -qz "^OMPI_COMM_WORLD_RANK=1$" /proc/$p/environ 2>/dev/null && victim=$p
done
[ -n "${victim:-}" ] || fail "hung rank: no rank 1 found"
kill -STOP "$victim"
start=$(date +%s)
wait
took=$(( $(date +%s) - start ))
kill -9 "$victim" 2>/dev/null
[ "$took" -le 15 ] || fail "hung rank: the job took ${took}s to end (dist.timeout = 5 s)"
grep -q "rc=0" hang.log && fail "hung rank: exit 0"
grep -Eq "frugal: rank 0 of 2: MPI_[A-Za-z ()-]+ \(collective [0-9]+, step [0-9]+\) has waited [0-9]+ s, over dist.timeout = 5 s: rank\(s\) 1 do not answer; ending the job" hang.log \
  || fail "hung rank: no message naming it: $(cat hang.log)"
echo "mpi faults: 4 passed, 0 failed"
