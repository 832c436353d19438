"""The reference of bench/prepare_bench.sh: OpenAI's tiktoken (GPT-2's encoding, built offline
from frugal's rank file) over the same documents, encode_ordinary_batch with num_threads.

  python prepare_tiktoken.py RANKS THREADS FILE...         MB/s: the files' bytes / encoding time
  python prepare_tiktoken.py RANKS check SHARD_DIR FILE... frugal's shards of these files (one per
                                                           document) hold tiktoken's ids
Files are read 64 at a time (reading and decoding UTF-8 are not timed).
"""
import glob
import json
import os
import sys
import time

import numpy as np
import tiktoken
from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext.openai_public import r50k_pat_str

ranks, mode = sys.argv[1], sys.argv[2]
enc = tiktoken.Encoding(
    "gpt2", pat_str=r50k_pat_str,
    mergeable_ranks=load_tiktoken_bpe(ranks, "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"),
    special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)


def read(path):
    return open(path, encoding="utf-8", newline="").read()


if mode == "check":
    shard_dir, files = sys.argv[3], sys.argv[4:]
    manifest = json.load(open(os.path.join(shard_dir, "manifest.json")))
    streams = {"train": [], "val": []}
    for s in manifest["shards"]:
        streams[s["split"]].extend(np.fromfile(os.path.join(shard_dir, s["file"]), dtype="<u2", offset=1024).tolist())
    docs = enc.encode_ordinary_batch([read(f) for f in files], num_threads=2)
    # each split is its documents in input order, end of text between them
    got = 0
    for split, stream in streams.items():
        pos = 0
        for d in docs:
            if stream[pos:pos + len(d)] == d:
                pos += len(d)
                got += 1
                if pos < len(stream):
                    assert stream[pos] == 50256, (split, pos)
                    pos += 1
        assert pos == len(stream), f"{split}: {pos} of {len(stream)} tokens matched tiktoken's documents"
    assert got == len(docs), f"{got} of {len(docs)} documents found"
    print(f"same tokens: {len(files)} files, {sum(len(d) for d in docs)} tokens, as tiktoken's")
    sys.exit(0)

threads, files = int(mode), sys.argv[3:]
nbytes, tokens, seconds, cpu = 0, 0, 0.0, 0.0
for i in range(0, len(files), 64):
    texts = [read(f) for f in files[i:i + 64]]
    nbytes += sum(os.path.getsize(f) for f in files[i:i + 64])
    t0, c0 = time.perf_counter(), time.process_time()
    ids = enc.encode_ordinary_batch(texts, num_threads=threads)
    seconds += time.perf_counter() - t0
    cpu += time.process_time() - c0
    tokens += sum(len(x) for x in ids)
print(f"tiktoken {tiktoken.__version__} encode_ordinary_batch num_threads={threads}: {nbytes / 1e6:.0f} MB, "
      f"{tokens} tokens in {seconds:.1f} s wall ({cpu:.1f} s CPU): {nbytes / 1e6 / seconds:.1f} MB/s")
