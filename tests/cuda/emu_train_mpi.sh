#!/usr/bin/env bash
# `mpirun -np 2 frugal train --device.backend=cuda` on the emulated device: NcclComm from the CLI
# (the unique id through MPI, collectives done by MPI), sharded checkpoints whose rank files are
# copied out of device memory, and a resume that copies them back in. ddp, zero3 and yafsdp on
# 2 ranks match the CPU's single-process bf16 run (the same global batch) within 2e-2; a zero3
# run resumed on 2 ranks from its step-3 checkpoint continues the uninterrupted one bit for bit.
# Usage: emu_train_mpi.sh FRUGAL_BINARY FRUGAL_EMU_MPI_BINARY
F=$1 E=$2
source "$(dirname "$0")/emu_common.sh"
run="mpirun --allow-run-as-root --oversubscribe -np 2"
A="--model.preset=tiny --precision.compute=bf16 --train.seq_len=32 --train.micro_batch=2 --train.batch_tokens=128
   --train.lr=3e-3 --train.warmup_steps=0 --train.steps=6 --train.eval_every=3 --train.eval_batches=2
   --run.log_every=10 --data.train=data/train_*.bin --data.val=data/val_*.bin"
"$F" train $A --run.dir=cpu > log 2>&1 || fail "cpu run: $(cat log)"
for s in ddp zero3 yafsdp; do
  $run "$E" train $A --run.dir=$s --device.backend=cuda --device.name=h100-sxm --dist.strategy=$s --run.checkpoint_every=3 > log 2>&1 ||
    fail "cuda $s on 2 ranks: $(cat log)"
  compare $s cpu
done
[ -f zero3/ckpt-3/rank-1.safetensors ] || fail "zero3: each rank writes its slice"
cp -r zero3 resumed && rm -rf resumed/ckpt-6
$run "$E" train --resume resumed > log 2>&1 || fail "resume: $(cat log)"
grep -q "resuming from resumed/ckpt-3 at step 3" log || fail "did not resume from step 3: $(cat log)"
[ "$(losses resumed)" = "$(losses zero3)" ] || fail "resumed zero3 $(losses resumed) is not the uninterrupted $(losses zero3)"
echo "emu train mpi: ddp, zero3 and yafsdp on 2 ranks match the cpu, zero3 resumes exactly"
