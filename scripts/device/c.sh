#!/bin/bash
# Concurrent fill on one H200: the medium pair (record code first, then ours) starts cold; beside it, 20 s later, a
# fill run of ours (cold, its own campaign) puts our compiled graphs in the shared compile cache, so that the
# pair's ours-arm later starts warm and the long part, the record code's cold compile, gets the rest of the lease.
# Our fill finishes long before the record code's warm-up ends, so it never overlaps the pair's timed windows.
# When the fill ends, the fused cross-entropy's GPU test and benchmark run (about a minute, still inside the record
# code's warm-up, so outside both timed windows).
set -x
source scripts/device/medium_setup.sh
( python3 -m harness compare $REF medium --runs 1 --nproc 1 --data-path /var/tmp/d \
    $SCHED --out $W/mcmp --quiet > $W/compare.log 2>&1; echo "compare rc $? at $(date)" >> $W/compare.log ) &
sleep 20
# expandable segments keep the fill's reserved memory near its allocated peak beside the record code's run
python3 -m harness run medium --runs 1 --nproc 1 --data-path /var/tmp/d --env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
    $SCHED --out $W/ofill --quiet > $W/ofill.log 2>&1
echo "fill rc $? at $(date)" >> $W/ofill.log
python3 -m pytest -q -p no:cacheprovider tests/gpu/test_fused_ce_gpu.py --benchmark-json=$W/fused_ce_bench.json > $W/gputests.log 2>&1
echo "gpu tests rc $? at $(date)" >> $W/gputests.log
wait
python3 -m harness cache list >> $W/compare.log 2>&1
touch $W/done
