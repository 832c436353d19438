"""Hugging Face transformers' Llama family as the reference for frugal's llama (the parity tests).

  python llama_reference.py save DIR --layers L --heads H --kv-heads K --hidden C --ffn F
                                 --vocab V --context N [--untied] [--llama3 ORIG] [--qwen2] [--mistral W]
                                 [--dtype fp32|bf16|fp16] [--max-shard-size S] [--seed S]
      A LlamaForCausalLM (Qwen2ForCausalLM with --qwen2: q/k/v biases; MistralForCausalLM with
      --mistral W: a sliding window of W keys) with transformers' random
      init, written by save_pretrained. --llama3 ORIG: Llama 3.1's rope_scaling (factor 8, low 1,
      high 4, original_max_position_embeddings ORIG).
  python llama_reference.py bench - --layers ... [--untied] --batch B --seq T --steps S
                                 --warmup-steps W --threads N --dtype fp32|bf16 [--sdpa] [--compile]
                                 [--sep ID [--sep-before] --doc-len N]
      Training throughput (bench/train_bench.py): one JSON line. --sep: packed documents (as
      run's), each token a separator with probability 1/N.
  python llama_reference.py run DIR BATCHES OUT [--lr ...] [--autocast] [--sep ID]
      Loads DIR in fp32 (failing on any key it did not place; any causal LM, GPT-2 with its
      dropout off). BATCHES: I32 "tokens" (S, B, T+1), S >= 10. OUT (F32), by transformers' names
      (GPT-2's Conv1D weights transposed to [out, in]): batch 0's "logits", "loss" and
      "grad.NAME"; the losses and gradient norms of 10 AdamW steps (frugal's schedule, clipping
      and decay of every 2-D weight) and "param5.NAME" after 5 of them; with --autocast the same
      batch under bf16 autocast as "ac.logits", "ac.loss", "ac.grad.NAME".
      --sep ID: packed documents, cut after each token ID (records): position_ids count from
      each document's start (transformers then masks attention between documents) and the target
      at each ID is ignored, as DataCollatorWithFlattening builds a batch. --sep-before: cut
      before each ID instead (text: ID starts each document), every target trained.
"""
import argparse
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file

from gpt2_reference import lr_at  # frugal's schedule


def save(a):
    torch.manual_seed(a.seed)
    kw = dict(num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
              hidden_size=a.hidden, intermediate_size=a.ffn, vocab_size=a.vocab, max_position_embeddings=a.context,
              tie_word_embeddings=not a.untied, rms_norm_eps=1e-5, rope_theta=10000.0,
              bos_token_id=a.vocab - 1, eos_token_id=a.vocab - 1)
    if a.llama3:
        kw["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": a.llama3}
    if a.qwen2:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(use_sliding_window=False, **kw))
    elif a.mistral:
        model = transformers.MistralForCausalLM(transformers.MistralConfig(sliding_window=a.mistral, **kw))
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    model.to(dtype).save_pretrained(a.dir, max_shard_size=a.max_shard_size)


def packed(tokens, sep, before=False):
    """Inputs, targets and the model's keyword arguments of windows tokens (B, T+1); with sep, packed
    documents cut at each sep: position_ids from each one's start (transformers then masks attention
    between them). Cut after sep (records), the targets at sep are ignored (DataCollatorWithFlattening's
    batch); cut before it (text), sep starts each document and its target is trained."""
    x, y = tokens[:, :-1], tokens[:, 1:]
    if sep is None:
        return x, y, {}
    t = torch.arange(x.shape[1]).expand_as(x)
    starts = (x == sep) if before else torch.nn.functional.pad(x[:, :-1] == sep, (1, 0))
    start = torch.where(starts, t, torch.zeros_like(t))
    if not before:
        y = y.masked_fill(x == sep, -100)
    # with a cache, transformers takes position_ids as positions only, not as packing
    return x, y, {"position_ids": t - start.cummax(1).values, "use_cache": False}


