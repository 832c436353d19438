"""The corpus of bench/prepare_bench.sh: text files of about 4 MB, each the KJV's verses in an
order drawn by the file's seed with every tenth line random Unicode (Latin, Greek, Cyrillic,
CJK, Arabic, emoji; words of 1-12 characters), until TOTAL bytes.

  python prepare_corpus.py KJV.txt OUT_DIR TOTAL_BYTES
"""
import os
import random
import sys

kjv_path, out, total = sys.argv[1], sys.argv[2], int(float(sys.argv[3]))
verses = open(kjv_path, encoding="utf-8").read().splitlines(keepends=True)
ranges = [(0x41, 0x7A), (0xC0, 0x24F), (0x391, 0x3C9), (0x410, 0x44F), (0x4E00, 0x9FFF), (0x627, 0x64A),
          (0x1F600, 0x1F64F), (0x30, 0x39)]
os.makedirs(out, exist_ok=True)
written, n = 0, 0
while written < total:
    rng = random.Random(n)
    order = verses[:]
    rng.shuffle(order)
    lines = []
    for i, v in enumerate(order):
        if i % 10 == 9:
            words = []
            for _ in range(rng.randint(3, 15)):
                lo, hi = rng.choice(ranges)
                words.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 12))))
            lines.append(" ".join(words) + ".\n")
        else:
            lines.append(v)
    data = "".join(lines).encode("utf-8")
    with open(os.path.join(out, f"part{n:04d}.txt"), "wb") as f:
        f.write(data)
    written += len(data)
    n += 1
print(f"{n} files, {written / 1e9:.2f} GB in {out}")
