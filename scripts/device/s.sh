#!/bin/bash
# The short track against the record's code of seed 001 on one GPU (issue 17): `speedrun compare` interleaved
# A B B A B A, 3 runs per arm, the 120 + 8 step proxy schedule, cold caches (the first run of each arm compiles),
# then `speedrun profile` of step 46 (stage s1) of each, warm. About 1,500 s by the stop-25/26 timings (reference
# cold warm-up ~400 s, ours ~270 s, ~150 s a warm run): three or four chained calls.
set -x
TRACK=short source scripts/device/setup.sh
fused_ce_gpu_tests  # first: about a minute
python3 -m harness compare $REF short --runs 3 --nproc 1 --data-path /var/tmp/d $SCHED --out $W/scmp --quiet \
  > $W/compare.log 2>&1
echo "compare rc $? at $(date)" >> $W/compare.log
python3 -m harness profile $REF short --step 45 --nproc 1 --data-path /var/tmp/d $SCHED --out $W/sprof \
  > $W/profile.log 2>&1
echo "profile rc $? at $(date)" >> $W/profile.log
python3 -m harness cache list >> $W/compare.log 2>&1
touch $W/done
