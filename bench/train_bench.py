#!/usr/bin/python3
"""Training throughput and peak RSS: frugal against the PyTorch reference model
(tests/reference/gpt2_reference.py --bench) in the same run, same shape, same threads.

  /usr/bin/python3 bench/train_bench.py [--preset gpt2] [--batch 4] [--seq 256] [--steps 6]
                                        [--threads 2] [--dtype fp32|bf16] [--frugal build/frugal]

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
import sys
import tempfile

import numpy as np

PRESETS = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "mini": (4, 4, 256)}


def run(cmd, env):
    """Runs cmd; returns (stdout, peak RSS in MiB of that child)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit(f"{cmd[0]} failed with status {status}")
    return out, usage.ru_maxrss / 1024


def write_shard(path, tokens):
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [20240520, 1, len(tokens)]
    with open(path, "wb") as f:
        f.write(header.tobytes() + tokens.astype(np.uint16).tobytes())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gpt2", choices=PRESETS)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup-steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--recompute", default="none", help="frugal's memory.recompute")
    ap.add_argument("--torch-checkpoint", action="store_true", help="PyTorch: torch.utils.checkpoint per block")
    ap.add_argument("--frugal", default="build/frugal")
    a = ap.parse_args()
    L, H, C = PRESETS[a.preset]
    V = 50257
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OPENBLAS_NUM_THREADS=str(a.threads))
    total = a.warmup_steps + a.steps
    with tempfile.TemporaryDirectory() as d:
        rng = np.random.default_rng(0)
        n = (total + 2) * a.batch * a.seq + 1
        write_shard(f"{d}/train.bin", rng.integers(0, V, n))
        write_shard(f"{d}/val.bin", rng.integers(0, V, a.batch * a.seq + 1))
        _, rss = run([a.frugal, "train", f"--model.preset={a.preset}", "--model.vocab_size=50257",
                      f"--train.seq_len={a.seq}", f"--train.micro_batch={a.batch}",
                      f"--train.steps={total}", f"--train.threads={a.threads}", "--train.lr=3e-4",
                      "--train.warmup_steps=0", "--train.eval_batches=1", "--train.eval_every=0", "--run.checkpoint_every=0",
                      f"--data.train={d}/train.bin", f"--data.val={d}/val.bin", f"--run.dir={d}/run",
                      f"--precision.compute={a.dtype}", f"--memory.recompute={a.recompute}",
                      "--run.log_every=1000"], env)
        with open(f"{d}/run/metrics.jsonl") as f:
            recs = [json.loads(line) for line in f]
        step_s = statistics.median(r["step_ms"] / 1e3 for r in recs[a.warmup_steps:])
        frugal = {"tokens_per_s": a.batch * a.seq / step_s, "step_s_median": step_s, "peak_rss_mib": rss,
                  "activations_mib": max(r["mem_peak"]["activations"] for r in recs) / 2**20}
    ref_script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference",
                              "gpt2_reference.py")
    out, rss = run(["/usr/bin/python3", ref_script, "--bench", "--n-layer", str(L), "--n-head", str(H),
                    "--n-embd", str(C), "--vocab", str(V), "--context", "1024", "--batch", str(a.batch),
                    "--seq", str(a.seq), "--steps", str(a.steps), "--warmup-steps", str(a.warmup_steps),
                    "--threads", str(a.threads), "--dtype", a.dtype]
                   + (["--checkpoint"] if a.torch_checkpoint else []), env)
    torch = json.loads(out.strip().splitlines()[-1])
    torch["peak_rss_mib"] = rss
    print(f"{a.preset} B={a.batch} T={a.seq} {a.dtype}, {a.threads} threads, {a.steps} timed steps after "
          f"{a.warmup_steps}; frugal recompute {a.recompute}, PyTorch checkpoint {'per block' if a.torch_checkpoint else 'off'}")
    for name, r in (("frugal", frugal), ("pytorch", torch)):
        print(f"  {name:8s} {r['tokens_per_s']:8.1f} tokens/s  {r['step_s_median']:7.3f} s/step  "
              f"peak RSS {r['peak_rss_mib']:7.0f} MiB"
          + (f"  (activations {r['activations_mib']:.0f} MiB)" if "activations_mib" in r else ""))
    print(f"  ratio    {frugal['tokens_per_s'] / torch['tokens_per_s']:.2f}x tokens/s, "
          f"{frugal['peak_rss_mib'] / torch['peak_rss_mib']:.2f}x peak RSS")


if __name__ == "__main__":
    main()
