"""The reference for frugal's TensorBoard event files: tensorboard's own reader.

  python tensorboard_check.py RUN_DIR

Loads RUN_DIR's event files with tensorboard's EventAccumulator (as `tensorboard --logdir` does,
dropping what a resumed run replaced) and checks that every scalar of every metrics.jsonl record
is there, at its step, with its value (float32); exits non-zero naming the first difference.
"""
import json
import math
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

run = sys.argv[1]
acc = EventAccumulator(run, size_guidance={"scalars": 0})
acc.Reload()
tags = acc.Tags()["scalars"]
got = {t: {e.step: e.value for e in acc.Scalars(t)} for t in tags}
records = [json.loads(line) for line in open(run + "/metrics.jsonl")]
checked = 0
for r in records:
    want = {k: r[k] for k in ("loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "mfu", "loss_scale") if k in r}
    want.update({"memory_mib/" + k: v / 2**20 for k, v in r["mem_peak"].items()})
    for tag, v in want.items():
        if v is None:
            continue
        have = got.get(tag, {}).get(r["step"])
        if have is None or not math.isclose(have, v, rel_tol=1e-6, abs_tol=1e-30):
            sys.exit(f"{run}: step {r['step']} {tag}: tensorboard has {have}, metrics.jsonl {v}")
        checked += 1
steps = sorted(got["loss"])
if steps != [r["step"] for r in records]:
    sys.exit(f"{run}: tensorboard's loss steps {steps[:5]}... differ from metrics.jsonl's")
print(f"tensorboard: {checked} scalars of {len(records)} steps equal metrics.jsonl")
