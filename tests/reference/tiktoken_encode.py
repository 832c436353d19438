"""The reference for frugal's GPT-2 tokenizer: OpenAI's tiktoken, its encoding r50k_base (GPT-2's)
built offline from the rank file frugal reads and tiktoken's own GPT-2 pattern.

  python tiktoken_encode.py RANKS strings IN.json OUT.json  JSON array of strings -> array of id arrays
  python tiktoken_encode.py RANKS text IN.txt OUT.bin       a UTF-8 text file -> uint32 ids (little-endian)
  python tiktoken_encode.py RANKS decode IN.json OUT.json   array of id arrays -> array of hex strings (the bytes)

Prints the encoding speed in MB of UTF-8 input per CPU second of this process (and wall time).
"""
import json
import sys
import time

import numpy as np
import tiktoken
from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext.openai_public import r50k_pat_str

ranks_path, mode, src, dst = sys.argv[1:5]
enc = tiktoken.Encoding(
    "gpt2", pat_str=r50k_pat_str,
    mergeable_ranks=load_tiktoken_bpe(ranks_path, "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"),
    special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)
t0, c0 = time.perf_counter(), time.process_time()
if mode == "strings":
    strings = json.load(open(src, encoding="utf-8"))
    nbytes = sum(len(s.encode("utf-8")) for s in strings)
    result = enc.encode_ordinary_batch(strings, num_threads=1)
    json.dump(result, open(dst, "w"))
elif mode == "text":
    text = open(src, encoding="utf-8", newline="").read()
    nbytes = len(text.encode("utf-8"))
    np.asarray(enc.encode_ordinary(text), dtype="<u4").tofile(dst)
elif mode == "decode":
    ids = json.load(open(src))
    nbytes = 0
    json.dump([enc.decode_bytes(x).hex() for x in ids], open(dst, "w"))
else:
    sys.exit(f"unknown mode {mode}")
cpu, wall = time.process_time() - c0, time.perf_counter() - t0
print(f"tiktoken {tiktoken.__version__}: {nbytes / 1e6:.2f} MB in {cpu:.3f} s CPU ({wall:.3f} s wall), "
      f"{nbytes / 1e6 / max(cpu, 1e-9):.2f} MB/s")
