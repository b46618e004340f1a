#!/usr/bin/env bash
# CI on a GPU node: what `make ci-gpu` and `nix run .#ci-gpu` run (the GitHub workflow gpu.yml calls it).
#   1. the GPU tests, kernel benchmarks included (pytest tests/gpu, pytest-benchmark JSON saved);
#   2. a smoke campaign of the short track: one shortened run on all the node's GPUs;
#   3. a listing of everything written.
# Everything lands under results/: results/ci/<stamp>/ (test report, benchmark JSON, logs, listing) and the
# campaign's own folder results/short/<id>/. Every step runs even if an earlier one failed, so the uploaded
# results are complete; the exit status is non-zero if any step failed.
#
# Settings (environment):
#   PYTHON               the interpreter with torch, triton, pytest-benchmark (default: python3; the Nix app
#                        sets the pinned environment's)
#   CI_NPROC             GPUs for the smoke run (default: every GPU nvidia-smi lists)
#   CI_DATA_PATH         the folder holding data/fineweb10B/ for the smoke run (the runs' DATA_PATH; default:
#                        the checkout, where `speedrun data fineweb` writes)
#   CI_SMOKE_ITERATIONS  scheduled training steps of the smoke run (default 100; the record run has 1535)
#   CI_SMOKE_VAL_TOKENS  validation tokens (default 2097152; must be a multiple of 262144 x GPUs)
# Extra arguments go to `speedrun run`.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

python="${PYTHON:-python3}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
iterations="${CI_SMOKE_ITERATIONS:-100}"
val_tokens="${CI_SMOKE_VAL_TOKENS:-2097152}"

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="results/ci/$stamp"
mkdir -p "$out"

if [[ -n "${CI_NPROC:-}" ]]; then
  nproc="$CI_NPROC"
else
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "error: nvidia-smi not found: ci-gpu runs on an NVIDIA GPU node (set CI_NPROC to skip the GPU count)" >&2
    exit 2
  fi
  if ! nvidia-smi | tee "$out/nvidia-smi.txt"; then
    echo "error: nvidia-smi failed: no usable NVIDIA driver on this node" >&2
    exit 2
  fi
  nproc="$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)"
  if [[ "$nproc" -lt 1 ]]; then
    echo "error: nvidia-smi lists no GPU" >&2
    exit 2
  fi
fi

failed=()

echo "== GPU tests and kernel benchmarks: pytest tests/gpu"
if ! "$python" -m pytest tests/gpu -q -rs -p no:cacheprovider \
  --junitxml="$out/gpu-tests.xml" --benchmark-json="$out/benchmarks.json" 2>&1 | tee "$out/gpu-tests.txt"; then
  failed+=("GPU tests")
fi

echo "== smoke campaign: short track, 1 run on $nproc GPU(s), $iterations steps"
data_args=()
if [[ -n "${CI_DATA_PATH:-}" ]]; then
  data_args=(--data-path "$CI_DATA_PATH")
fi
mkdir -p results/short
declare -A before=()
for dir in results/short/*/; do
  before["$dir"]=1
done
smoke_rc=0
"$python" -m harness run short --runs 1 --nproc "$nproc" --quiet "${data_args[@]}" \
  --env "SPEEDRUN_NUM_ITERATIONS=$iterations" \
  --env "SPEEDRUN_EXTENSION_ITERATIONS=5" \
  --env "SPEEDRUN_VAL_EVERY=$iterations" \
  --env "SPEEDRUN_VAL_TOKENS=$val_tokens" \
  "$@" 2>&1 | tee "$out/smoke-campaign.txt" || smoke_rc=$?
# 4: the run finished but the verdict is FAIL, as it must be for a schedule this short (far above the target)
if [[ "$smoke_rc" -ne 0 && "$smoke_rc" -ne 4 ]]; then
  failed+=("smoke campaign")
fi
campaign=""
for dir in results/short/*/; do
  if [[ -z "${before[$dir]:-}" ]]; then
    campaign="${dir%/}"
  fi
done
if [[ -z "$campaign" ]]; then
  echo "error: the smoke campaign wrote no folder under results/short/" >&2
  failed+=("smoke campaign results")
else
  printf '%s\n' "$campaign" > "$out/campaign-path.txt"
fi

echo "== results"
find "$out" ${campaign:+"$campaign"} -type f -printf '%10s  %p\n' | sort -k2 | tee "$out/listing.txt"

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "ci-gpu: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "ci-gpu: all steps passed"
