#!/usr/bin/env bash
# Slurm launches, with the variables srun sets (SLURM_PROCID, SLURM_NTASKS, SLURM_STEP_NUM_TASKS,
# SLURM_LOCALID, SLURM_NODEID) set by hand: a task whose Slurm world disagrees with MPI's (srun
# without PMI support: every task an MPI world of one) ends with one line naming both, before it
# writes anything; a one-task step trains as the plain single process; under mpirun inside an
# allocation (the SLURM_ variables of mpirun's daemons) MPI's world counts. The memory preflight
# counts the ranks srun put on this node (this SLURM_NODEID's entry of SLURM_STEP_TASKS_PER_NODE,
# else SLURM_TASKS_PER_NODE, else SLURM_NTASKS_PER_NODE): a count no host's memory holds is
# refused naming it, another node's entry is not this one's, and a malformed value is one line
# naming the variable and the form expected.
# Usage: slurm_env.sh FRUGAL_BINARY
F=$1
source "$(dirname "$0")/../support/scratch.sh"
A="--model.preset=tiny --train.seq_len=64 --train.micro_batch=2 --train.batch_tokens=256 --train.steps=4 --train.eval_batches=1 --run.log_every=1000 --data.train=data/train_*.bin --data.val=data/val_*.bin"
passed=0
"$F" train $A --run.dir=plain >/dev/null || fail "plain run"

for t in 0 1; do
  out=$(SLURM_JOB_ID=7 SLURM_STEP_ID=0 SLURM_PROCID=$t SLURM_NTASKS=2 SLURM_STEP_NUM_TASKS=2 SLURM_LOCALID=0 SLURM_NODEID=$t \
        timeout 60 "$F" train $A --run.dir=srun$t 2>&1) && fail "srun task $t without PMI: exit 0"
  [ "$out" = "frugal: error: Slurm started this process as task $t of 2 (SLURM_PROCID, SLURM_STEP_NUM_TASKS), but MPI sees rank 0 of 1: launch with \`srun --mpi=pmix frugal ...\` (an OpenMPI built with Slurm/PMIx support) or with \`mpirun frugal ...\` inside the allocation" ] ||
    fail "srun task $t without PMI: $out"
  [ ! -e srun$t ] || fail "srun task $t without PMI: wrote srun$t"
  passed=$((passed + 1))
done

SLURM_JOB_ID=7 SLURM_PROCID=0 SLURM_NTASKS=1 SLURM_LOCALID=0 SLURM_NODEID=0 "$F" train $A --run.dir=one >/dev/null 2>&1 ||
  fail "a one-task Slurm step"
bit_identical one plain 4
passed=$((passed + 1))

out=$(SLURM_JOB_ID=7 SLURM_PROCID=0 SLURM_NTASKS=1 SLURM_STEP_NUM_TASKS=1 mpirun --allow-run-as-root --oversubscribe -np 2 \
      -x SLURM_JOB_ID -x SLURM_PROCID -x SLURM_NTASKS -x SLURM_STEP_NUM_TASKS "$F" train $A --run.dir=mpirun 2>&1) ||
  fail "mpirun inside an allocation: $out"
grep -q "2 ranks (ddp)" <<<"$out" || fail "mpirun inside an allocation: not 2 ranks: $out"
/usr/bin/python3 - <<'PY' || fail "mpirun inside an allocation: losses differ from the single process's"
import json
l = lambda d: [json.loads(x)["loss"] for x in open(d + "/metrics.jsonl")]
a, b = l("plain"), l("mpirun")
assert len(a) == len(b) == 4 and all(abs(x - y) <= 1e-5 * abs(x) for x, y in zip(a, b)), (a, b)
PY
passed=$((passed + 1))
# the preflight under srun: tiny's few MB per rank times a million ranks on this node fits no host
S="SLURM_JOB_ID=7 SLURM_PROCID=0 SLURM_NTASKS=1 SLURM_LOCALID=0"
huge() {  # huge CASE ENV...: refused before step 1, naming a million ranks on this host
  out=$(env $S "${@:2}" timeout 60 "$F" train $A --run.dir=huge 2>&1) && fail "$1: exit 0"
  grep -q "^frugal: error: memory preflight: this run needs .* per rank (.*) x 1000000 ranks on this host, but this host has" <<<"$out" ||
    fail "$1: $out"
  passed=$((passed + 1))
}
huge "SLURM_TASKS_PER_NODE, node 2 of 1(x2),1000000" SLURM_NODEID=2 SLURM_TASKS_PER_NODE="1(x2),1000000"
huge "SLURM_STEP_TASKS_PER_NODE before SLURM_TASKS_PER_NODE" SLURM_NODEID=0 SLURM_STEP_TASKS_PER_NODE=1000000 SLURM_TASKS_PER_NODE=1
huge "SLURM_NTASKS_PER_NODE" SLURM_NODEID=0 SLURM_NTASKS_PER_NODE=1000000
env $S SLURM_NODEID=1 SLURM_TASKS_PER_NODE="1(x2),1000000" "$F" train $A --run.dir=node1 >/dev/null 2>&1 ||
  fail "node 1 of 1(x2),1000000 (1 task) refused"
bit_identical node1 plain 4
passed=$((passed + 1))

# malformed: one line naming the variable and the form expected, non-zero exit, nothing written
bad() {  # bad CASE EXPECTED-LINE ENV...
  out=$(env $S "${@:3}" timeout 60 "$F" train $A --run.dir=bad 2>&1) && fail "$1: exit 0"
  [ "$out" = "frugal: error: $2" ] || fail "$1: $out"
  [ ! -e bad ] || fail "$1: wrote bad"
  passed=$((passed + 1))
}
bad "unclosed (x" 'SLURM_TASKS_PER_NODE = "2(x3": expected Slurm'"'"'s tasks per node, e.g. "2(x3),1" (counts, each optionally followed by (xREPEAT), joined by commas)' \
  SLURM_NODEID=0 SLURM_TASKS_PER_NODE="2(x3"
bad "a bad entry after this node's" 'SLURM_TASKS_PER_NODE = "1(x2),3x": expected Slurm'"'"'s tasks per node, e.g. "2(x3),1" (counts, each optionally followed by (xREPEAT), joined by commas)' \
  SLURM_NODEID=0 SLURM_TASKS_PER_NODE="1(x2),3x"
bad "a word" 'SLURM_STEP_TASKS_PER_NODE = "two": expected Slurm'"'"'s tasks per node, e.g. "2(x3),1" (counts, each optionally followed by (xREPEAT), joined by commas)' \
  SLURM_NODEID=0 SLURM_STEP_TASKS_PER_NODE=two
bad "no entry for the node" 'SLURM_TASKS_PER_NODE = "1(x2)" has no entry for this node (SLURM_NODEID = 2)' \
  SLURM_NODEID=2 SLURM_TASKS_PER_NODE="1(x2)"
bad "no SLURM_NODEID" 'SLURM_NODEID = "": expected a whole number (this node'"'"'s index into SLURM_TASKS_PER_NODE)' \
  SLURM_TASKS_PER_NODE=1
bad "SLURM_NTASKS_PER_NODE = 0" 'SLURM_NTASKS_PER_NODE = "0": expected a positive whole number (srun --ntasks-per-node)' \
  SLURM_NTASKS_PER_NODE=0
echo "slurm env: $passed passed, 0 failed"