def run(a):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(a.dir, dtype=torch.float32,
                                                                    output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        sys.exit(f"{a.dir}: loading info {bad}")
    model.train()
    for m in model.modules():  # GPT-2's configs drop out 10 %; frugal's runs do not
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    tokens = load_file(a.batches)["tokens"].long()
    params = dict(model.named_parameters())
    conv1d = {n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}

    def ours(name, t):  # frugal's layout: [out, in]
        return t.t() if name.rsplit(".", 1)[0] in conv1d and name.endswith(".weight") else t

    def loss_of(s, autocast=False):
        x, y, kw = packed(tokens[s], a.sep, a.sep_before)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(x, **kw).logits
        return logits, torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    out = {}
    logits, loss = loss_of(0)
    loss.backward()
    out["logits"] = logits.detach()
    out["loss"] = loss.detach().reshape(1)
    for name, p in params.items():
        out["grad." + name] = ours(name, p.grad.detach().clone())
    if a.autocast:
        model.zero_grad(set_to_none=True)
        logits, loss = loss_of(0, autocast=True)
        loss.backward()
        out["ac.logits"] = logits.detach().float()
        out["ac.loss"] = loss.detach().reshape(1)
        for name, p in params.items():
            out["ac.grad." + name] = ours(name, p.grad.detach().float().clone())

    groups = [{"params": [p for p in params.values() if p.dim() >= 2], "weight_decay": a.weight_decay},
              {"params": [p for p in params.values() if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=a.lr, betas=(a.beta1, a.beta2), eps=a.eps)
    losses, norms = [], []
    for i in range(10):
        opt.zero_grad(set_to_none=False)
        _, loss = loss_of(i)
        loss.backward()
        losses.append(loss.item())
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)))
        for g in opt.param_groups:
            g["lr"] = lr_at(i, a.lr, a.min_lr, a.warmup, a.total_steps)
        opt.step()
        if i == 4:
            for name, p in params.items():
                out["param5." + name] = ours(name, p.detach().clone())
    out["losses"] = torch.tensor(losses)
    out["grad_norms"] = torch.tensor(norms)
    save_file({k: v.float().contiguous() for k, v in out.items()}, a.out)


def bench(a):
    """Training throughput of transformers' LlamaForCausalLM (bench/train_bench.py's PyTorch side):
    eager or SDPA attention, optionally torch.compile; AdamW (fused with SDPA), clipping at 1 as
    frugal does, bf16 through autocast with fp32 masters. Prints one JSON line."""
    import json
    import resource
    import statistics
    import time
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                                   hidden_size=a.hidden, intermediate_size=a.ffn, vocab_size=a.vocab,
                                   max_position_embeddings=a.context, tie_word_embeddings=not a.untied,
                                   attn_implementation="sdpa" if a.sdpa else "eager")
    model = transformers.LlamaForCausalLM(cfg)
    model.train()
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, fused=a.sdpa)
    step_model = torch.compile(model) if a.compile else model
    times, loss = [], None
    for i in range(a.warmup_steps + a.steps):
        tok = torch.randint(0, a.vocab, (a.batch, a.seq + 1))
        if a.sep is not None:  # documents of about doc_len tokens
            tok[torch.rand(tok.shape) < 1.0 / a.doc_len] = a.sep
        x, y, kw = packed(tok, a.sep, a.sep_before)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
            logits = step_model(x, **kw).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if i >= a.warmup_steps:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({"tokens_per_s": a.batch * a.seq / med, "step_s_median": med,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "loss": loss.item()}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["save", "run", "bench"])
    ap.add_argument("dir")
    ap.add_argument("batches", nargs="?")
    ap.add_argument("out", nargs="?")
    for k in ["layers", "heads", "kv-heads", "hidden", "ffn", "vocab", "context", "seed", "llama3"]:
        ap.add_argument("--" + k, type=int, default=0)
    ap.add_argument("--untied", action="store_true")
    ap.add_argument("--qwen2", action="store_true")
    ap.add_argument("--mistral", type=int, default=0)
    ap.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--max-shard-size", default="5GB")
    for k, v in [("lr", 3e-3), ("min-lr", 3e-4), ("weight-decay", 0.1), ("beta1", 0.9), ("beta2", 0.95),
                 ("eps", 1e-8), ("clip", 1.0)]:
        ap.add_argument("--" + k, type=float, default=v)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--total-steps", type=int, default=10)
    ap.add_argument("--autocast", action="store_true")
    ap.add_argument("--sep", type=int)
    ap.add_argument("--sep-before", action="store_true")
    ap.add_argument("--doc-len", type=int, default=256)
    for k in ["batch", "seq", "steps", "warmup-steps", "threads"]:
        ap.add_argument("--" + k, type=int, default=2)
    ap.add_argument("--sdpa", action="store_true")
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    {"save": save, "run": run, "bench": bench}[a.mode](a)


if __name__ == "__main__":
    main()
