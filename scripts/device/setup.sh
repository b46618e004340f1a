# Sourced by the drivers (TRACK=medium or short, medium by default): the proxy data where the reference scripts expect
# it, the harness on the path, the track's proxy schedule and its reference script.
W=/var/tmp/w; D=/var/tmp/d/data/fineweb10B
# the driver's clock, for its steps that run only where the lease still allows them
T_START=$(date +%s)
elapsed() { echo $(( $(date +%s) - T_START )); }
mkdir -p $D
# .carry/p holds the proxy shards as they are (*.bin) or xz-compressed (*.bin.xz: 27 MB in place of 49 MB, so that a
# 22 MB compile-cache archive fits the 64 MiB a call carries beside the checkout)
for f in .carry/p/*.bin; do [ -e "$f" ] && cp "$f" $D/; done
for f in .carry/p/*.bin.xz; do
  [ -e "$f" ] && python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
      "$f" $D/$(basename "$f" .xz)
done
# the reference stops when it runs out of shards: more names for the same two shards
for i in $(seq 3 16); do ln -sf fineweb_train_00000$(( (i % 2) + 1 )).bin $D/$(printf 'fineweb_train_%06d.bin' $i); done
# and of the val shard: the reference's warm-up draws one validation batch (262,144 tokens per GPU) for each of its
# 26 sampled steps from one loader, 6.8 M tokens, more than the proxy's 5 M, and died of StopIteration after 1250 s
# (stop 29). Every validation in its timed loop starts a new loader, so it still reads the first shard only; so does ours.
for i in 1 2 3; do ln -sf fineweb_val_000000.bin $D/fineweb_val_00000$i.bin; done
ls -la $D
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if [ "${TRACK:-medium}" = short ]; then
  SCHED="--env SPEEDRUN_NUM_ITERATIONS=120 --env SPEEDRUN_EXTENSION_ITERATIONS=8 --env SPEEDRUN_VAL_EVERY=40 --env SPEEDRUN_VAL_TOKENS=2097152"
  REF=.carry/ref/short-seed001/train_gpt.py
else
  SCHED="--env SPEEDRUN_NUM_ITERATIONS=48 --env SPEEDRUN_EXTENSION_ITERATIONS=4 --env SPEEDRUN_VAL_EVERY=16 --env SPEEDRUN_VAL_TOKENS=2097152"
  REF=.carry/ref/medium-seed000/train_gpt.py
fi
# The fused cross-entropy kernels on the GPU (about a minute): alone, benchmarked, and inside the compiled short model.
fused_ce_gpu_tests() {
  python3 -m pytest -q -p no:cacheprovider tests/gpu/test_fused_ce_gpu.py \
      "tests/gpu/test_short_gpu.py::test_compiled_model_with_fused_ce_matches_the_plain_loss" \
      --benchmark-json=$W/fused_ce_bench.json > $W/gputests.log 2>&1
  echo "gpu tests rc $? at $(date)" >> $W/gputests.log
}
python3 -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
date
