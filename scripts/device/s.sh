#!/bin/bash
# The short track against the record's code of seed 001 on one GPU (issue 17): the fused-CE GPU tests and benchmarks
# first (alone on the GPU; FUSED_CE_TESTS=0 skips them), then `speedrun compare` interleaved (A B B A A B), 3 runs per
# arm, the 120 + 8 step proxy schedule, cold caches (the first run of each arm compiles), with EARLY_GPU_TESTS=1 the
# short- and medium-track GPU tests beside the reference's cold compile, then where the lease still allows
# `speedrun profile` of step 46 (stage s1) of both arms, warm. Three chained calls: 1,500 s on 2026-12-03 before the
# cast tests were added, 1,512 s with them (the compare ended at 1,511 s, so nothing after it ran).
set -x
TRACK=short source scripts/device/setup.sh
# FUSED_CE_TESTS=0: the code's fused-CE tests already passed on the device (27 passed on 2026-12-03 at the fused
# head, the code unchanged since 96a250d), so the campaign runs the track's defaults and those 206 s go to the
# profile instead
if [ "${FUSED_CE_TESTS:-1}" = 1 ]; then
fused_ce_gpu_tests  # 206 s on 2026-12-03 (173 s before the cast tests and benchmarks were added)
# The kernel the campaign runs: the track's one-pass default where its GPU tests passed and its compiled benchmark
# (with the FP8 head's cast consuming the gradient) is no slower than the two-pass kernel's; else the two-pass one;
# the plain Inductor loss where neither passed or nothing was benchmarked. With the one-pass kernel, the fused head
# (the track's default) where it passed and was faster, else SPEEDRUN_FUSED_HEAD=0.
KERNEL_ENV=$(python3 - $W <<'PY'
import json, re, sys
w = sys.argv[1]
failed = re.findall(r"^FAILED (\S+)", open(f"{w}/gputests.log").read(), re.M)
def ok(tag):
    return not any(tag in f for f in failed)
try:
    bench = {b["name"]: b["stats"]["median"] for b in json.load(open(f"{w}/fused_ce_bench.json"))["benchmarks"]}
except (OSError, ValueError, KeyError):
    bench = {}
one = bench.get("test_bench_compiled_with_an_fp8_consumer[SoftcappedMTPCrossEntropyOnePass]")
two = bench.get("test_bench_compiled_with_an_fp8_consumer[SoftcappedMTPCrossEntropy]")
one_ok = ok("OnePass") and ok("one_pass-False]") and one is not None  # the fused head has its own check
two_ok = ok("SoftcappedMTPCrossEntropy]") and ok("two_pass") and two is not None
# the fused head (the head's e5m2 gradient cast in our kernel) on top of the one-pass kernel where its
# checks passed and its compiled head + loss benchmark beat Inductor's cast
head_one = bench.get("test_bench_fp8_head_and_loss_compiled[one_function]")
head_two = bench.get("test_bench_fp8_head_and_loss_compiled[two_functions]")
head_ok = (ok("one_pass-True]") and ok("e5m2_cast_bit_for_bit") and ok("fp8_head_and_loss")
           and None not in (head_one, head_two) and head_one < head_two)
if one_ok and (not two_ok or one <= two):
    print("" if head_ok else "--env SPEEDRUN_FUSED_HEAD=0")  # the track's default since 2026-12-03
elif two_ok:
    print("--env SPEEDRUN_FUSED_CE_KERNEL=two_pass")
else:
    print("--env SPEEDRUN_FUSED_CE=0")
print(f"kernel choice: failed={failed} one={one} two={two} head one/two={head_one}/{head_two}", file=sys.stderr)
PY
)
echo "KERNEL_ENV=[$KERNEL_ENV]" | tee $W/kernel_choice.txt
else
  KERNEL_ENV=""
fi
# seeds 0-2 ran twice on 2026-12-03 (our losses repeat at a seed): a campaign to pool with those takes new ones
python3 -m harness compare $REF short --runs 3 --nproc 1 --data-path /var/tmp/d $SCHED $KERNEL_ENV --out $W/scmp \
  --seed-base ${SEED_BASE:-3} --quiet > $W/compare.log 2>&1 &
CMP=$!
# EARLY_GPU_TESTS=1: the short-track GPU tests (then the medium ones) beside the reference's cold compile, the first
# run of the compare (287-399 s on 2026-12-03, CPU-bound, 7 % GPU use), each stopped at EARLY_S (default 240) s after
# the compare started or as the reference ends its warm-up ("Resetting Model", else its first step line), whichever
# comes first: its cold compile time is then no clean figure, its timed window and every run after it are. (On
# 2026-12-03 a fixed 290 s cut stopped the medium tests 1.4 s before the reference's first timed step.)
early() {
  "$@" & local t=$!
  while kill -0 $t 2>/dev/null; do
    if [ $(elapsed) -ge $DEADLINE ] || grep -qsE "^(Resetting Model|step:0/)" $W/scmp/runs/0/output.txt; then
      kill -TERM $t; echo "stopped at elapsed $(elapsed)"; break
    fi
    sleep 1
  done
  wait $t
}
if [ "${EARLY_GPU_TESTS:-0}" = 1 ]; then
  DEADLINE=$(( $(elapsed) + ${EARLY_S:-240} ))
  early python3 -m pytest -q -p no:cacheprovider tests/gpu/test_short_gpu.py > $W/shortgpu.log 2>&1
  echo "short gpu tests rc $? at $(date), elapsed $(elapsed)" >> $W/shortgpu.log
  if [ $(( DEADLINE - $(elapsed) )) -gt 20 ]; then
    early python3 -m pytest -q -p no:cacheprovider tests/gpu/test_medium_gpu.py > $W/mediumgpu.log 2>&1
    echo "medium gpu tests rc $? at $(date), elapsed $(elapsed)" >> $W/mediumgpu.log
  fi
fi
wait $CMP
echo "compare rc $? at $(date), elapsed $(elapsed)" >> $W/compare.log
# What is left of the lease (the driver may run about 1,650 s of an 1,800 s budget: the machine's start takes the
# rest): `speedrun profile` of step 46 (s1) of both arms, warm from the compare (about 280 s: each run goes on to
# its end), or of ours alone where only that fits; then the short-track GPU tests if they did not run early.
if [ $(elapsed) -lt 1380 ]; then
  python3 -m harness profile $REF short --step 45 --nproc 1 --data-path /var/tmp/d $SCHED $KERNEL_ENV --out $W/sprof \
    > $W/profile.log 2>&1
  echo "profile (both arms) rc $? at $(date), elapsed $(elapsed)" >> $W/profile.log
elif [ $(elapsed) -lt 1500 ]; then
  python3 -m harness profile short --step 45 --nproc 1 --data-path /var/tmp/d $SCHED $KERNEL_ENV --out $W/sprof \
    > $W/profile.log 2>&1
  echo "profile (ours) rc $? at $(date), elapsed $(elapsed)" >> $W/profile.log
fi
if [ ! -e $W/shortgpu.log ] && [ $(elapsed) -lt 1450 ]; then
  timeout $(( 1600 - $(elapsed) )) python3 -m pytest -q -p no:cacheprovider tests/gpu/test_short_gpu.py \
    --deselect "tests/gpu/test_short_gpu.py::test_compiled_model_with_fused_ce_matches_the_plain_loss" \
    > $W/shortgpu.log 2>&1
  echo "short gpu tests rc $? at $(date)" >> $W/shortgpu.log
fi
python3 -m harness cache list >> $W/compare.log 2>&1
touch $W/done
