#!/usr/bin/env python3
"""Training throughput and peak RSS: frugal against the PyTorch reference model
(tests/reference/gpt2_reference.py --bench; for the llama family transformers' LlamaForCausalLM,
tests/reference/llama_reference.py bench; PyTorch 2.x from the venv of scripts/setup.sh) in the
same run, same shape, same threads, in interleaved rounds.

  .venv/bin/python bench/train_bench.py [--preset gpt2] [--batch 4] [--seq 256] [--steps 6]
      [--threads 2] [--dtype fp32|bf16] [--torch eager,sdpa,compile] [--rounds 1] [--frugal build/frugal]

PyTorch runs as chosen by --torch: eager (nanoGPT's attention, masked softmax), sdpa
(F.scaled_dot_product_attention, flash attention on the CPU, and fused AdamW) and compile
(torch.compile with both).
Each round runs frugal and then each PyTorch variant once; a system's figure is the best of its
rounds, and the ratio is against the best PyTorch variant.

--docs N (llama presets): packed text documents masked apart, each starting at its end of text
(frugal's data.document_mask; transformers' position_ids that restart there, from which it builds the
block-diagonal mask); each token is the byte tokenizer's end of text (256, what frugal's shards without
a tokenizer separate by) with probability 1/N.

Both train on uniform random tokens (the loss stays near ln V; speed does not depend on it)
with AdamW; bf16 is frugal's precision.compute = "bf16" against torch.autocast(bfloat16), both with
fp32 master weights. tokens/s is tokens per step / median step time after the warm-up steps; peak RSS
is the child's ru_maxrss. Prints one line per system and the ratios.
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile

import numpy as np

PRESETS = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "mini": (4, 4, 256)}
# the llama family: layers, heads, key/value heads, width, MLP width, vocabulary, tied head
SEP = 256  # --docs: the end of text of shards without a tokenizer (byte-level)
LLAMA = {"smollm-135m": (30, 9, 3, 576, 1536, 49152, True), "llama-tiny": (2, 4, 2, 64, 176, 257, False)}


def run(cmd, env):
    """Runs cmd; returns (stdout, peak RSS in MiB of that child)."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            err.seek(0)
            last = [line for line in err.read().splitlines() if line.strip()][-1:] or ["(no message)"]
            raise RuntimeError(f"{os.path.basename(cmd[1] if 'python' in cmd[0] else cmd[0])} exited with "
                               f"status {status}: {last[0][:300]}")
    return out, usage.ru_maxrss / 1024


def write_shard(path, tokens):
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [20240520, 1, len(tokens)]
    with open(path, "wb") as f:
        f.write(header.tobytes() + tokens.astype(np.uint16).tobytes())


def frugal_run(a, d, env):
    vocab = [] if a.preset in LLAMA else ["--model.vocab_size=50257"]
    _, rss = run([a.frugal, "train", f"--model.preset={a.preset}", *vocab,
                  f"--train.seq_len={a.seq}", f"--train.micro_batch={a.batch}",
                  f"--train.steps={a.warmup_steps + a.steps}", f"--train.threads={a.threads}", "--train.lr=3e-4",
                  "--train.warmup_steps=0", "--train.eval_batches=1", "--train.eval_every=0", "--run.checkpoint_every=0",
                  f"--data.train={d}/train.bin", f"--data.val={d}/val.bin", f"--run.dir={d}/run",
                  f"--precision.compute={a.dtype}", f"--memory.recompute={a.recompute}",
                  f"--data.document_mask={'true' if a.docs else 'false'}", "--run.log_every=1000"], env)
    with open(f"{d}/run/metrics.jsonl") as f:
        recs = [json.loads(line) for line in f]
    step_s = statistics.median(r["step_ms"] / 1e3 for r in recs[a.warmup_steps:])
    return {"tokens_per_s": a.batch * a.seq / step_s, "step_s_median": step_s, "peak_rss_mib": rss,
            "activations_mib": max(r["mem_peak"]["activations"] for r in recs) / 2**20}


