"""scripts/ci-gpu.sh (what `make ci-gpu` runs): its steps, arguments, results folder and exit status.

The GPU itself is exercised when the lead runs `make ci-gpu` on an H100; here PYTHON is a small recorder
standing in for the interpreter, so the orchestration (which commands, which arguments, what is listed,
which failures fail the job) is checked on any machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

# Records each call, one line of NUL-free args; plays pytest and the harness as the environment says.
FAKE_PYTHON = r"""#!/usr/bin/env bash
printf '%s|%s\n' "$PWD" "$*" >> "$FAKE_LOG"
if [[ "$1 $2" == "-m pytest" ]]; then
  for a in "$@"; do
    case "$a" in --benchmark-json=*) echo '{"benchmarks": []}' > "${a#--benchmark-json=}" ;; esac
  done
  exit "${FAKE_PYTEST_RC:-0}"
fi
if [[ "$1 $2" == "-m harness" ]]; then
  if [[ -n "${FAKE_CAMPAIGN:-}" ]]; then
    mkdir -p "results/short/$FAKE_CAMPAIGN/runs/0"
    echo '{"status": "complete"}' > "results/short/$FAKE_CAMPAIGN/campaign.json"
    echo '{"status": "ok"}' > "results/short/$FAKE_CAMPAIGN/runs/0/run.json"
  fi
  exit "${FAKE_HARNESS_RC:-0}"
fi
exit 99
"""


@pytest.fixture
def checkout(tmp_path) -> Path:
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "ci-gpu.sh", root / "scripts" / "ci-gpu.sh")
    old = root / "results" / "short" / "20250101-000000-aaaa"
    old.mkdir(parents=True)
    (old / "campaign.json").write_text("{}")
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    return root


def run_ci(checkout: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[tuple[str, str]]]:
    log = checkout.parent / "calls.txt"
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHON": str(checkout.parent / "fake-python"),
            "FAKE_LOG": str(log), "CI_NPROC": "3"}
    full.update(env)
    # run from elsewhere: the script must work from the checkout root by itself
    proc = subprocess.run(["bash", str(checkout / "scripts" / "ci-gpu.sh"), *args], cwd=checkout.parent,
                          env=full, capture_output=True, text=True, timeout=60)
    calls = [tuple(line.split("|", 1)) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


def test_runs_gpu_tests_then_a_smoke_campaign_and_lists_results(checkout):
    proc, calls = run_ci(checkout, "--no-telemetry", FAKE_CAMPAIGN="20261127-010203-beef",
                         CI_DATA_PATH="/data/fineweb")
    assert proc.returncode == 0, proc.stderr
    assert [cwd for cwd, _ in calls] == [str(checkout)] * 2
    pytest_args, harness_args = calls[0][1].split(), calls[1][1].split()
    assert pytest_args[:3] == ["-m", "pytest", "tests/gpu"]
    bench = next(a for a in pytest_args if a.startswith("--benchmark-json="))
    ci_dir = Path(bench.split("=", 1)[1]).parent
    assert ci_dir.parent == Path("results/ci")
    assert harness_args[:8] == ["-m", "harness", "run", "short", "--runs", "1", "--nproc", "3"]
    assert "--data-path" in harness_args and "/data/fineweb" in harness_args
    assert "SPEEDRUN_NUM_ITERATIONS=100" in harness_args and "SPEEDRUN_VAL_TOKENS=2097152" in harness_args
    assert harness_args[-1] == "--no-telemetry"
    ci = checkout / ci_dir
    assert (ci / "campaign-path.txt").read_text().strip() == "results/short/20261127-010203-beef"
    listing = (ci / "listing.txt").read_text()
    assert "results/short/20261127-010203-beef/runs/0/run.json" in listing
    assert f"{ci_dir}/benchmarks.json" in listing
    assert "20250101-000000-aaaa" not in listing  # an older campaign is not this run's result
    assert "ci-gpu: all steps passed" in proc.stdout


def test_smoke_settings_come_from_the_environment(checkout):
    proc, calls = run_ci(checkout, FAKE_CAMPAIGN="c1", CI_SMOKE_ITERATIONS="40", CI_SMOKE_VAL_TOKENS="65536",
                         CI_NPROC="1")
    assert proc.returncode == 0, proc.stderr
    args = calls[1][1].split()
    assert "SPEEDRUN_NUM_ITERATIONS=40" in args and "SPEEDRUN_VAL_EVERY=40" in args
    assert "SPEEDRUN_VAL_TOKENS=65536" in args and args[7] == "1"
    assert "--data-path" not in args


def test_failing_gpu_tests_still_run_the_smoke_campaign_and_fail_the_job(checkout):
    proc, calls = run_ci(checkout, FAKE_CAMPAIGN="c2", FAKE_PYTEST_RC="1")
    assert proc.returncode == 1
    assert len(calls) == 2
    assert "ci-gpu: FAILED: GPU tests" in proc.stderr
    assert (checkout / "results" / "short" / "c2" / "campaign.json").exists()


def test_a_failed_smoke_run_fails_the_job(checkout):
    proc, _ = run_ci(checkout, FAKE_CAMPAIGN="c3", FAKE_HARNESS_RC="3")  # speedrun run: some runs failed
    assert proc.returncode == 1
    assert "ci-gpu: FAILED: smoke campaign" in proc.stderr


def test_a_smoke_run_that_finished_but_misses_the_target_passes_the_job(checkout):
    # exit 4: every run ok, verdict FAIL, which a 100-step schedule always gives; exit 3 (above) fails the job
    proc, _ = run_ci(checkout, FAKE_CAMPAIGN="c4", FAKE_HARNESS_RC="4")
    assert proc.returncode == 0, proc.stderr
    assert "ci-gpu: all steps passed" in proc.stdout


def test_a_campaign_that_writes_nothing_fails_the_job(checkout):
    proc, _ = run_ci(checkout)
    assert proc.returncode == 1
    assert "error: the smoke campaign wrote no folder under results/short/" in proc.stderr


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_without_nvidia_smi_or_ci_nproc_it_stops_with_one_line(checkout):
    proc, calls = run_ci(checkout, CI_NPROC="")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: nvidia-smi not found")
    assert calls == []


def test_gpu_workflow_runs_ci_gpu_on_h100_runners_and_uploads_results():
    text = (REPO / ".github" / "workflows" / "gpu.yml").read_text()
    assert "runs-on: [self-hosted, linux, x64, h100]" in text
    assert "nix run --accept-flake-config .#ci-gpu" in text and "make ci-gpu" in text
    upload = text[text.index("actions/upload-artifact"):]
    assert "path: results/" in upload and "if: always()" in text[text.index("Upload results"):]


def test_cpu_workflow_runs_make_test_with_nix_installed():
    text = (REPO / ".github" / "workflows" / "cpu.yml").read_text()
    assert "apt-get install -y -qq nix-bin" in text
    assert text.rstrip().endswith("make test")


def test_a_failing_nvidia_smi_stops_with_one_line(checkout, tmp_path):
    # a node whose driver is broken: nvidia-smi exists but fails
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver'\nexit 9\n")
    smi.chmod(0o755)
    proc, calls = run_ci(checkout, CI_NPROC="", PATH=f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: nvidia-smi failed: no usable NVIDIA driver on this node"]
    assert calls == []
