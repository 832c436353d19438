# Sourced by the shell tests, with F set to the frugal binary: a scratch directory to work in
# (removed on exit), one OpenMP thread per process, fail(), and a small prepared corpus in data/.
set -u
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
export OMP_NUM_THREADS=1
fail() { echo "FAIL: $*"; exit 1; }
printf 'In the beginning was the word %.0s\n' $(seq 1 3000) > corpus.txt
"$F" prepare corpus.txt --out data --val-every 5 >/dev/null || fail "prepare"

# bit_identical RUN REF N: RUN's N losses and its final weights are REF's, bit for bit
bit_identical() {
  /usr/bin/python3 - "$1" "$2" "$3" <<'PY' || fail "$1: losses differ from $2's"
import json, sys
def losses(d):
    return [json.loads(l)["loss"] for l in open(d + "/metrics.jsonl")]
b, a, n = losses(sys.argv[1]), losses(sys.argv[2]), int(sys.argv[3])
assert len(a) == len(b) == n, (len(a), len(b))
assert a == b, [i + 1 for i in range(n) if a[i] != b[i]][:5]
PY
  cmp -s "$1/model.safetensors" "$2/model.safetensors" || fail "$1: final weights differ from $2's"
}
