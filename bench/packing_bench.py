#!/usr/bin/env python3
"""Whole-record windows under data.document_mask: how much of a window is padding, frugal's best
fit decreasing against TRL's (pack_dataset "bfd", the same algorithm: the window counts must
agree) and against packing the records in file order (what frugal did before).

  .venv/bin/python bench/packing_bench.py [--records N] [--seq 1024,2048] [--frugal build/frugal]

Records of lognormal lengths (tokens with the end of text): "short", median 180 (sigma 0.7:
single-turn instruction data), and "long", median 900 (sigma 0.6: multi-turn chats), each cut
to the window as both frugal and TRL cut. frugal's count is the one its run prints ("N windows").
Steps per epoch go with the windows: fewer windows, proportionally fewer steps for the same
records.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_bench import write_shard  # noqa: E402

import numpy as np  # noqa: E402


def in_order(lengths, cap):  # the earlier packing: whole records in file order, first fit
    windows, room = 0, 0
    for n in lengths:
        if n > room:
            windows, room = windows + 1, cap
        room -= n
    return windows


def trl_bfd(lengths, cap):
    from datasets import Dataset
    from trl import pack_dataset
    rows = pack_dataset(Dataset.from_dict({"input_ids": [[1] * n for n in lengths]}), cap, strategy="bfd",
                        map_kwargs={"batch_size": len(lengths)})
    return len(rows)


def frugal_windows(a, d, lengths, T):
    sep = 256
    tokens = np.concatenate([np.append(np.full(n - 1, 7, dtype=np.int64), sep) for n in lengths])
    write_shard(f"{d}/train.bin", tokens)
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [20240917, 1, len(tokens)]  # a loss mask (src/data/instruct.cpp): every target trained
    with open(f"{d}/train.mask", "wb") as f:
        f.write(header.tobytes() + np.ones(len(tokens), dtype=np.uint8).tobytes())
    with open(f"{d}/frugal_tokenizer.json", "w") as f:
        f.write('{"kind": "byte", "vocab_size": 257}\n')
    out = subprocess.run([a.frugal, "train", "--model.preset=llama-tiny", f"--model.context={T}", f"--train.seq_len={T}",
                          "--train.micro_batch=1", "--train.steps=1", "--train.eval_every=0", "--train.eval_batches=1",
                          "--run.checkpoint_every=0", "--data.document_mask=true", f"--data.train={d}/train.bin",
                          f"--data.val={d}/train.bin", f"--run.dir={d}/run"], capture_output=True, text=True)
    m = re.search(r"\((\d+) windows", out.stdout)
    if not m:
        sys.exit(f"frugal: no window count in its output: {out.stdout[-500:]} {out.stderr[-500:]}")
    return int(m.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--seq", default="1024,2048")
    ap.add_argument("--frugal", default="build/frugal")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    for T in map(int, a.seq.split(",")):
        cap = T + 1
        for name, median, sigma in [("short", 180, 0.7), ("long", 900, 0.6)]:
            lengths = np.clip(rng.lognormal(np.log(median), sigma, a.records).astype(int), 2, None)
            cut = [int(min(n, cap)) for n in lengths]
            with tempfile.TemporaryDirectory() as d:
                ours = frugal_windows(a, d, lengths, T)
            trl, old = trl_bfd(cut, cap), in_order(cut, cap)
            pad = lambda w: 1 - sum(cut) / (w * cap)
            print(f"T={T} {name} (median {median}): {a.records} records, {sum(cut)} tokens: windows frugal {ours} "
                  f"(padding {pad(ours):.1%}), TRL bfd {trl} ({pad(trl):.1%}), in file order {old} ({pad(old):.1%}): "
                  f"{old / ours:.3f}x fewer steps than in file order", flush=True)


if __name__ == "__main__":
    main()
