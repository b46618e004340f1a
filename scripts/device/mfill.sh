#!/bin/bash
# Issue 16, first of two sessions on the one-GPU kind: fill the compile cache of the record's medium code and bring
# it home. Its cold warm-up alone (about 1,700 s on a 16-core H200, stop 29) outlasts what a 1,800 s lease leaves a
# driver, so this session only compiles: the same `speedrun compare` as c.sh's pair (reference first, so it is the
# only arm that starts), cut at FILL_S seconds, then a lean export of the cache to $W/mcache.tar.xz. Copy that to
# .carry/cache/ here; the next session's c.sh imports it from there, the reference's warm-up loads the graphs
# compiled so far from the cache and compiles the rest, and the pair fits.
set -x
FILL_S=${FILL_S:-1420}
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
