#!/usr/bin/env bash
# LoRA through the command line, on a tiny Llama from transformers (tests/reference/llama_reference.py):
# a LoRA run checkpointed and resumed equals the uninterrupted one bit for bit; only the adapters
# move; eval and sample read base + adapters; export writes the adapters in PEFT's format and,
# with --merge, the merged model, which transformers loads with the same logits as
# PeftModel(base, adapters); bf16 with recompute trains; lora.init_from goes on from PEFT
# adapters; bad targets and adapters for another base are one clear error.
# Usage: lora_cli.sh FRUGAL_BINARY PYTHON (the references' venv)
F=$1
PY=$2
REF=$(cd "$(dirname "$0")/../reference" && pwd)
source "$(dirname "$0")/../support/scratch.sh"
$PY "$REF/llama_reference.py" save hf --layers 2 --heads 4 --kv-heads 2 --hidden 64 --ffn 128 --vocab 257 --context 64 --seed 3 \
  >/dev/null 2>&1 || fail "llama_reference.py save"
A="--init-from hf --lora.rank=4 --lora.alpha=8 --lora.dropout=0.05 --lora.targets=q_proj,v_proj,down_proj --train.lr=3e-3 --train.seq_len=32
   --train.micro_batch=2 --train.eval_every=4 --train.eval_batches=1 --data.train=data/train_*.bin --data.val=data/val_*.bin"
"$F" train $A --train.steps=8 --run.checkpoint_every=0 --run.dir=whole > log 2>&1 || fail "lora run: $(cat log)"
"$F" train $A --train.steps=8 --run.checkpoint_every=4 --run.dir=run > log 2>&1 || fail "checkpointed lora run: $(cat log)"
[ -f run/ckpt-4/adapter/adapter_model.safetensors ] || fail "the checkpoint holds no adapters: $(ls run/ckpt-4)"
[ -e run/ckpt-4/model.safetensors ] && fail "a LoRA checkpoint wrote the whole model"
rm -rf run/ckpt-8
"$F" train --resume run > log 2>&1 || fail "resume: $(cat log)"
grep -q "resuming from run/ckpt-4 at step 4" log || fail "did not resume from ckpt-4: $(cat log)"
cmp -s run/adapter/adapter_model.safetensors whole/adapter/adapter_model.safetensors || fail "resumed adapters differ"
"$F" train --resume run --lora.rank=8 --train.steps=9 > log 2>&1 && fail "a resume that changes lora.rank ran"
grep -q "changes the model shape of checkpoint run/ckpt-8: lora (rank 4" log || fail "resume with another rank: $(cat log)"
"$F" eval --run whole > log 2>&1 || fail "eval: $(cat log)"
grep -q "loss" log || fail "eval printed no loss: $(cat log)"
"$F" sample --run whole --prompt "In the" --tokens 10 --seed 1 > log 2>&1 || fail "sample: $(cat log)"
grep -q "^In the" log || fail "sample did not continue the prompt: $(cat log)"
"$F" export whole --out peft > log 2>&1 || fail "export: $(cat log)"
"$F" export whole --out merged --merge > log 2>&1 || fail "export --merge: $(cat log)"
$PY - <<'PY' 2>/dev/null || fail "PEFT / transformers disagree with frugal's adapters"
import json, peft, torch, transformers
from safetensors.torch import load_file
base = transformers.AutoModelForCausalLM.from_pretrained("hf", dtype=torch.float32)
orig = {k: v.clone() for k, v in base.state_dict().items()}
pm = peft.PeftModel.from_pretrained(base, "peft")
x = torch.randint(0, 257, (2, 32))
with torch.no_grad():
    want = pm(input_ids=x).logits
    merged = transformers.AutoModelForCausalLM.from_pretrained("merged", dtype=torch.float32)
    got = merged(input_ids=x).logits
assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), (got - want).abs().max()
ad = load_file("peft/adapter_model.safetensors")
assert len(ad) == 2 * 3 * 2, sorted(ad)
assert all(ad[k].abs().max() > 0 for k in ad if "lora_B" in k), "lora_B did not train"
msd = merged.state_dict()
for k, v in orig.items():  # untargeted weights are the base's
    if not any(t in k for t in ("q_proj", "v_proj", "down_proj")):
        assert torch.equal(msd[k], v), k
cfg = json.load(open("peft/adapter_config.json"))
assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and cfg["lora_dropout"] == 0.05 and sorted(cfg["target_modules"]) == ["down_proj", "q_proj", "v_proj"]
PY
# bf16 with full recompute and zero2 over 1 rank: trains, the loss falls
"$F" train $A --train.steps=8 --precision.compute=bf16 --memory.recompute=full --dist.strategy=zero2 --run.checkpoint_every=0 \
  --run.dir=bf16 > log 2>&1 || fail "bf16 lora run: $(cat log)"
# QLoRA: an NF4 base under bf16; export --merge merges into the weights the quantized base computed with
"$F" train $A --train.steps=4 --lora.base=nf4 --precision.compute=bf16 --run.checkpoint_every=0 --run.dir=qlora > log 2>&1 \
  || fail "qlora run: $(cat log)"