def torch_run(a, variant, env):
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    python = os.path.join(root, ".venv", "bin", "python")
    common = ["--batch", str(a.batch), "--seq", str(a.seq), "--steps", str(a.steps),
              "--warmup-steps", str(a.warmup_steps + (2 if variant == "compile" else 0)),
              "--threads", str(a.threads), "--dtype", a.dtype]
    if a.preset in LLAMA:  # transformers' LlamaForCausalLM
        L, H, K, C, F, V, tied = LLAMA[a.preset]
        cmd = [python, os.path.join(root, "tests", "reference", "llama_reference.py"), "bench", "-",
               "--layers", str(L), "--heads", str(H), "--kv-heads", str(K), "--hidden", str(C), "--ffn", str(F),
               "--vocab", str(V), "--context", "2048"] + ([] if tied else ["--untied"])
    else:
        L, H, C = PRESETS[a.preset]
        # the vocabulary padded to 50,304 as nanoGPT pads it for speed (frugal pads to the same inside)
        cmd = [python, os.path.join(root, "tests", "reference", "gpt2_reference.py"), "--bench",
               "--n-layer", str(L), "--n-head", str(H), "--n-embd", str(C), "--vocab", "50304", "--context", "1024"]
        cmd += ["--checkpoint"] if a.torch_checkpoint else []
    cmd += ["--sep", str(SEP), "--sep-before", "--doc-len", str(a.docs)] if a.docs else []
    cmd += common + {"eager": [], "sdpa": ["--sdpa"], "compile": ["--sdpa", "--compile"]}[variant]
    try:
        out, rss = run(cmd, env)
    except RuntimeError as e:
        return {"error": str(e)}
    r = json.loads(out.strip().splitlines()[-1])
    r["peak_rss_mib"] = rss
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gpt2", choices=list(PRESETS) + list(LLAMA))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup-steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--recompute", default="none", help="frugal's memory.recompute")
    ap.add_argument("--torch", default="eager", help="PyTorch variants: eager, sdpa, compile (comma-separated)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--torch-checkpoint", action="store_true", help="PyTorch: torch.utils.checkpoint per block")
    ap.add_argument("--docs", type=int, default=0, help="packed documents of about N tokens, masked apart (llama presets)")
    ap.add_argument("--frugal", default="build/frugal")
    a = ap.parse_args()
    if a.docs and a.preset not in LLAMA:
        ap.error("--docs: the llama presets only (the GPT-2 reference has no document masking)")
    variants = a.torch.split(",")
    V = LLAMA[a.preset][5] if a.preset in LLAMA else 50257
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OPENBLAS_NUM_THREADS=str(a.threads))
    best = {}
    def keep(name, r):  # the best round; an error only where no round ran
        old = best.get(name)
        if old is None or "error" in old or ("error" not in r and r["tokens_per_s"] > old["tokens_per_s"]):
            best[name] = r
    with tempfile.TemporaryDirectory() as d:
        rng = np.random.default_rng(0)
        n = (a.warmup_steps + a.steps + 2) * a.batch * a.seq + 1
        train = rng.integers(0, V, n)
        if a.docs:
            train[rng.random(n) < 1.0 / a.docs] = SEP
        write_shard(f"{d}/train.bin", train)
        with open(f"{d}/frugal_tokenizer.json", "w") as f:  # the byte tokenizer's end of text is SEP
            f.write('{"kind": "byte", "vocab_size": 257}\n')
        write_shard(f"{d}/val.bin", rng.integers(0, V, a.batch * a.seq + 1))
        for _ in range(a.rounds):
            keep("frugal", frugal_run(a, d, env))
            for v in variants:
                keep("torch " + v, torch_run(a, v, env))
    import torch  # only for its version
    print(f"{a.preset} B={a.batch} T={a.seq} {a.dtype}{f', documents of ~{a.docs} tokens masked apart' if a.docs else ''}, "
          f"{a.threads} threads, {a.steps} timed steps after "
          f"{a.warmup_steps}, best of {a.rounds} interleaved rounds; frugal recompute {a.recompute}, "
          f"PyTorch {torch.__version__} checkpoint {'per block' if a.torch_checkpoint else 'off'}")
    for name, r in best.items():
        if "error" in r:
            print(f"  {name:14s} failed: {r['error']}")
            continue
        print(f"  {name:14s} {r['tokens_per_s']:8.1f} tokens/s  {r['step_s_median']:7.3f} s/step  "
              f"peak RSS {r['peak_rss_mib']:7.0f} MiB"
              + (f"  (activations {r['activations_mib']:.0f} MiB)" if "activations_mib" in r else ""))
    ok = [k for k in best if k != "frugal" and "error" not in best[k]]
    if ok:
        top = max(ok, key=lambda k: best[k]["tokens_per_s"])
        f, t = best["frugal"], best[top]
        print(f"  ratio vs the best PyTorch ({top}): {f['tokens_per_s'] / t['tokens_per_s']:.2f}x tokens/s, "
              f"{f['peak_rss_mib'] / t['peak_rss_mib']:.2f}x peak RSS")


if __name__ == "__main__":
    main()
