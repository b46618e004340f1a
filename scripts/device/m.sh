#!/bin/bash
# medium pair on one H200: the record's code of seed 000 first (its cold compile is the long part), then ours, one run each, cold caches.
set -x
source scripts/device/medium_setup.sh
python3 -m harness compare $REF medium --runs 1 --nproc 1 --data-path /var/tmp/d $SCHED --out $W/mcmp --quiet \
  > $W/compare.log 2>&1
echo "compare rc $?"
date
python3 -m harness cache list >> $W/compare.log 2>&1
touch $W/done
