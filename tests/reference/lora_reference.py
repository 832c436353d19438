"""PEFT + transformers as the reference for frugal's LoRA (tests/model/lora_test.cpp).

  python lora_reference.py save DIR --family llama|gpt2 --layers L --heads H [--kv-heads K] --hidden C
                                [--ffn F] --vocab V --context N --rank R --alpha A --targets a,b,c --seed S
      DIR/base: a LlamaForCausalLM or GPT2LMHeadModel (dropout off) with transformers' random init,
      by save_pretrained; DIR/adapter: PEFT's LoRA on it (lora_dropout 0) with lora_B drawn from
      N(0, 0.02) instead of PEFT's zeros, so that every adapter matrix has a gradient, by
      save_pretrained.
  python lora_reference.py run DIR BATCHES OUT --prompt K [--lr ... --steps S]
      BATCHES: I32 "tokens" (S, B, T+1). Targets are tokens[:, 1:], the first K of each row not
      counted (labels -100: a prompt). OUT (F32): batch 0's "loss" (cross-entropy over the counted
      targets), "hf_loss" (transformers' own loss with those labels) and "grad.NAME" of every
      adapter matrix (PEFT's names without the adapter name); then S AdamW steps (frugal's
      schedule, clipping, weight decay on every adapter matrix) over the adapters alone:
      "losses" and "param.NAME" after them.
      --nf4: QLoRA, every block weight as bitsandbytes' NF4 (double quantization) dequantizes it.
  python lora_reference.py logits BASE ADAPTER BATCHES OUT [--nf4]
      peft.PeftModel.from_pretrained(BASE, ADAPTER): batch 0's "logits".
  python lora_reference.py bench - --layers L --heads H --kv-heads K --hidden C --ffn F --vocab V [--rank R
                                 --targets ...] --batch B --seq T --steps S --warmup-steps W --threads N
      Step time of a LlamaForCausalLM (random init, tied head, SDPA attention) under bf16 autocast:
      PEFT's LoRA (rank R > 0; AdamW over the adapters) or full fine-tuning (rank 0): one JSON line
      (bench/finetune_bench.py).
"""
import argparse
import sys

import peft
import torch
import transformers
from safetensors.torch import load_file, save_file

from gpt2_reference import lr_at  # frugal's schedule


def save(a):
    torch.manual_seed(a.seed)
    if a.family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads or a.heads,
            hidden_size=a.hidden, intermediate_size=a.ffn, vocab_size=a.vocab, max_position_embeddings=a.context,
            tie_word_embeddings=True, rms_norm_eps=1e-5, bos_token_id=a.vocab - 1, eos_token_id=a.vocab - 1))
    else:
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_layer=a.layers, n_head=a.heads, n_embd=a.hidden, vocab_size=a.vocab, n_positions=a.context,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=a.vocab - 1, eos_token_id=a.vocab - 1))
    model.save_pretrained(a.dir + "/base")
    cfg = peft.LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=0.0, target_modules=a.targets.split(","),
                          fan_in_fan_out=a.family == "gpt2", task_type="CAUSAL_LM")
    pm = peft.get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    pm.save_pretrained(a.dir + "/adapter")


def load(base, adapter, trainable, nf4=False):
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if nf4:
        # QLoRA computes x deq(W)^T + LoRA: every linear weight of the blocks replaced by what
        # bitsandbytes' quantize_4bit (nf4, blocks of 64, double-quantized absmax) dequantizes to.
        # (Its CPU Linear4bit kernels are not the reference: their training and inference paths
        # differ from each other by 1e-3.)
        from bitsandbytes.functional import dequantize_4bit, quantize_4bit
        with torch.no_grad():
            for name, m in model.named_modules():
                if (".layers." in name or ".h." in name) and hasattr(m, "weight") and m.weight.dim() == 2:
                    q, st = quantize_4bit(m.weight.data.contiguous(), blocksize=64, quant_type="nf4", compress_statistics=True)
                    m.weight.data = dequantize_4bit(q, st).reshape(m.weight.shape).to(torch.float32)
    return peft.PeftModel.from_pretrained(model, adapter, is_trainable=trainable)


def run(a):
    pm = load(a.dir + "/base", a.dir + "/adapter", True, a.nf4)
    pm.train()
    tokens = load_file(a.batches)["tokens"].long()
    params = {n.replace(".default", ""): p for n, p in pm.named_parameters() if p.requires_grad}
    if not params or any("lora_" not in n for n in params):
        sys.exit(f"trainable parameters: {list(params)}")

    def loss_of(s):
        x, y = tokens[s, :, :-1], tokens[s, :, 1:].clone()
        y[:, :a.prompt] = -100
        logits = pm(input_ids=x).logits
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)

    out = {}
    loss = loss_of(0)
    loss.backward()
    out["loss"] = loss.detach().reshape(1)
    labels = tokens[0].clone()  # transformers shifts them: position t is scored on labels[t + 1]
    labels[:, 1:a.prompt + 1] = -100
    with torch.no_grad():
        out["hf_loss"] = pm(input_ids=tokens[0], labels=labels).loss.reshape(1)
    for name, p in params.items():
        out["grad." + name] = p.grad.detach().clone()
    opt = torch.optim.AdamW(list(params.values()), lr=a.lr, betas=(a.beta1, a.beta2), eps=a.eps,
                            weight_decay=a.weight_decay)
    losses = []
    for i in range(a.steps):
        opt.zero_grad(set_to_none=False)
        loss = loss_of(i)
        loss.backward()
        losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(list(params.values()), a.clip)
        for g in opt.param_groups:
            g["lr"] = lr_at(i, a.lr, a.min_lr, a.warmup, a.steps)
        opt.step()
    for name, p in params.items():
        out["param." + name] = p.detach().clone()
    out["losses"] = torch.tensor(losses)
    save_file({k: v.float().contiguous() for k, v in out.items()}, a.out)


