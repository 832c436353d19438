#!/usr/bin/env bash
# The GPU check, in one call of under 8 minutes on one H100 or H200, the figures that matter
# most first (a device lease may allow only one such call):
#  1. build frugal with FRUGAL_CUDA=ON for this GPU's architecture;
#  2. run the CUDA tests: every op against the CPU backend on the same random inputs, per-dtype
#     tolerances, a short training of the tiny model whose losses must match the CPU's, and the
#     same training twice, bit for bit;
#  3. train gpt2 (124M) in bf16 at T=1024 on the GPU for a few dozen steps (random tokens: speed
#     does not depend on them) and print tokens/s, MFU and peak memory;
#  4. run the PyTorch equivalent on the same GPU (torch.compile, scaled_dot_product_attention,
#     fused AdamW, bf16 autocast, the vocabulary padded to 50,304 as nanoGPT pads it;
#     tests/reference/gpt2_reference.py --bench) for the ratio;
#  5. zero3 and yafsdp on the same GPU against ddp;
#  6. where the time goes: frugal's step per op family (bench/step_profile, synchronised around
#     every op), and its attention per layer against PyTorch's SDPA on the same shape;
#  7. a summary to paste into bench/RESULTS.md;
#  8. while the call is still inside its budget (BUDGET seconds, default 420): the op tests
#     under compute-sanitizer's memcheck, and the shared-memory kernels under its racecheck,
#     where it runs (reported, not fatal).
# Every stage has a time limit, so that a hang costs that stage, not the call; a stage that
# runs out says so. --skip drops stages for a second, shorter call (say, after a fix:
# --skip tests,torch,sanitizers is the build, gpt2, the strategies and the profile).
#
#   bash bench/gpu/check.sh [--batch 16] [--steps 30] [--skip tests,torch,strategies,profile,sanitizers]
#
# Build dependencies: scripts/setup.sh's Debian packages; on a machine without network, the
# .deb files that bench/gpu/fetch_debs.sh downloads elsewhere into .debs/ (unpacked here into
# .deps/). Environment: CUDA_HOME (default /usr/local/cuda), PYTHON (default python3, the one
# with PyTorch), PEAK_BF16 (the GPU's dense bf16 peak for MFU; default 989e12, H100/H200 SXM),
# BUDGET, OUT (a folder: the whole log is also written to $OUT/check.log, for a runner that
# returns only the output's tail).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then exec > >(tee "$OUT/check.log") 2>&1; fi
BATCH=16 STEPS=30 SKIP=""
while [ $# -gt 0 ]; do
  case "$1" in
    --batch) BATCH=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --skip) SKIP=$2; shift 2 ;;
    *) echo "check.sh: unknown argument $1 (expected --batch N, --steps N, --skip LIST)" >&2; exit 2 ;;
  esac
done
for p in ${SKIP//,/ }; do
  case "$p" in tests|torch|strategies|profile|sanitizers) ;;
    *) echo "check.sh: --skip: unknown stage $p (expected tests, torch, strategies, profile, sanitizers)" >&2; exit 2 ;;
  esac
done
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH=$CUDA_HOME/bin:$PATH
PYTHON=${PYTHON:-python3}
PEAK_BF16=${PEAK_BF16:-989e12}
BUDGET=${BUDGET:-420}
T0=$(date +%s)
say() { echo "== [$(($(date +%s) - T0)) s] $*"; }
skipped() { [[ ",$SKIP," == *",$1,"* ]]; }
# limit SECONDS CMD...: CMD, stopped after SECONDS (saying so); its exit status
limit() {
  local s=$1 rc=0
  shift
  timeout --kill-after=10 "$s" "$@" || rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then say "TIMED OUT after $s s: $*"; fi
  return "$rc"
}

gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader | head -1)
arch=$(echo "$gpu" | awk -F', ' '{print $4}' | tr -d '.')
say "GPU: $gpu; nvcc $(nvcc --version | grep -o 'release [0-9.]*')"