grep -q "the nf4 base frozen" log || fail "the qlora run does not say its base: $(cat log)"
"$F" eval --run qlora > log 2>&1 || fail "qlora eval: $(cat log)"
"$F" export qlora --out qpeft > log 2>&1 && "$F" export qlora --out qmerged --merge > log 2>&1 || fail "qlora export: $(cat log)"
$PY - <<'PY' 2>/dev/null || fail "the merged QLoRA model is not PEFT over bitsandbytes' NF4 base"
import peft, torch, transformers
from bitsandbytes.functional import dequantize_4bit, quantize_4bit
base = transformers.AutoModelForCausalLM.from_pretrained("hf", dtype=torch.float32)
with torch.no_grad():
    for name, m in base.named_modules():
        if ".layers." in name and hasattr(m, "weight") and m.weight.dim() == 2:
            q, st = quantize_4bit(m.weight.data.contiguous(), blocksize=64, quant_type="nf4", compress_statistics=True)
            m.weight.data = dequantize_4bit(q, st).reshape(m.weight.shape)
    x = torch.randint(0, 257, (2, 32))
    want = peft.PeftModel.from_pretrained(base, "qpeft")(input_ids=x).logits
    got = transformers.AutoModelForCausalLM.from_pretrained("qmerged", dtype=torch.float32)(input_ids=x).logits
err = ((got - want).norm() / want.norm()).item()
assert err < 1e-4, err
PY
# a base that transformers saved from bitsandbytes' 4-bit model trains as QLoRA (its bytes as they are)
mkdir qb && ln -s ../hf qb/base && $PY -c "
import torch; from safetensors.torch import save_file
save_file({'tokens': torch.randint(0, 257, (1, 2, 33), dtype=torch.int32)}, 'qb/x.safetensors')" \
  && $PY "$REF/lora_reference.py" bnb qb qb/x.safetensors qb/l.safetensors >/dev/null 2>&1 || fail "lora_reference.py bnb"
"$F" train ${A/--init-from hf/--init-from qb/bnb} --train.steps=2 --lora.base=nf4 --run.checkpoint_every=0 --run.dir=prequant > log 2>&1 \
  || fail "qlora from a bitsandbytes checkpoint: $(cat log)"
"$F" train ${A/--init-from hf/--init-from qb/bnb} --train.steps=2 --run.checkpoint_every=0 --run.dir=prequant_bf16 --precision.compute=bf16 > log 2>&1 \
  || fail "lora over a dequantized bitsandbytes checkpoint: $(cat log)"
# going on from PEFT adapters: the adapter's r/alpha/targets are the run's
"$F" train --init-from hf --lora.init_from=peft --train.steps=2 --train.seq_len=32 --train.micro_batch=2 --run.checkpoint_every=0 \
  --data.train='data/train_*.bin' --data.val='data/val_*.bin' --run.dir=more > log 2>&1 || fail "lora.init_from: $(cat log)"
grep -q 'rank = 4' more/config.toml || fail "lora.init_from did not take the adapter's rank: $(cat more/config.toml)"
# instruction data: prompt/completion and messages records, masked, LoRA-trained (byte-level here)
for i in $(seq 1 300); do
  echo '{"prompt": "Who begat Enos? ", "completion": "Seth begat Enos, and lived after he begat Enos."}'
  echo '{"messages": [{"role": "user", "content": "And who was Enos his son?"}, {"role": "assistant", "content": "Cainan."}]}'
done > chat.jsonl
"$F" prepare --format jsonl chat.jsonl --out chat --val-every 4 > log 2>&1 || fail "prepare jsonl: $(cat log)"
ls chat/train_000.mask >/dev/null 2>&1 || fail "no loss mask: $(ls chat)"
grep -q "records rendered with the plain template (no chat_template next to the tokenizer)" log || fail "prepare did not say the template: $(cat log)"
"$F" train --init-from hf --lora.rank=4 --train.steps=4 --train.seq_len=32 --train.micro_batch=2 --run.checkpoint_every=0 \
  --train.lr=3e-3 --data.train='chat/train_*.bin' --data.val='chat/val_*.bin' --run.dir=chat_run > log 2>&1 \
  || fail "lora on instruction data: $(cat log)"
echo '{"prompt": "no completion"}' > bad.jsonl
"$F" prepare --format jsonl bad.jsonl --out bad_chat > log 2>&1 && fail "a record without a completion was prepared"
grep -q "bad.jsonl:1" log || fail "bad record: $(cat log)"
[ -e bad_chat/train_000.bin ] && fail "a failed prepare wrote shards"
# bad input
"$F" train $A --lora.targets=q_proj,nope --train.steps=1 --run.dir=bad > log 2>&1 && fail "an unknown target ran"
grep -q "lora.targets: 'nope' is not a module of a llama block" log || fail "unknown target: $(cat log)"
$PY "$REF/llama_reference.py" save other --layers 2 --heads 4 --kv-heads 2 --hidden 32 --ffn 64 --vocab 257 --context 64 \
  >/dev/null 2>&1 || fail "save other"
other() {
  "$F" train --init-from other --lora.init_from=peft --train.steps=1 --train.seq_len=32 --train.micro_batch=2 --run.dir=bad \
    --data.train='data/train_*.bin' --data.val='data/val_*.bin' > log 2>&1 && fail "adapters for another base ran"
}
other
grep -q "base_model_name_or_path 'hf': these adapters are for another base model than train.init_from = 'other'" log \
  || fail "named base: $(cat log)"
sed -i 's#"base_model_name_or_path": "hf"#"base_model_name_or_path": null#' peft/adapter_config.json
other
grep -q "adapter_model.safetensors: tensor '.*' has shape \[4, 64\], this model's is \[4, 32\]" log || fail "other base: $(cat log)"
[ -e bad/config.toml ] && fail "a failed run wrote its directory"
echo "lora cli: resumed LoRA runs equal uninterrupted ones; PEFT loads the adapters, transformers the merged model; bad input refused"
