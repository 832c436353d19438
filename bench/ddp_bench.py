#!/usr/bin/env python3
"""Data parallelism on this machine: frugal as 1 rank x 2 threads against 2 ranks x 1 thread
(mpirun) for each strategy, same global batch, same model, in the same run; prints tokens/s,
rank 0's peak memory by category, the time a step waited on communication, pool allocations
per step, and the ratios to the single process and to ddp.

  .venv/bin/python bench/ddp_bench.py [--preset tiny|gpt2] [--batch 8] [--seq 256] [--steps 6]
      [--strategy ddp,zero1,zero2,zero3,yafsdp] [--dtype fp32|bf16] [--reduce fp32|bf16]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np


def write_shard(path, tokens):
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [20240520, 1, len(tokens)]
    with open(path, "wb") as f:
        f.write(header.tobytes() + tokens.astype(np.uint16).tobytes())


def run(cmd, env, rundir):
    if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}")
    with open(f"{rundir}/metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=8, help="global sequences per step")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup-steps", type=int, default=1)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--reduce", default="fp32", help="precision.reduce of the 2-rank runs")
    ap.add_argument("--strategy", default="ddp,zero1,zero2,zero3,yafsdp")
    ap.add_argument("--frugal", default="build/frugal")
    a = ap.parse_args()
    V = 50257 if a.preset.startswith("gpt2") else 257
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    with tempfile.TemporaryDirectory() as d:
        rng = np.random.default_rng(0)
        n = (a.steps + a.warmup_steps + 2) * a.batch * a.seq + 1
        write_shard(f"{d}/train.bin", rng.integers(0, V, n))
        write_shard(f"{d}/val.bin", rng.integers(0, V, 2 * a.batch * a.seq + 1))
        common = [f"--model.preset={a.preset}", f"--train.seq_len={a.seq}", f"--train.steps={a.steps + a.warmup_steps}",
                  "--train.eval_every=0", "--train.eval_batches=1", f"--precision.compute={a.dtype}",
                  f"--data.train={d}/train.bin", f"--data.val={d}/val.bin", "--run.log_every=1000", "--run.checkpoint_every=0",
                  f"--train.batch_tokens={a.batch * a.seq}"]
        single = run([a.frugal, "train", *common, f"--train.micro_batch={a.batch}", "--train.threads=2",
                      f"--run.dir={d}/one"], dict(env, OMP_NUM_THREADS="2"), f"{d}/one")
        runs = {"1 rank x 2 threads": single}
        for st in a.strategy.split(","):
            runs[f"2 ranks x 1 thread {st}"] = run(
                ["mpirun", "-np", "2", "-x", "OMP_NUM_THREADS=1", a.frugal, "train", *common,
                 f"--train.micro_batch={a.batch // 2}", "--train.threads=1", f"--dist.strategy={st}",
                 f"--precision.reduce={a.reduce}",
                 f"--run.dir={d}/{st}"], dict(env, OMP_NUM_THREADS="1"), f"{d}/{st}")
    print(f"{a.preset} {a.dtype} (reduce {a.reduce}), global batch {a.batch} x {a.seq} tokens, median of {a.steps} steps after {a.warmup_steps}")
    tok = {}
    for name, recs in runs.items():
        timed = recs[a.warmup_steps:]
        tok[name] = statistics.median(r["tokens_per_s"] for r in timed)
        wait = statistics.median(r["comm_wait_ms"] for r in timed)
        mem = timed[-1]["mem_peak"]
        allocs = max(r["allocations"] for r in recs[1:])
        peaks = [r["mem_peak"]["total"] for r in recs[1:]]
        print(f"  {name:28s} {tok[name]:8.1f} tok/s  comm wait {wait:7.1f} ms/step  allocs/step <= {allocs:3d}"
              f"  peak total {mem['total'] / 2**20:7.1f} MiB (steps 2+ vary by {(max(peaks) - min(peaks)) / 2**20:.1f} MiB): "
              + ", ".join(f"{k} {v / 2**20:.1f}" for k, v in mem.items() if v and k != "total"))
    base, ddp = tok["1 rank x 2 threads"], tok.get("2 ranks x 1 thread ddp")
    for name, t in list(tok.items())[1:]:
        print(f"  ratio {name.split()[-1]:7s} / single process {t / base:.2f}x" + (f", / ddp {t / ddp:.2f}x" if ddp else ""))


if __name__ == "__main__":
    main()
