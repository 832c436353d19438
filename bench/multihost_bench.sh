#!/usr/bin/env bash
# The plan's network model against a measured link: 2 "hosts" (network namespaces, tests/dist/netns.sh),
# one rank each, their link throttled with tc tbf to each RATE; a model whose gradients dominate
# the step (configs/small.toml's 10.9M GPT-2, fp32, micro-batch 1 x 64 tokens per rank). For ddp,
# zero2 and zero3, the median step time measured (steps 2..STEPS) against `frugal plan`'s, with a
# catalogue entry whose network_bandwidth is the link's rate and whose MFU is calibrated on the
# single process at the same per-rank batch, measured in the same run; exposed communication
# measured = the 2-host step - the single process's step, predicted = the plan's exposed_comm_s.
# Each "host" has one CPU of this machine (netns_mpirun: host i's rank on CPU i, one OpenMP thread),
# and the single process runs as one host would: one thread on one CPU.
# Needs root. Usage: flock /tmp/frugal-cpu.lock bench/multihost_bench.sh [FRUGAL] [RATES] [STEPS]
F=$(realpath "${1:-build/frugal}")
rates=${2:-"1gbit 5gbit"}
steps=${3:-8}
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/tests/support/scratch.sh"
source "$root/tests/dist/netns.sh"
netns_up 2
A="--config=$root/configs/small.toml --precision.compute=fp32 --train.seq_len=64 --train.micro_batch=1 --train.steps=$steps --train.eval_every=0 --train.eval_batches=1 --run.log_every=1000 --run.checkpoint_every=0 --data.train=data/train_*.bin --data.val=data/val_*.bin"
median() { /usr/bin/python3 -c "import json,statistics,sys; r=[json.loads(l) for l in open(sys.argv[1]+'/metrics.jsonl')][1:]; print(statistics.median(x[sys.argv[2]] for x in r) / 1e3)" "$@"; }

taskset -c "${FRUGAL_NETNS_CPUS%% *}" "$F" train $A --train.batch_tokens=64 --run.dir=one >/dev/null || fail "single process"
one=$(median one step_ms)
"$F" plan --calibrate one --json > cal.json || fail "calibrate"
# the MFU is against the peaks of the run's device (this CPU's catalogue entry): the hosts' entry is a copy of it
read -r mfu dev < <(/usr/bin/python3 -c "import json; c = json.load(open('cal.json')); print(c['mfu'], c['device'])")
printf "single process: %.1f ms/step, MFU %.1f%%\n" "$(bc -l <<<"$one * 1000")" "$(bc -l <<<"$mfu * 100")"
printf "%-7s %-7s %9s %9s %7s %11s %11s %7s %11s\n" rate strategy "pred ms" "meas ms" "error" "pred exp ms" "meas exp ms" error "comm_wait"
for rate in $rates; do
  netns_rate "$rate"
  bps=$(/usr/bin/python3 -c "import sys; r=sys.argv[1]; print(float(r[:-4]) * {'g':1e9,'m':1e6}[r[-4]] / 8)" "$rate")
  sed -n "/^\[devices.$dev\]/,/^backend/p" "$root/configs/devices.toml" |
    sed "s/^\[devices.$dev\]/[devices.veth]/; s/^node_size.*/node_size = 1/; s/^network_bandwidth.*/network_bandwidth = $bps/" > devices.toml
  for s in ddp zero2 zero3; do
    netns_mpirun 2 ${MPI_ARGS:-} "$F" train $A --train.batch_tokens=128 --dist.strategy=$s --run.dir=$s-$rate >/dev/null 2>&1 || fail "$s at $rate"
    meas=$(median $s-$rate step_ms)
    wait_s=$(median $s-$rate comm_wait_ms)
    "$F" plan --config=$root/configs/small.toml --catalogue devices.toml --device veth --devices 2 --strategy $s --precision fp32 \
      --recompute none --micro-batch 1 --seq-len 64 --batch-tokens 128 --tokens 1e6 --mfu "$mfu" --json > plan.json || fail "plan"
    /usr/bin/python3 - "$rate" "$s" "$meas" "$one" "$wait_s" <<'PY'
import json, sys
rate, s, meas, one, wait_s = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
p = json.load(open("plan.json"))
p = p[0] if isinstance(p, list) else p
pe, me = p["exposed_comm_s"], meas - one
print(f"{rate:<7} {s:<7} {1e3*p['step_s']:9.1f} {1e3*meas:9.1f} {100*(p['step_s']/meas-1):+6.1f}% {1e3*pe:11.1f} {1e3*me:11.1f} {100*(pe/me-1):+6.1f}% {1e3*wait_s:11.1f}")
PY
  done
done
