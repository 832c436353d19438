#!/usr/bin/env bash
# Resume on another number of ranks or another strategy (reshard on load): 2 ranks train with
# checkpoints every 4 steps; the newest is removed (a crash after step 4) and the run resumes
# from ckpt-4 on 1 and on 4 ranks, across strategies (zero1 -> ddp, ddp -> zero1, zero3 -> ddp,
# zero2 -> yafsdp, yafsdp -> zero3). Every loss of the 8 steps
# equals the uninterrupted single-process run's within 1e-5 relative (reduction order); the MFU
# in metrics.jsonl is per device on 1 and 2 ranks.
# Usage: resume_mpi.sh FRUGAL_BINARY
F=$1
source "$(dirname "$0")/../support/scratch.sh"
run="mpirun --allow-run-as-root --oversubscribe"
passed=0
A="--model.preset=tiny --train.seq_len=64 --train.micro_batch=2 --train.batch_tokens=512 --train.steps=8 --train.eval_batches=1 --run.log_every=1000 --data.train=data/train_*.bin --data.val=data/val_*.bin"
"$F" train $A --run.checkpoint_every=0 --run.dir=whole >/dev/null || fail "uninterrupted run"

# same_losses RUN: its 8 losses against the uninterrupted run's
same_losses() {
  /usr/bin/python3 - "$1" <<'PY' || fail "$1: losses differ"
import json, sys
def losses(d):
    return [json.loads(l)["loss"] for l in open(d + "/metrics.jsonl")]
a, b = losses("whole"), losses(sys.argv[1])
assert len(a) == len(b) == 8, (len(a), len(b))
for i, (x, y) in enumerate(zip(a, b)):
    assert abs(x - y) <= 1e-5 * abs(x), "step %d: %r vs %r" % (i + 1, y, x)
PY
  passed=$((passed + 1))
}

# mfu_per_device RUN: metrics.jsonl's MFU is per device (the job's tokens/s over ranks x peak)
mfu_per_device() {
  /usr/bin/python3 - "$1" <<'PY' || fail "$1: MFU is not per device"
import json, sys, tomllib
d = sys.argv[1]
fpt = json.load(open(d + "/summary.json"))["predicted"]["model_flops_per_token"]
cfg = tomllib.load(open(d + "/config.toml", "rb"))
peak = cfg["device"]["peak_flops_bf16" if cfg["precision"]["compute"] == "bf16" else "peak_flops"]
for line in open(d + "/metrics.jsonl"):
    r = json.loads(line)
    want = fpt * r["tokens_per_s"] / (r["ranks"] * peak)
    assert abs(r["mfu"] - want) <= 1e-6 * want, (r["ranks"], r["mfu"], want)
PY
  passed=$((passed + 1))
}

# resume FROM NP STRATEGY: a copy of run FROM without its newest checkpoint, resumed on NP ranks
resume() {
  local to="$1-to-$2-$3"
  cp -r "$1" "$to" && rm -rf "$to/ckpt-8"
  out=$($run -np "$2" "$F" train --resume "$to" --dist.strategy="$3" 2>&1) || fail "$to: $out"
  grep -q "resuming from $to/ckpt-4 at step 4" <<<"$out" || fail "$to: $out"
  same_losses "$to"
}

for s in zero1 ddp zero2 zero3 yafsdp; do
  $run -np 2 "$F" train $A --dist.strategy=$s --run.checkpoint_every=4 --run.dir=$s >/dev/null 2>&1 || fail "$s on 2 ranks"
  same_losses $s
done
mfu_per_device whole
mfu_per_device ddp
[ -f zero1/ckpt-4/rank-1.safetensors ] || fail "zero1: each rank writes its slice"
[ -f ddp/ckpt-4/rank-0.safetensors ] && [ ! -f ddp/ckpt-4/rank-1.safetensors ] || fail "ddp: rank 0 alone writes"
resume zero1 1 ddp
resume zero1 4 ddp
resume zero1 4 zero1
resume ddp 4 zero1
resume zero3 1 ddp
resume zero3 4 ddp
resume zero2 4 yafsdp
resume yafsdp 2 zero3
echo "resume mpi: $passed passed, 0 failed"
