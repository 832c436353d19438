"""Hugging Face transformers as the reference for frugal's model files (the interop tests).

  python hf_reference.py logits DIR TOKENS OUT
      Loads DIR (what `frugal export` writes) with AutoModelForCausalLM.from_pretrained in fp32 and
      fails on any missing, unexpected or mismatched key or a loading warning. TOKENS: I32 "tokens"
      (B, T) in a safetensors file. OUT (F32): "logits" (B, T, V).
  python hf_reference.py save DIR --n-layer L --n-head H --n-embd C --vocab V --context N
                              [--dtype fp32|bf16|fp16] [--max-shard-size S] [--seed S] [--untied]
      A GPT2LMHeadModel with transformers' random init, written by save_pretrained (S such as
      "200KB" gives model.safetensors.index.json and several shards); --untied: its own lm_head.
  python hf_reference.py loss DIR TOKENS OUT
      The mean next-token cross-entropy of DIR's model (fp32) over the windows in TOKENS: I32
      "tokens" (B, T+1). OUT (F32): "loss" (1,).
  python hf_reference.py tokenizer DIR TEXT OUT
      AutoTokenizer.from_pretrained(DIR)'s ids of the text in the file TEXT (no special tokens
      added), one a line in OUT.
"""
import argparse
import logging
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file


def load(directory):
    """The model of DIR in fp32; exits naming anything the load did not place or warned about."""
    warnings = []

    class Catch(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage())

    transformers.logging.set_verbosity_warning()
    transformers.logging.get_logger().addHandler(Catch())
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad or warnings:
        sys.exit(f"{directory}: loading info {bad}, warnings {warnings}")
    return model.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["logits", "save", "loss", "tokenizer"])
    ap.add_argument("dir")
    ap.add_argument("tokens", nargs="?")
    ap.add_argument("out", nargs="?")
    for k in ["n-layer", "n-head", "n-embd", "vocab", "context", "seed"]:
        ap.add_argument("--" + k, type=int, default=0)
    ap.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--max-shard-size", default="5GB")
    ap.add_argument("--untied", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(2)
    if a.mode == "save":
        torch.manual_seed(a.seed)
        cfg = transformers.GPT2Config(n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd,
                                      vocab_size=a.vocab, n_positions=a.context,
                                      tie_word_embeddings=not a.untied, bos_token_id=a.vocab - 1,
                                      eos_token_id=a.vocab - 1)
        model = transformers.GPT2LMHeadModel(cfg)
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
        model.to(dtype).save_pretrained(a.dir, max_shard_size=a.max_shard_size)
        return
    if a.mode == "tokenizer":
        tok = transformers.AutoTokenizer.from_pretrained(a.dir)
        ids = tok.encode(open(a.tokens, encoding="utf-8").read(), add_special_tokens=False)
        open(a.out, "w").write("".join(f"{i}\n" for i in ids))
        return
    tokens = load_file(a.tokens)["tokens"].long()
    model = load(a.dir)
    with torch.no_grad():
        if a.mode == "logits":
            save_file({"logits": model(tokens).logits.float().contiguous()}, a.out)
        else:
            logits = model(tokens[:, :-1]).logits.float()
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
            save_file({"loss": loss.reshape(1)}, a.out)


if __name__ == "__main__":
    main()
