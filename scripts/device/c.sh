#!/bin/bash
# The medium pair (record code first, then ours, one run each) with a concurrent fill of our compile cache.
# The pair starts cold; 20 s later a fill run of ours (cold, its own campaign, the same compile-cache key) puts our
# compiled graphs in the shared cache, so the pair's ours-arm later starts warm and the record code's cold warm-up,
# the long part (CPU-bound compile and autotune: 19 of its 26 sampled steps took 1228 s on a 16-core H200), gets
# the rest of the lease. With two GPUs the fill and the GPU tests run on GPU 1, and the pair has GPU 0 to itself;
# with one they share it (the fill ends long before the record code's timed window, but its compile takes CPUs).
set -x
source scripts/device/setup.sh  # TRACK unset: medium
# the compile cache an earlier session's mfill.sh exported (carried as .carry/cache): the reference's warm-up then
# compiles only what that session did not reach
if [ -e .carry/cache/mcache.tar.xz ]; then
  python3 -m harness cache import .carry/cache/mcache.tar.xz > $W/cache_import.log 2>&1
fi
GPUS=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
PAIR_GPU=""; SIDE_GPU=""
if [ "$GPUS" -ge 2 ]; then PAIR_GPU="--env CUDA_VISIBLE_DEVICES=0"; SIDE_GPU="--env CUDA_VISIBLE_DEVICES=1"; fi
( python3 -m harness compare $REF medium --runs 1 --nproc 1 --data-path /var/tmp/d $PAIR_GPU \
    $SCHED --out $W/mcmp --quiet > $W/compare.log 2>&1; echo "compare rc $? at $(date)" >> $W/compare.log ) &
sleep 20
# expandable segments keep the fill's reserved memory near its allocated peak beside the record code's run
python3 -m harness run medium --runs 1 --nproc 1 --data-path /var/tmp/d $SIDE_GPU \
    --env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True $SCHED --out $W/ofill --quiet > $W/ofill.log 2>&1
echo "fill rc $? at $(date)" >> $W/ofill.log
[ "$GPUS" -ge 2 ] && export CUDA_VISIBLE_DEVICES=1
fused_ce_gpu_tests
unset CUDA_VISIBLE_DEVICES
wait
python3 -m harness cache list >> $W/compare.log 2>&1
touch $W/done
