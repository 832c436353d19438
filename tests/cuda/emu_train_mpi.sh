#!/usr/bin/env bash
# `mpirun -np 2 frugal train --device.backend=cuda` on the emulated device: NcclComm from the CLI
# (the unique id through MPI, collectives done by MPI), sharded checkpoints whose rank files are
# copied out of device memory, and a resume that copies them back in. ddp, zero3 and yafsdp on
# 2 ranks match the CPU's single-process bf16 run (the same global batch) within 2e-2; a zero3
# run resumed on 2 ranks from its step-3 checkpoint continues the uninterrupted one bit for bit.
# Usage: emu_train_mpi.sh FRUGAL_BINARY FRUGAL_EMU_MPI_BINARY
set -u
F=$1 E=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
export OMP_NUM_THREADS=1
run="mpirun --allow-run-as-root --oversubscribe -np 2"
fail() { echo "FAIL: $*"; exit 1; }
printf 'In the beginning was the word %.0s\n' $(seq 1 3000) > corpus.txt
"$F" prepare corpus.txt --out data --val-every 5 >/dev/null || fail "prepare"
A="--model.preset=tiny --precision.compute=bf16 --train.seq_len=32 --train.micro_batch=2 --train.batch_tokens=128
   --train.lr=3e-3 --train.warmup_steps=0 --train.steps=6 --train.eval_every=3 --train.eval_batches=2
   --run.log_every=10 --data.train=data/train_*.bin --data.val=data/val_*.bin"
# the training losses of the 6 steps, then the validation losses of steps 3 and 6
losses() {
  python3 -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]
print(" ".join("%.6f" % x for x in [e["loss"] for e in r] + [e["val_loss"] for e in r if "val_loss" in e]))' "$1/metrics.jsonl"
}
"$F" train $A --run.dir=cpu > log 2>&1 || fail "cpu run: $(cat log)"
for s in ddp zero3 yafsdp; do
  $run "$E" train $A --run.dir=$s --device.backend=cuda --dist.strategy=$s --run.checkpoint_every=3 > log 2>&1 ||
    fail "cuda $s on 2 ranks: $(cat log)"
  python3 - "$(losses cpu)" "$(losses $s)" "$s" <<'PY' || exit 1
import sys
cpu, gpu = [list(map(float, a.split())) for a in sys.argv[1:3]]
bad = [(i + 1, c, g) for i, (c, g) in enumerate(zip(cpu, gpu)) if abs(g - c) > 2e-2 * c]
if len(cpu) != 8 or len(gpu) != 8 or bad:
    sys.exit(f"FAIL: {sys.argv[3]} on 2 emulated GPUs: losses {gpu} against the cpu's {cpu}: {bad}")
print(f"{sys.argv[3]}: 2 emulated GPUs within 2e-2 of the cpu: {gpu}")
PY
done
[ -f zero3/ckpt-3/rank-1.safetensors ] || fail "zero3: each rank writes its slice"
cp -r zero3 resumed && rm -rf resumed/ckpt-6
$run "$E" train --resume resumed > log 2>&1 || fail "resume: $(cat log)"
grep -q "resuming from resumed/ckpt-3 at step 3" log || fail "did not resume from step 3: $(cat log)"
[ "$(losses resumed)" = "$(losses zero3)" ] || fail "resumed zero3 $(losses resumed) is not the uninterrupted $(losses zero3)"
echo "emu train mpi: ddp, zero3 and yafsdp on 2 ranks match the cpu, zero3 resumes exactly"
