#!/usr/bin/env bash
# `frugal train --device.backend=cuda` end to end on the emulated device (FRUGAL_EMU_BINARY is
# apps/frugal built against tests/cuda/emu/, whose device work runs only at a synchronisation,
# so a host access without one reads stale data): the flags bench/gpu/check.sh passes; the
# training and validation losses of the CPU backend (bf16, within 2e-2 as in cuda_test.cpp)
# under ddp, zero2, zero3 and yafsdp, in fp16 with dynamic loss scaling, with selective and
# full recompute, and from a model file (train.init_from: the weights go in and out of device
# memory); a resume from a checkpoint that continues the uninterrupted run bit for bit; the memory
# preflight against the device's free memory.
# Usage: emu_train.sh FRUGAL_EMU_BINARY
F=$1
source "$(dirname "$0")/emu_common.sh"
A="--model.preset=tiny --precision.compute=bf16 --train.seq_len=32 --train.micro_batch=2 --train.lr=3e-3
   --train.warmup_steps=0 --train.eval_every=3 --train.eval_batches=2 --run.log_every=10
   --data.train=data/train_*.bin --data.val=data/val_*.bin"
"$F" train $A --train.steps=6 --run.dir=cpu > log 2>&1 || fail "cpu run: $(cat log)"
"$F" train $A --train.steps=6 --run.dir=cpu16 --precision.compute=fp16 > log 2>&1 || fail "cpu fp16 run: $(cat log)"
for s in ddp zero2 zero3 yafsdp fp16 selective full; do
  case $s in
    fp16) x="--precision.compute=fp16" ref=cpu16 ;;
    selective | full) x="--memory.recompute=$s" ref=cpu ;;
    *) x="--dist.strategy=$s" ref=cpu ;;
  esac
  "$F" train $A --train.steps=6 --run.dir=$s --device.backend=cuda --device.name=h100-sxm \
    --device.peak_flops_bf16=989e12 $x > log 2>&1 || fail "cuda $s run: $(cat log)"
  compare $s $ref
done
# from the CPU run's trained weights, sharded on the device
I="$A --train.steps=3 --train.init_from=cpu/model.safetensors"
"$F" train $I --run.dir=init_cpu > log 2>&1 || fail "cpu init_from run: $(cat log)"
"$F" train $I --run.dir=init_cuda --device.backend=cuda --device.name=h100-sxm --dist.strategy=zero3 > log 2>&1 || fail "cuda init_from run: $(cat log)"
compare init_cuda init_cpu
# as after a crash between steps 3 and 6: only the checkpoint of step 3 is left
"$F" train $A --train.steps=6 --run.dir=part --device.backend=cuda --device.name=h100-sxm --run.checkpoint_every=3 > log 2>&1 || fail "part: $(cat log)"
rm -rf part/ckpt-6
"$F" train --resume part > log 2>&1 || fail "resume: $(cat log)"
grep -q "resuming from part/ckpt-3 at step 3" log || fail "did not resume from step 3: $(cat log)"
[ "$(losses part)" = "$(losses ddp)" ] || fail "resumed run $(losses part) is not the uninterrupted $(losses ddp)"
# a model far beyond the (emulated, 16 GiB) device: the preflight refuses it before allocating
"$F" train --model.preset=gpt2-xl --train.micro_batch=64 --train.seq_len=1024 --data.train=data/train_*.bin \
  --data.val=data/val_*.bin --device.backend=cuda --device.name=h100-sxm --run.dir=xl > log 2>&1 && fail "gpt2-xl on the device: exit 0"
grep -q "memory preflight: this run needs .* per rank (params .*), but this device has .* available (free device memory)" log \
  || fail "no device preflight: $(cat log)"
echo "emu train: 4 strategies, fp16, recompute and init_from match the cpu, resume is exact, the preflight refuses gpt2-xl"
