#!/usr/bin/env bash
# LoRA with the frozen base sharded (zero3, yafsdp) through the command line, on 2 ranks: a tiny
# Llama from transformers as the base (loaded into the shards), a bf16-compute base and an NF4
# one. Every loss of 8 steps equals the single-process run's within 1e-5 relative (fp32; the
# reduction order differs), through a checkpoint at step 4 resumed under the other strategy, and
# the adapters written at the end are the single-process run's within 1e-5. The sharded runs
# recompute every block (its base and adapters gathered again for the backward). Before them, a
# full fine-tuning from the same weights under zero3 (loaded into the shards a unit at a time).
# Usage: lora_mpi.sh FRUGAL_BINARY PYTHON (the references' venv)
F=$1
PY=$2
REF=$(cd "$(dirname "$0")/../reference" && pwd)
source "$(dirname "$0")/../support/scratch.sh"
run="mpirun --allow-run-as-root --oversubscribe -np 2"
$PY "$REF/llama_reference.py" save hf --layers 2 --heads 4 --kv-heads 2 --hidden 64 --ffn 128 --vocab 257 --context 64 --seed 3 \
  >/dev/null 2>&1 || fail "llama_reference.py save"
A="--init-from hf --lora.rank=4 --lora.alpha=8 --lora.targets=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
   --train.lr=3e-3 --train.seq_len=32 --train.micro_batch=2 --train.batch_tokens=128 --train.steps=8 --train.eval_batches=1
   --run.log_every=1000 --data.train=data/train_*.bin --data.val=data/val_*.bin"

# close RUN REF: RUN's 8 losses and final adapters are REF's within 1e-5 relative
close() {
  $PY - "$1" "$2" <<'PY' || fail "$1 differs from $2"
import json, sys, torch
from safetensors.torch import load_file
def losses(d):
    return [json.loads(l)["loss"] for l in open(d + "/metrics.jsonl")]
a, b = losses(sys.argv[2]), losses(sys.argv[1])
assert len(a) == len(b) == 8, (len(a), len(b))
for i, (x, y) in enumerate(zip(a, b)):
    assert abs(x - y) <= 1e-5 * abs(x), "step %d: %r vs %r" % (i + 1, y, x)
wa, wb = (load_file(d + "/adapter/adapter_model.safetensors") for d in sys.argv[2:0:-1])
assert wa.keys() == wb.keys() and len(wa) == 2 * 2 * 7, sorted(wb)
for k in wa:
    err = ((wb[k] - wa[k]).norm() / wa[k].norm()).item()
    assert err <= 1e-5, (k, err)
PY
}

# full fine-tuning from the same weights, loaded one unit at a time into zero3's shards
F8="${A/--lora.rank=4/--lora.rank=0}"
"$F" train $F8 --run.checkpoint_every=0 --run.dir=one-full > log 2>&1 || fail "one process, full: $(cat log)"
$run "$F" train $F8 --dist.strategy=zero3 --run.checkpoint_every=0 --run.dir=zero3-full > log 2>&1 || fail "zero3, full: $(cat log)"
$PY - <<'PY' || fail "zero3 from loaded weights differs from one process"
import json
a, b = ([json.loads(l)["loss"] for l in open(d + "/metrics.jsonl")] for d in ("one-full", "zero3-full"))
assert len(a) == len(b) == 8 and all(abs(x - y) <= 1e-5 * abs(x) for x, y in zip(a, b)), (a, b)
PY

for base in compute nf4; do
  "$F" train $A --lora.base=$base --run.checkpoint_every=0 --run.dir=one-$base > log 2>&1 || fail "one process, $base base: $(cat log)"
  for s in zero3 yafsdp; do
    other=$([ $s = zero3 ] && echo yafsdp || echo zero3)
    $run "$F" train $A --lora.base=$base --dist.strategy=$s --memory.recompute=full --run.checkpoint_every=4 --run.dir=$s-$base > log 2>&1 \
      || fail "$s, $base base, 2 ranks: $(cat log)"
    close $s-$base one-$base
    rm -rf $s-$base/ckpt-8
    $run "$F" train --resume $s-$base --dist.strategy=$other > log 2>&1 || fail "$s -> $other resume: $(cat log)"
    grep -q "resuming from $s-$base/ckpt-4 at step 4" log || fail "$s -> $other did not resume from ckpt-4: $(cat log)"
    close $s-$base one-$base
  done
done
echo "lora mpi: zero3 and yafsdp shard the frozen base (compute and nf4) and train as one process does, through a resume"
