#!/bin/bash
# medium pair on one H200: the record's code of seed 000 first (its cold compile is the long part), then ours, one run each, cold caches.
set -x
W=/var/tmp/w; D=/var/tmp/d/data/fineweb10B
mkdir -p $D && cp .carry/p/*.bin $D/
# the reference stops when it runs out of shards: more names for the same two shards
for i in $(seq 3 16); do ln -sf fineweb_train_00000$(( (i % 2) + 1 )).bin $D/$(printf 'fineweb_train_%06d.bin' $i); done
ls -la $D
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)"
nvidia-smi
date
python3 -m harness compare .carry/ref/medium-seed000/train_gpt.py medium --runs 1 --nproc 1 --data-path /var/tmp/d \
  --env SPEEDRUN_NUM_ITERATIONS=48 --env SPEEDRUN_EXTENSION_ITERATIONS=4 --env SPEEDRUN_VAL_EVERY=16 \
  --env SPEEDRUN_VAL_TOKENS=2097152 --out $W/mcmp --quiet > $W/compare.log 2>&1
echo "compare rc $?"
date
python3 -m harness cache list >> $W/compare.log 2>&1
touch $W/done
