#!/usr/bin/env bash
# The llama family through the command line, on llama-tiny (grouped queries, an untied head):
# a run checkpointed and resumed equals the uninterrupted run bit for bit (fp32, and bf16 under
# full recompute); eval, sample, report and plan work on it.
# Usage: llama_cli.sh FRUGAL_BINARY
F=$1
source "$(dirname "$0")/../support/scratch.sh"
A="--model.preset=llama-tiny --train.seq_len=32 --train.micro_batch=2 --train.eval_every=4 --train.eval_batches=1 --data.train=data/train_*.bin --data.val=data/val_*.bin"
for variant in "fp32 none" "bf16 full"; do
  set -- $variant
  V="$A --precision.compute=$1 --memory.recompute=$2"
  "$F" train $V --train.steps=12 --run.checkpoint_every=0 --run.dir=whole_$1 >/dev/null || fail "$1: uninterrupted run"
  "$F" train $V --train.steps=12 --run.checkpoint_every=4 --run.dir=run_$1 >/dev/null || fail "$1: checkpointed run"
  rm -rf run_$1/ckpt-12 run_$1/ckpt-8
  "$F" train --resume run_$1 > log 2>&1 || fail "$1: resume: $(cat log)"
  grep -q "resuming from run_$1/ckpt-4 at step 4" log || fail "$1: did not resume from ckpt-4: $(cat log)"
  bit_identical run_$1 whole_$1 12
done
"$F" train --resume run_fp32 --model.rope_theta=500000 > log 2>&1 && fail "a resume that changes rope_theta ran"
grep -q "changes the model shape of checkpoint run_fp32/ckpt-12: model.rope_theta 10000 -> 500000" log || fail "resume with another rope_theta: $(cat log)"
grep -q '"family": "llama"' whole_fp32/config.toml 2>/dev/null || grep -q 'family = "llama"' whole_fp32/config.toml || fail "config.toml lacks the family"
"$F" eval --run whole_fp32 > log 2>&1 || fail "eval: $(cat log)"
grep -q "loss" log || fail "eval printed no loss: $(cat log)"
"$F" sample --run whole_fp32 --prompt "In the" --tokens 20 --seed 1 > log 2>&1 || fail "sample: $(cat log)"
grep -q "^In the" log || fail "sample did not continue the prompt: $(cat log)"
"$F" report whole_fp32 > log 2>&1 || fail "report: $(cat log)"
[ -s whole_fp32/report.html ] || fail "report.html missing"
"$F" plan -c whole_fp32/config.toml --tokens 1e6 > log 2>&1 || fail "plan -c: $(cat log)"
grep -qi "llama" log || fail "plan does not name the family: $(cat log)"
# run.profile: every op family's time per step (the first step not counted), GEMM and attention
# rates, summing to the step; the report draws it
"$F" train $A --train.steps=3 --run.checkpoint_every=0 --run.profile=true --run.dir=prof > log 2>&1 || fail "profile: $(cat log)"
/usr/bin/python3 - <<'PY' || fail "profile.json: $(cat prof/profile.json)"
import json
p = json.load(open("prof/profile.json"))
ops = {r["op"]: r for r in p["ops"]}
assert p["steps"] == 2, p["steps"]
for op in ("gemm", "attention fwd", "attention bwd", "rmsnorm", "swiglu", "rope", "adamw"):
    assert ops[op]["seconds_per_step"] > 0, op
assert ops["gemm"]["gflops"] > 0 and ops["attention bwd"]["gflops"] > 0
assert abs(sum(r["share"] for r in p["ops"]) - 1) < 1e-6
PY
"$F" report prof >/dev/null || fail "report of the profiled run"
grep -q "Where a step goes" prof/report.html || fail "the report does not draw the profile"
sed -i '0,/"gflops": [0-9.e+-]*/s//"gflops": "fast"/' prof/profile.json
"$F" report prof > log 2>&1 && fail "a damaged profile.json was drawn: $(cat log)"
grep -q '^frugal: error: prof/profile.json: not a run.profile table: .*type must be number, but is string' log \
  || fail "a damaged profile.json: $(cat log)"
echo "llama cli: resumed runs equal uninterrupted ones (fp32, bf16 full recompute); eval, sample, report, plan, profile work"
