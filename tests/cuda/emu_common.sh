# Sourced by emu_train.sh and emu_train_mpi.sh, with F set to the CPU frugal binary: the scratch
# directory and data of tests/support/scratch.sh, and the loss comparison they share.
source "$(dirname "${BASH_SOURCE[0]}")/../support/scratch.sh"
# the training losses of run directory $1, then its validation losses
losses() {
  python3 -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]
print(" ".join("%.6f" % x for x in [e["loss"] for e in r] + [e["val_loss"] for e in r if "val_loss" in e]))' "$1/metrics.jsonl"
}
# compare NAME REF: run NAME's losses (on the emulated GPU) within 2e-2 of the CPU run REF's
compare() {
  python3 - "$(losses $2)" "$(losses $1)" "$1" <<'PY' || exit 1
import sys
cpu, gpu = [list(map(float, a.split())) for a in sys.argv[1:3]]
bad = [(i + 1, c, g) for i, (c, g) in enumerate(zip(cpu, gpu)) if abs(g - c) > 2e-2 * c]
if len(cpu) < 4 or len(gpu) != len(cpu) or bad:
    sys.exit(f"FAIL: {sys.argv[3]} on cuda: losses {gpu} against the cpu's {cpu}: {bad}")
print(f"{sys.argv[3]}: cuda losses within 2e-2 of the cpu's: {gpu}")
PY
}
