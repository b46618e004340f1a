#!/bin/bash
# Issue 16, first of two sessions on the one-GPU kind: fill the compile cache of the record's medium code and bring
# it home. Its cold warm-up (1,319 s on 2026-12-03, one H200, 16 cores) and timed run (1,472 s in all) leave a
# 1,800 s lease no room for ours, so this session only compiles: the same `speedrun compare` as c.sh's pair
# (reference first), cut at FILL_S seconds, then a lean export of the cache to $W/mcache.tar.xz (20.7 MiB on
# 2026-12-03; poll.sh ships it in parts). Copy it to .carry/cache/ here; the next session's c.sh imports the record
# code's folder from it. On 2026-12-03 it ran with FILL_S=1700 and the last call stopped the compare itself once the
# record code's run had ended (`pkill -TERM -f "^[p]ython3 -m harness compare"`, at 1,540 s), with 120 s to spare.
set -x
FILL_S=${FILL_S:-1520}  # the record code's run ended at about 1,480 s of its compare on 2026-12-03
source scripts/device/setup.sh  # TRACK unset: medium
timeout -s TERM $FILL_S python3 -m harness compare $REF medium --runs 1 --nproc 1 --data-path /var/tmp/d $SCHED \
  --out $W/mfill --quiet > $W/fill.log 2>&1
echo "fill rc $? at $(date)" >> $W/fill.log
# the harness stops its run group on SIGTERM; make sure nothing still writes to the cache before it is archived
sleep 10; pkill -f "[t]orch.distributed.run" ; sleep 5
python3 -m harness cache list >> $W/fill.log 2>&1
python3 -m harness cache export --lean --out $W/mcache.tar.xz >> $W/fill.log 2>&1
echo "export rc $? at $(date)" >> $W/fill.log
ls -la $W/mcache.tar.xz* >> $W/fill.log 2>&1
touch $W/done
