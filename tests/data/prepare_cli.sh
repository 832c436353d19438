#!/usr/bin/env bash
# frugal prepare from the command line: the same files for 1 and 2 threads; killed (-9) at
# random moments and rerun, the same files again; a full disk (a small tmpfs) stops it with one
# line and no half shard, and a rerun elsewhere resumes from what it left; train refuses a
# corrupt or truncated shard by its name.
# Usage: prepare_cli.sh FRUGAL_BINARY
F=$1
source "$(dirname "$0")/../support/scratch.sh"

# a corpus of many documents: .txt files and .jsonl records (one compressed)
mkdir -p in
/usr/bin/python3 - <<'PY'
import json
for d in range(40):
    with open(f"in/doc{d}.txt", "w") as f:
        f.write("".join(f"Document {d}, line {i}. It was the best of times; ünïcödé 中文.\n" for i in range(2000)))
with open("in/records.jsonl", "w") as f:
    for i in range(3000):
        f.write(json.dumps({"id": i, "text": f"record {i}: " + "words and more words " * (i % 50)}) + "\n")
PY
gzip -k in/records.jsonl && mv in/records.jsonl.gz in/more.jsonl.gz
opts="in --val-fraction 0.05 --seed 4 --shard-tokens 20000"

"$F" prepare $opts --out ref --threads 1 > log 2>&1 || fail "prepare: $(cat log)"
"$F" prepare $opts --out two --threads 2 > log 2>&1 || fail "prepare --threads 2: $(cat log)"
diff -r ref two > /dev/null || fail "1 and 2 threads differ: $(diff -rq ref two | head -3)"
n=$(ls ref/*.bin | wc -l)
[ "$n" -gt 20 ] || fail "expected many shards, got $n"

# killed at random moments, then resumed: the same files
for k in 1 2 3; do
  rm -rf killed
  "$F" prepare $opts --out killed --threads 2 > /dev/null 2>&1 &
  pid=$!
  sleep "0.$((RANDOM % 3))$((RANDOM % 10))"
  kill -9 $pid 2> /dev/null
  wait $pid 2> /dev/null
  "$F" prepare $opts --out killed --threads 2 > log 2>&1 || fail "resume $k: $(cat log)"
  diff -r ref killed > /dev/null || fail "resume $k differs: $(diff -rq ref killed | head -3)"
  echo "kill $k: $(grep -o '([0-9]* already there' log)"
done

# a full disk: one line naming the shard, no temporary or half shard left; resumed elsewhere
full_disk() {
  mkdir -p mnt
  mount -t tmpfs -o size=600k tmpfs mnt || return 77
  "$F" prepare $opts --out mnt/out --threads 2 > full.log 2>&1
  echo "rc $?" >> full.log
  cp -r mnt/out partial
  umount mnt
}
export -f full_disk
export F opts
if unshare -rm bash -c full_disk 2> /dev/null || { [ "$(id -u)" -eq 0 ] && full_disk; }; then
  grep -q "^rc 2$" full.log || fail "full disk: expected exit 2: $(cat full.log)"
  grep -q "^frugal: error: .*mnt/out/[a-z_0-9]*\.[a-z]*: .*No space left on device" full.log ||
    fail "full disk: expected the file and ENOSPC: $(cat full.log)"
  [ "$(grep -c 'frugal: error' full.log)" -eq 1 ] || fail "full disk: more than one error line"
  ls partial/*.tmp > /dev/null 2>&1 && fail "full disk: a temporary was left: $(ls partial)"
  for f in partial/*.bin; do
    [ -e "$f" ] || continue
    cmp -s "$f" "ref/$(basename "$f")" || fail "full disk: $f is not the complete shard"
  done
  "$F" prepare $opts --out partial --threads 2 > log 2>&1 || fail "resume after a full disk: $(cat log)"
  diff -r ref partial > /dev/null || fail "resume after a full disk differs"
  echo "full disk: $(ls partial/*.bin | wc -l) shards, $(grep -o '([0-9]* already there' log)"
else
  echo "full disk: skipped (no tmpfs mount here)"
fi

# train refuses a damaged shard by name
cp -r ref bad
printf '\x01' | dd of=bad/train_003.bin bs=1 seek=3000 conv=notrunc 2> /dev/null
cmp -s bad/train_003.bin ref/train_003.bin && printf '\x02' | dd of=bad/train_003.bin bs=1 seek=3000 conv=notrunc 2> /dev/null
train="train --model.preset=tiny --train.seq_len=64 --train.micro_batch=4 --train.steps=1 --data.train=bad --data.val=bad --run.dir=r"
"$F" $train > log 2>&1 && fail "train ran on a corrupt shard"
grep -q "^frugal: error: bad/train_003.bin: checksum [0-9a-f]*, but the manifest lists" log || fail "corrupt shard: $(cat log)"
cp ref/train_003.bin bad/
truncate -s -100 bad/val_000.bin
"$F" $train > log 2>&1 && fail "train ran on a truncated shard"
grep -q "^frugal: error: bad/val_000.bin: header says" log || fail "truncated shard: $(cat log)"
echo "prepare cli: threads, 3 kills, full disk and damaged shards pass"
