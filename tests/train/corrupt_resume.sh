#!/usr/bin/env bash
# One random bit of a random tensor of the newest checkpoint flipped, 20 times, each followed by a
# resume: every time the corruption is detected (its checksum), the checkpoint is set aside as
# ckpt-STEP.corrupt, and the run continues from the newest one that verifies; the run's losses
# and final weights equal an uninterrupted run's, bit for bit.
# Usage: corrupt_resume.sh FRUGAL_BINARY
F=$1
source "$(dirname "$0")/../support/scratch.sh"
A="--model.preset=tiny --train.seq_len=32 --train.micro_batch=2 --train.steps=40 --train.eval_every=0 --train.eval_batches=1 --run.log_every=100000 --data.train=data/train_*.bin --data.val=data/val_*.bin --run.checkpoint_every=2 --run.keep_checkpoints=3"
"$F" train $A --run.dir=whole >/dev/null || fail "uninterrupted run"
"$F" train $A --run.dir=run >/dev/null || fail "first run"
detected=0
for i in $(seq 1 20); do
  victim=$(/usr/bin/python3 - run "$RANDOM" <<'PY'
import json, os, random, re, struct, sys
run, rng = sys.argv[1], random.Random(int(sys.argv[2]))
step = max(int(m.group(1)) for d in os.listdir(run) for m in [re.fullmatch(r"ckpt-(\d+)", d)] if m)
path = os.path.join(run, "ckpt-%d" % step, "rank-0.safetensors")
data = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
name = rng.choice(sorted(k for k in header if k != "__metadata__"))
begin, end = header[name]["data_offsets"]
data[8 + n + rng.randrange(begin, end)] ^= 1 << rng.randrange(8)
open(path, "wb").write(data)
print(step)
PY
) || fail "corrupting a checkpoint"
  out=$("$F" train --resume run 2>&1) || fail "resume $i: $out"
  grep -q "resume: skipped run/ckpt-$victim: run/ckpt-$victim/rank-0.safetensors: tensor '.*' fails its checksum" <<<"$out" \
    || fail "resume $i: the corrupt ckpt-$victim was not detected: $out"
  grep -q "resuming from run/ckpt-$((victim - 2)) at step $((victim - 2))" <<<"$out" || fail "resume $i: $out"
  [ -d "run/ckpt-$victim.corrupt" ] || fail "resume $i: ckpt-$victim was not set aside"
  detected=$((detected + 1))
done
bit_identical run whole 40
echo "corrupt resume: $detected of 20 corruptions detected, resumed from the previous checkpoint; losses and weights equal"