cmake_extra=()
if [ -d .debs ]; then
  say "unpacking .debs/ into .deps/"
  mkdir -p .deps
  for f in .debs/*.deb; do  # dpkg where there is one, else the .deb's data member (ar + tar)
    if command -v dpkg >/dev/null; then dpkg -x "$f" .deps
    else t=$(mktemp -d); (cd "$t" && ar x "$OLDPWD/$f") && tar -xf "$t"/data.tar.* -C .deps; rm -rf "$t"; fi
  done
  cmake_extra+=("-DCMAKE_PREFIX_PATH=$PWD/.deps/usr")
  export LD_LIBRARY_PATH=$PWD/.deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
elif ! dpkg -s libdnnl-dev >/dev/null 2>&1; then
  bash scripts/setup.sh
fi

say "build (FRUGAL_CUDA=ON, sm_$arch)"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DFRUGAL_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" "${cmake_extra[@]}" >/dev/null
cmake --build build-gpu -j "$(nproc)" --target frugal frugal_cuda_tests step_profile

tests_ok=skipped
if ! skipped tests; then
  say "CUDA tests (every op against the CPU backend; tiny training against the CPU's losses)"
  tests_ok=passed
  limit 180 env OMP_NUM_THREADS=8 build-gpu/tests/frugal_cuda_tests || tests_ok=FAILED
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" - "$work" "$BATCH" "$STEPS" <<'PY'
import sys, numpy as np
d, B, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def shard(path, n):
    h = np.zeros(256, np.int32); h[:3] = [20240520, 1, n]
    with open(path, "wb") as f:
        f.write(h.tobytes() + np.random.default_rng(0).integers(0, 50257, n).astype(np.uint16).tobytes())
shard(f"{d}/train.bin", (steps + 2) * B * 1024 + 1)
shard(f"{d}/val.bin", B * 1024 + 1)
PY

# the device catalogue's entry (configs/devices.toml: memory, price, MFU for the run's forecast)
case "$gpu" in
  *H200*) dev=h200 ;;
  *H100*) dev=h100-sxm ;;
  *A100*80GB*) dev=a100-80gb ;;
  *) dev=$(echo "$gpu" | cut -d, -f1) ;;
esac
# gpt2 bf16 at T=1024 with strategy $1 for $2 steps (one GPU: the sharded strategies' own
# overheads), within $3 seconds; more flags after those
run_frugal() {
  local strategy=$1 steps=$2 secs=$3
  shift 3
  limit "$secs" build-gpu/frugal train --device.backend=cuda --device.name="$dev" \
    --device.peak_flops_bf16="$PEAK_BF16" --model.preset=gpt2 --model.vocab_size=50257 \
    --precision.compute=bf16 --train.seq_len=1024 --train.micro_batch="$BATCH" --train.steps="$steps" \
    --train.lr=3e-4 --train.warmup_steps=0 --train.eval_every=0 --train.eval_batches=1 \
    --dist.strategy="$strategy" --data.train="$work/train.bin" --data.val="$work/val.bin" \
    --run.dir="$work/run-$strategy" --run.log_every=10 "$@"
}
say "frugal: gpt2 bf16, B=$BATCH T=1024, $STEPS steps (and the checkpoint at the end)"
frugal_ok=1
run_frugal ddp "$STEPS" 180 || frugal_ok=0

if ! skipped torch; then
  # the vocabulary padded to 50,304 as nanoGPT pads it for speed (frugal pads to the same Vp
  # inside and masks the padding)
  say "PyTorch: the same model and batch (torch.compile, SDPA, fused AdamW, bf16 autocast, vocabulary 50304)"
  limit 300 "$PYTHON" tests/reference/gpt2_reference.py --bench --device cuda --sdpa --compile --dtype bf16 \
    --n-layer 12 --n-head 12 --n-embd 768 --vocab 50304 --context 1024 --batch "$BATCH" --seq 1024 \
    --steps 20 --warmup-steps 5 --threads 8 > "$work/torch.out" || true
  tail -1 "$work/torch.out" > "$work/torch.json"
fi

if ! skipped strategies; then
  for s in zero3 yafsdp; do
    say "frugal: the same with --dist.strategy=$s, 15 steps"
    run_frugal $s 15 120 --run.checkpoint_every=0 || frugal_ok=0
  done
fi

if ! skipped profile; then
  say "frugal per op family: gpt2 bf16, B=$BATCH T=1024, 3 steps, synchronised around every op"
  limit 120 build-gpu/bench/step_profile gpt2 "$BATCH" 1024 3 bf16 none cuda > "$work/profile.txt" || true
  cat "$work/profile.txt"
  say "PyTorch SDPA (flash) on one layer's attention: ($BATCH, 12, 1024, 64) bf16, causal"
  limit 90 "$PYTHON" - "$BATCH" > "$work/sdpa.txt" <<'PY' || true
import sys, torch, torch.nn.functional as F
B = int(sys.argv[1])
q, k, v = (torch.randn(B, 12, 1024, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
do = torch.randn_like(q)
def timed(f, n=20):
    for _ in range(3): f()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n): f()
    b.record(); torch.cuda.synchronize()
    return a.elapsed_time(b) / n / 1e3
fwd = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
both = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(do))
print(f"{fwd} {both - fwd}")
PY
  cat "$work/sdpa.txt"
fi

say "summary (paste into bench/RESULTS.md)"
"$PYTHON" - "$work" "$BATCH" "$PEAK_BF16" "$gpu" "$tests_ok" "$frugal_ok" "$SKIP" <<'PY'
import json, statistics, sys, datetime, os
d, B, peak, gpu, tests_ok, frugal_ok = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
skip = sys.argv[7].split(",")
T = 1024
# 6N + 12 L T C FLOPs per token, as frugal's ModelConfig::flops_per_token
flops_tok = 6 * (12 * (12 * 768 * 768 + 13 * 768) + 50257 * 768 + 2 * 768) + 12 * 12 * T * 768
print(f"### GPU check, {datetime.date.today()}, {gpu}")
print(f"command: bash bench/gpu/check.sh --batch {B}{' --skip ' + sys.argv[7] if sys.argv[7] else ''}; gpt2 (124M) bf16, B={B} T={T}, random tokens")
print(f"CUDA tests: {tests_ok}")
fr = None
try:
    recs = [json.loads(l) for l in open(f"{d}/run-ddp/metrics.jsonl")]
    timed = recs[5:] if len(recs) > 8 else recs[1:]
    step_s = statistics.median(r["step_ms"] for r in timed) / 1e3
    fr = B * T / step_s
    mem = max(r["mem_peak"]["total"] for r in recs) / 2**20
    print(f"  frugal   {fr:9.0f} tokens/s  {step_s*1e3:7.1f} ms/step  MFU {100*flops_tok*fr/peak:5.1f}%  "
          f"peak memory {mem:7.0f} MiB (MemoryPool)  loss {recs[0]['loss']:.3f} -> {recs[-1]['loss']:.3f}")
except Exception as e:
    print(f"  frugal   no result ({'run failed' if frugal_ok != '1' else e})")
try:  # what `frugal plan` predicted for that run (summary.json), against what it measured
    sm = json.load(open(f"{d}/run-ddp/summary.json"))
    p, m = sm["predicted"], sm["measured"]
    print(f"  plan     predicted peak {p['memory']['total'] / 2**20:7.0f} MiB, measured {m['mem_peak']['total'] / 2**20:7.0f} MiB; "
          f"predicted {p['tokens_per_s']:9.0f} tokens/s at MFU {100 * p['mfu']:.0f}%, measured {m['tokens_per_s']:9.0f}")
except Exception as e:
    print(f"  plan     no result ({e})")
for s in ("zero3", "yafsdp") if "strategies" not in skip else ():
    try:
        recs = [json.loads(l) for l in open(f"{d}/run-{s}/metrics.jsonl")][5:]
        ms = statistics.median(r["step_ms"] for r in recs)
        print(f"  {s:8s} {B * T / ms * 1e3:9.0f} tokens/s  {ms:7.1f} ms/step" + (f"  {step_s * 1e3 / ms:.3f}x ddp" if fr else ""))
    except Exception as e:
        print(f"  {s:8s} no result ({e})")
try:
    if "torch" in skip: raise RuntimeError("skipped")
    t = json.load(open(f"{d}/torch.json"))
    print(f"  pytorch  {t['tokens_per_s']:9.0f} tokens/s  {t['step_s_median']*1e3:7.1f} ms/step  "
          f"MFU {100*flops_tok*t['tokens_per_s']/peak:5.1f}%  peak memory {t['peak_gpu_mib']:7.0f} MiB "
          f"(max_memory_allocated)  loss {t['loss']:.3f}")
    if fr:
        print(f"  ratio    {fr / t['tokens_per_s']:.2f}x tokens/s (frugal / PyTorch)")
except Exception as e:
    print(f"  pytorch  no result ({e})")
print(f"MFU against {peak/1e12:.0f} TFLOP/s dense bf16; median step time after the warm-up steps")
try:  # one layer's attention: frugal's per-step seconds over 12 layers, SDPA's per call
    if "profile" in skip: raise RuntimeError("skipped")
    prof = {l[:21].strip(): float(l[21:].split()[0]) for l in open(f"{d}/profile.txt") if l.startswith("  ")}
    sf, sb = map(float, open(f"{d}/sdpa.txt").read().split())
    ff, fb = prof["attention fwd"] / 12, prof["attention bwd"] / 12
    print(f"  attention per layer (B={B}, 12 heads, T={T}, HS 64): frugal fwd {ff*1e3:.2f} ms bwd {fb*1e3:.2f} ms; "
          f"SDPA fwd {sf*1e3:.2f} ms bwd {sb*1e3:.2f} ms ({(ff + fb) / (sf + sb):.2f}x SDPA's time)")
    print("  frugal per op family (s/step, synchronised): " +
          ", ".join(f"{k} {v:.4f}" for k, v in prof.items()))
except Exception as e:
    print(f"  per-op profile: no result ({e})")
PY
# Last, while the call is inside its budget: out-of-bounds and misaligned accesses, and races
# in shared memory, where compute-sanitizer runs (not on every runtime); reported, not fatal.
if ! skipped sanitizers && command -v compute-sanitizer >/dev/null; then
  if [ $(($(date +%s) - T0)) -lt "$BUDGET" ]; then
    say "compute-sanitizer memcheck over the op tests (at most 60 s)"
    limit 60 env OMP_NUM_THREADS=8 compute-sanitizer --tool memcheck --error-exitcode 9 \
      build-gpu/tests/frugal_cuda_tests --gtest_filter=-*Training* > "$work/memcheck.txt" 2>&1 || true
    tail -25 "$work/memcheck.txt"
  fi
  if [ $(($(date +%s) - T0)) -lt "$BUDGET" ]; then
    say "compute-sanitizer racecheck over the kernels that share memory between threads (at most 45 s)"
    limit 45 env OMP_NUM_THREADS=8 compute-sanitizer --tool racecheck --error-exitcode 9 build-gpu/tests/frugal_cuda_tests \
      --gtest_filter='CudaAttention*:CudaLayerNorm*:CudaLinear.*:CudaSoftmaxXent*:CudaElementwise*' > "$work/racecheck.txt" 2>&1 || true
    tail -25 "$work/racecheck.txt"
  fi
  [ $(($(date +%s) - T0)) -lt "$BUDGET" ] || say "compute-sanitizer: skipped where past the budget of $BUDGET s"
fi
say "done"
[ "$tests_ok" != FAILED ] && [ "$frugal_ok" = 1 ]
