#!/usr/bin/env python3
"""Fine-tuning on this machine (issue 20): what trains in 24 GiB on 2 cores, and what LoRA saves.

  .venv/bin/python bench/finetune_bench.py [--big] [--small] [--frugal build/frugal]

--small: smollm-135m at T=512, B=1, bf16: frugal's full fine-tuning and LoRA (rank 16 on every
    linear layer), and in the same run transformers' full fine-tuning and PEFT's LoRA (SDPA,
    fused AdamW, bf16 autocast): seconds per step (median after a warm-up step) and LoRA / full.
--big: the largest Llama shapes (random weights) per mode, T=512, B=1, bf16 compute: full
    fine-tuning of tinyllama-1.1b, LoRA (rank 16, every linear layer) on a bf16 llama-2-7b, QLoRA
    on an NF4 llama-2-13b: seconds per step, peak RSS (the process's ru_maxrss) and each memory
    category's measured peak against the plan frugal printed before the run (summary.json).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_bench import run, write_shard  # noqa: E402

import numpy as np  # noqa: E402

ALL = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def frugal(a, d, name, args, steps, env):
    out, rss = run([a.frugal, "train", *args, "--train.seq_len=512", "--train.micro_batch=1", "--train.batch_tokens=512",
                    f"--train.steps={steps}", "--train.warmup_steps=1", "--train.eval_every=0", "--train.eval_batches=1",
                    "--run.checkpoint_every=0", "--run.log_every=1000", "--precision.compute=bf16",
                    f"--data.train={d}/train.bin", f"--data.val={d}/val.bin", f"--run.dir={d}/{name}"], env)
    recs = [json.loads(line) for line in open(f"{d}/{name}/metrics.jsonl")]
    summary = json.load(open(f"{d}/{name}/summary.json"))
    return {"step_s": statistics.median(r["step_ms"] / 1e3 for r in recs[1:]), "rss_mib": rss,
            "measured": summary["measured"]["mem_peak"], "predicted": summary["predicted"]["memory"]}


def peft(a, rank, env):
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    out, rss = run([os.path.join(root, ".venv", "bin", "python"), os.path.join(root, "tests", "reference", "lora_reference.py"),
                    "bench", "-", "--layers", "30", "--heads", "9", "--kv-heads", "3", "--hidden", "576", "--ffn", "1536",
                    "--vocab", "49152", "--rank", str(rank), "--targets", ALL, "--batch", "1", "--seq", "512",
                    "--steps", "4", "--warmup-steps", "1", "--threads", "2"], env)
    r = json.loads(out.strip().splitlines()[-1])
    return {"step_s": r["step_s_median"], "rss_mib": rss}


def mib(x):
    return f"{x / 2**20:8.0f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--frugal", default="build/frugal")
    a = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="2")
    with tempfile.TemporaryDirectory() as d:
        rng = np.random.default_rng(0)
        write_shard(f"{d}/train.bin", rng.integers(0, 32000, 8 * 513))
        write_shard(f"{d}/val.bin", rng.integers(0, 32000, 513))
        if a.small:
            rows = {"frugal full": frugal(a, d, "full", ["--model.preset=smollm-135m"], 5, env),
                    "frugal lora": frugal(a, d, "lora", ["--model.preset=smollm-135m", "--lora.rank=16",
                                                         f"--lora.targets={ALL}"], 5, env),
                    "torch full": peft(a, 0, env), "peft lora": peft(a, 16, env)}
            print("smollm-135m, T=512, B=1, bf16, 2 threads (LoRA rank 16 on every linear layer):")
            for k, r in rows.items():
                print(f"  {k:12s} {r['step_s']:7.3f} s/step  peak RSS {r['rss_mib']:6.0f} MiB")
            print(f"  LoRA / full: frugal {rows['frugal lora']['step_s'] / rows['frugal full']['step_s']:.2f}, "
                  f"transformers+PEFT {rows['peft lora']['step_s'] / rows['torch full']['step_s']:.2f}; "
                  f"frugal LoRA vs PEFT LoRA: {rows['peft lora']['step_s'] / rows['frugal lora']['step_s']:.2f}x as fast")
        if a.big:
            runs = [("full tinyllama-1.1b", ["--model.preset=tinyllama-1.1b"]),
                    ("lora llama-2-7b", ["--model.preset=llama-2-7b", "--lora.rank=16", f"--lora.targets={ALL}"]),
                    ("qlora llama-2-13b", ["--model.preset=llama-2-13b", "--lora.rank=16", f"--lora.targets={ALL}",
                                           "--lora.base=nf4"])]
            print("T=512, B=1, bf16 compute, 2 threads; MiB, measured / predicted by the plan")
            print(f"{'run':20s} {'s/step':>7s} {'RSS':>7s}  {'params':>17s} {'grads':>17s} {'optimizer':>17s} "
                  f"{'activations':>17s} {'workspace':>17s}")
            for name, args in runs:
                r = frugal(a, d, name.split()[0], args, 3, env)
                cols = " ".join(f"{mib(r['measured'][c])}/{mib(r['predicted'][c])}"
                                for c in ("params", "grads", "optimizer", "activations", "workspace"))
                print(f"{name:20s} {r['step_s']:7.1f} {r['rss_mib']:7.0f}  {cols}", flush=True)


if __name__ == "__main__":
    main()
