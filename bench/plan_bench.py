#!/usr/bin/env python3
"""The plan against measured runs on this machine: train a model at several micro-batches, in
rounds of back-to-back runs (so that a round's runs share the machine's load); each round
calibrates the MFU on its first micro-batch and predicts the others' median step time; prints
the median over rounds of predicted and measured step time, and predicted vs measured memory.

    .venv/bin/python bench/plan_bench.py [--preset mini] [--seq 128] [--batches 4,8,16]
        [--steps 6] [--rounds 3] [--threads 1] [--precision fp32] [--docs N]

--docs N: the KJV cut into documents of about N bytes, trained with data.document_mask and
without; each round calibrates the MFU on the unmasked run and predicts the masked one's step
time from `plan -c` of its config (attention over the documents) and of the unmasked config
(attention over whole windows, as the plan counted before 2026-12-05), on the first micro-batch.
"""
import argparse, array, glob, json, os, statistics, subprocess, sys, tempfile

ap = argparse.ArgumentParser()
ap.add_argument("--frugal", default="build/frugal")
ap.add_argument("--preset", default="mini")
ap.add_argument("--seq", type=int, default=128)
ap.add_argument("--batches", default="4,8,16")
ap.add_argument("--steps", type=int, default=6)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--precision", default="fp32")
ap.add_argument("--docs", type=int, default=0)
a = ap.parse_args()
batches = [int(b) for b in a.batches.split(",")]
frugal = os.path.abspath(a.frugal)

with tempfile.TemporaryDirectory() as d:
    run = lambda *args: subprocess.run([frugal, *args], cwd=d, check=True, capture_output=True, text=True).stdout
    run("prepare", "--out", "data")
    if a.docs:
        text = bytearray()
        for f in sorted(glob.glob(os.path.join(d, "data/train_*.bin"))):
            t = array.array("H")
            t.frombytes(open(f, "rb").read()[1024:])  # after the shard's header; byte-level ids
            text += bytes(x for x in t if x < 256)
        with open(os.path.join(d, "docs.jsonl"), "w") as f:
            i = 0
            while i < len(text):  # documents of ~N bytes, cut at a space
                j = text.find(b" ", i + a.docs)
                j = len(text) if j < 0 else j
                f.write(json.dumps({"text": text[i:j].decode("utf-8", "replace")}) + "\n")
                i = j + 1
        run("prepare", "docs.jsonl", "--out", "docs")
        b, res = batches[0], {k: [] for k in ("meas", "span", "whole", "mfu_u", "mfu_m", "S")}
        for r in range(a.rounds):
            for mask in ("false", "true"):
                run("train", f"--model.preset={a.preset}", f"--train.seq_len={a.seq}", f"--train.micro_batch={b}",
                    f"--train.steps={a.steps}", "--train.eval_every=0", "--train.eval_batches=1",
                    f"--train.threads={a.threads}", f"--precision.compute={a.precision}", "--run.log_every=1000",
                    "--run.checkpoint_every=0", "--data.train=docs", f"--data.document_mask={mask}", f"--run.dir=m{mask}{r}")
            cal = json.loads(run("plan", "--calibrate", f"mfalse{r}", "--json"))
            res["mfu_u"].append(cal["mfu"])
            recs = [json.loads(l) for l in open(os.path.join(d, f"mtrue{r}", "metrics.jsonl"))][1:]
            res["meas"].append(statistics.median(x["step_ms"] for x in recs) / 1e3)
            res["mfu_m"].append(statistics.median(x["mfu"] for x in recs))
            res["S"].append(statistics.median(x["attention_span"] for x in recs))
            for key, cfg in (("span", f"mtrue{r}"), ("whole", f"mfalse{r}")):
                res[key].append(json.loads(run(
                    "plan", "-c", f"{cfg}/config.toml", "--micro-batch", str(b), "--devices", "1", "--device", cal["device"],
                    "--strategy", "ddp", "--precision", a.precision, "--recompute", "none", "--tokens", "1e6",
                    "--mfu", str(cal["mfu"]), "--json"))["step_s"])
        med = statistics.median
        print(f"{a.preset} T={a.seq} B={b} {a.precision}, {a.threads} threads, {a.steps} steps x {a.rounds} rounds; "
              f"KJV in documents of ~{a.docs} bytes: attention span S {med(res['S']):.1f} of {a.seq} (metrics, median)")
        print(f"  masked step measured {1e3 * med(res['meas']):.0f} ms; predicted from the unmasked run's MFU "
              f"({100 * med(res['mfu_u']):.1f}%): over the documents {1e3 * med(res['span']):.0f} ms "
              f"({med([p / m for p, m in zip(res['span'], res['meas'])]):.3f}x), over whole windows "
              f"{1e3 * med(res['whole']):.0f} ms ({med([p / m for p, m in zip(res['whole'], res['meas'])]):.3f}x)")
        print(f"  MFU reported by the masked run {100 * med(res['mfu_m']):.1f}%, by the unmasked run "
              f"{100 * med(res['mfu_u']):.1f}%")
        sys.exit(0)
    plan = lambda b, mfu, device: json.loads(run(
        "plan", "--preset", a.preset, "--seq-len", str(a.seq), "--micro-batch", str(b), "--devices", "1",
        "--device", device, "--strategy", "ddp", "--precision", a.precision, "--recompute", "none",
        "--tokens", "1e6", "--mfu", str(mfu), "--json"))
    pred, meas, mfus, peak, mem = {b: [] for b in batches}, {b: [] for b in batches}, [], {}, {}
    for r in range(a.rounds):
        for b in batches:
            rd = f"r{b}_{r}"
            run("train", f"--model.preset={a.preset}", f"--train.seq_len={a.seq}", f"--train.micro_batch={b}",
                f"--train.steps={a.steps}", "--train.eval_every=0", "--train.eval_batches=1",
                f"--train.threads={a.threads}", f"--precision.compute={a.precision}", "--run.log_every=1000",
                "--data.train=data/train_*.bin", "--data.val=data/val_*.bin", f"--run.dir={rd}")
            meas[b].append(json.loads(run("plan", "--calibrate", rd, "--json"))["step_s"])
            recs = [json.loads(l) for l in open(os.path.join(d, rd, "metrics.jsonl"))]
            peak[b] = max(x["mem_peak"]["total"] for x in recs)
        cal = json.loads(open(os.path.join(d, f"r{batches[0]}_{r}", "calibration.json")).read())
        mfu = cal["mfu"]  # against the peaks of the run's device: this CPU's catalogue entry
        mfus.append(mfu)
        for b in batches:
            p = plan(b, mfu, cal["device"])
            pred[b].append(p["step_s"])
            mem[b] = p["memory"]["total"]
    med = statistics.median
    print(f"{a.preset} T={a.seq} {a.precision}, {a.threads} threads, {a.steps} steps x {a.rounds} rounds; "
          f"MFU calibrated on micro-batch {batches[0]} per round: median {100 * med(mfus):.1f}%")
    print(f"{'B':>4} {'pred ms':>9} {'meas ms':>9} {'pred/meas':>10} {'pred MiB':>9} {'meas MiB':>9}")
    for b in batches:
        ratio = med([p / m for p, m in zip(pred[b], meas[b])])
        print(f"{b:>4} {1e3 * med(pred[b]):>9.1f} {1e3 * med(meas[b]):>9.1f} {ratio:>10.3f} "
              f"{mem[b] / 2**20:>9.2f} {peak[b] / 2**20:>9.2f}")
