"""Instruction records in a model's chat template: `frugal prepare --format jsonl` against the
reference a fine-tuning user runs, transformers' apply_chat_template with TRL's prompt/completion
rule for the loss mask (tests/reference/pretrained_tokenizers.py chat), on the same records.

  .venv/bin/python bench/instruct_bench.py [--records N] [--template llama3|qwen2] [--threads T]

The tokenizers are tests/reference/pretrained_tokenizers.py's fixtures (byte-level BPE of Llama 3's
and Qwen2's kinds, trained on the KJV; Llama 3.1's and Qwen2.5's templates). Records: a system
message, then two user/assistant turns of KJV words. frugal's time is end to end (read, render,
tokenize, mask, write the shards); the reference's is rendering and tokenizing only, one process.
Both give the same tokens (the counts are compared here; tests/data check them id for id).
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(root, "tests", "reference"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=5000)
    ap.add_argument("--template", default="qwen2", choices=["llama3", "qwen2"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frugal", default=os.path.join(root, "build", "frugal"))
    a = ap.parse_args()
    tmp = tempfile.mkdtemp()
    kjv = subprocess.run("COLUMNS=80 bible 'Genesis 1:1-Revelation 22:21'", shell=True, capture_output=True,
                         text=True, check=True).stdout
    with open(f"{tmp}/kjv.txt", "w") as f:
        f.write(kjv)
    subprocess.run([sys.executable, os.path.join(root, "tests/reference/pretrained_tokenizers.py"), "train",
                    f"{tmp}/kjv.txt", f"{tmp}/fx"], check=True)
    words = kjv.split()
    rng = random.Random(1)
    text = lambda n: " ".join(words[(k := rng.randrange(len(words) - n)):k + n])
    with open(f"{tmp}/records.jsonl", "w") as f:
        for _ in range(a.records):
            f.write(json.dumps({"messages": [
                {"role": "system", "content": text(12)}, {"role": "user", "content": text(40)},
                {"role": "assistant", "content": text(120)}, {"role": "user", "content": text(30)},
                {"role": "assistant", "content": text(100)}]}) + "\n")
    size = os.path.getsize(f"{tmp}/records.jsonl")
    tok_dir = f"{tmp}/fx/{a.template}"

    t = time.time()
    run = subprocess.run(["/usr/bin/time", "-f", "%M", a.frugal, "prepare", "--format", "jsonl", f"{tmp}/records.jsonl", "--tokenizer", tok_dir,
                          "--out", f"{tmp}/shards", "--threads", str(a.threads), "--val-docs", "10"],
                         capture_output=True, text=True, check=True)
    frugal_s = time.time() - t
    out, frugal_rss = run.stdout, int(run.stderr.split()[-1]) / 1024
    line = next(l for l in out.splitlines() if " train + " in l)
    frugal_tokens = int(line.split()[1]) + int(line.split()[4])

    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    t = time.time()
    ref_tokens = 0
    for l in open(f"{tmp}/records.jsonl"):
        msgs = json.loads(l)["messages"]
        render = lambda n, gen: tok.apply_chat_template(msgs[:n], tokenize=False, add_generation_prompt=gen)
        count = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])
        ids = tok(render(len(msgs), False), add_special_tokens=False)["input_ids"]
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                count(render(i, True)), count(render(i + 1, False))
        ref_tokens += len(ids) + 1  # and end of text
    ref_s = time.time() - t
    print(f"{a.records} records ({size / 1e6:.1f} MB), {a.template} template, {frugal_tokens} tokens "
          f"({'the same count' if frugal_tokens == ref_tokens else f'reference {ref_tokens}: DIFFERENT'})")
    print(f"frugal prepare --threads {a.threads}: {frugal_s:.2f} s ({size / 1e6 / frugal_s:.1f} MB/s, end to end), "
          f"peak RSS {frugal_rss:.0f} MiB")
    print(f"transformers apply_chat_template + TRL's rule, 1 process: {ref_s:.2f} s ({size / 1e6 / ref_s:.1f} MB/s)")
    print(f"ratio: {ref_s / frugal_s:.1f}x")
    subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