def logits(a):
    pm = load(a.dir, a.batches, False, a.nf4)  # BASE ADAPTER
    tokens = load_file(a.out)["tokens"].long()
    with torch.no_grad():
        out = pm(input_ids=tokens[0, :, :-1]).logits
    save_file({"logits": out.float().contiguous()}, a.extra)


def bnb(a):
    """DIR/base loaded as transformers loads a QLoRA base (bitsandbytes' 4-bit nf4, double-quantized
    absmax) and saved: DIR/bnb; the logits of the base over the weights those bytes hold: per flat
    block of 64, NF4 code x (absmax code through the 8-bit dynamic map x absmax2 + offset), as
    bitsandbytes' CUDA kernels dequantize. (Its CPU dequantize_4bit in 0.50 disagrees with that
    for a [64, 96] weight from the third block on; its quantize_4bit, its dequantize_blockwise and
    the format do not.)"""
    import bitsandbytes
    from bitsandbytes.functional import dequantize_blockwise
    cfg = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=torch.float32)
    q = transformers.AutoModelForCausalLM.from_pretrained(a.dir + "/base", quantization_config=cfg, device_map="cpu",
                                                          dtype=torch.float32)
    q.save_pretrained(a.dir + "/bnb")
    model = transformers.AutoModelForCausalLM.from_pretrained(a.dir + "/base", dtype=torch.float32)
    quantized = {n: m for n, m in q.named_modules() if isinstance(m, bitsandbytes.nn.Linear4bit)}
    assert quantized, "bitsandbytes quantized nothing"
    with torch.no_grad():
        for name, m in model.named_modules():
            if name in quantized:
                w, st = quantized[name].weight.data.flatten(), quantized[name].weight.quant_state
                n = m.weight.numel()
                codes = torch.stack([w >> 4, w & 15], 1).flatten().long()[:n]
                absmax = dequantize_blockwise(st.absmax, st.state2) + st.offset
                m.weight.data = (st.code[codes] * absmax.repeat_interleave(64)[:n]).reshape(m.weight.shape)
        out = model(input_ids=load_file(a.batches)["tokens"].long()[0, :, :-1]).logits
    save_file({"logits": out.float().contiguous()}, a.out)


def bench(a):
    import json
    import statistics
    import time
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, hidden_size=a.hidden,
        intermediate_size=a.ffn, vocab_size=a.vocab, max_position_embeddings=max(a.seq, 2048), tie_word_embeddings=True,
        attn_implementation="sdpa"))
    if a.rank > 0:
        model = peft.get_peft_model(model, peft.LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0,
                                                           target_modules=a.targets.split(","), task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    times = []
    for i in range(a.warmup_steps + a.steps):
        tok = torch.randint(0, a.vocab, (a.batch, a.seq + 1))
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=tok[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tok[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if i >= a.warmup_steps:
            times.append(time.perf_counter() - t0)
    print(json.dumps({"step_s_median": statistics.median(times), "trained": sum(p.numel() for p in params)}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["save", "run", "logits", "bnb", "bench"])
    ap.add_argument("dir")
    ap.add_argument("batches", nargs="?")
    ap.add_argument("out", nargs="?")
    ap.add_argument("extra", nargs="?")
    ap.add_argument("--family", choices=["llama", "gpt2"], default="llama")
    for k in ["layers", "heads", "kv-heads", "hidden", "ffn", "vocab", "context", "seed", "rank", "prompt"]:
        ap.add_argument("--" + k, type=int, default=0)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--targets", default="q_proj,v_proj")
    for k, v in [("lr", 1e-3), ("min-lr", 1e-4), ("weight-decay", 0.1), ("beta1", 0.9), ("beta2", 0.95),
                 ("eps", 1e-8), ("clip", 1.0)]:
        ap.add_argument("--" + k, type=float, default=v)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--nf4", action="store_true")
    for k, v in [("batch", 1), ("seq", 512), ("warmup-steps", 1), ("threads", 1)]:
        ap.add_argument("--" + k, type=int, default=v)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    {"save": save, "run": run, "logits": logits, "bnb": bnb, "bench": bench}[a.mode](a)


if __name__ == "__main__":
    main()
