"""Telemetry on CPU: summaries, outliers and the record.md table from real H100 traces
(tests/fixtures/telemetry, see its README), and the sampler process's life cycle against a stand-in NVML."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from harness.telemetry import (
    SamplerHandle,
    campaign_outliers,
    load_trace,
    nvml_available,
    start_sampler,
    summarize_run,
    telemetry_markdown,
)

FIX = Path(__file__).parent / "fixtures" / "telemetry"
FAKE_NVML = Path(__file__).parent / "fake_nvml"
REPO = Path(__file__).resolve().parent.parent


def window(name: str) -> tuple[float, float]:
    return tuple(json.loads((FIX / name / "run.json").read_text())["timed_window_unix"])


@pytest.fixture
def runs(tmp_path) -> Path:
    """A writable copy of the fixture runs (summarize_run writes telemetry.npz next to the CSV)."""
    dst = tmp_path / "runs"
    shutil.copytree(FIX, dst, ignore=shutil.ignore_patterns("README.md", "x2_*"))  # x2_*: test_telemetry_multigpu
    return dst


def summaries(runs: Path, names: list[str]) -> list[tuple[str, dict]]:
    return [(n, summarize_run(runs / n, window(n))) for n in names]


# --- per-run summary -------------------------------------------------------------------------------------


def test_power_capped_matmul_window(runs):
    s = summarize_run(runs / "matmul", window("matmul"))
    g = s["per_gpu"]["0"]
    assert s["gpu_names"] == ["NVIDIA H100 80GB HBM3"] and s["power_limits_w"] == [700.0]
    # Sustained bf16 GEMM on an H100: power-capped the whole window, clock pulled far below its 1980 max.
    assert 1300 < s["sm_clock_mean_mhz"] < 1450
    assert s["sm_clock_min_mhz"] == 1125.0  # the lowest sample inside the window
    assert s["sm_clock_min_mhz"] <= s["sm_clock_p5_mhz"] <= s["sm_clock_mean_mhz"]
    assert s["throttle_s"]["sw_power_cap"] == pytest.approx(g["window_s"], abs=0.25)
    assert s["throttle_s"]["idle"] == 0 and s["throttle_s"]["sw_thermal"] == 0
    assert g["samples_in_window"] == 60  # 6 s at 10 Hz
    assert s["window_coverage"] == pytest.approx(1.0, abs=0.02)
    # Energy from the counter: ~700 W for 6 s, interpolated between its 1 Hz readings.
    assert s["energy_j"] == pytest.approx(700 * g["window_s"], rel=0.03)
    assert s["peak_power_w"] > 700 and s["peak_temp_c"] == 60
    assert s["sampler_died"] is False and s["gaps_over_3x"] == 0 and s["max_gap_s"] < 0.15


def test_window_selects_samples(runs):
    whole = summarize_run(runs / "matmul", None)
    lo, hi = window("matmul")
    idle = summarize_run(runs / "matmul", (lo - 1.5, lo - 0.1))
    assert idle["sm_clock_mean_mhz"] == 1980.0  # idle clock with persistence mode on
    assert idle["throttle_s"]["sw_power_cap"] == 0
    assert idle["per_gpu"]["0"]["mean_power_w"] < 150
    assert whole["per_gpu"]["0"]["samples_in_window"] == whole["samples"] == 101
    # The whole trace, idle to idle: the power integral and the energy counter agree (the ~1 s averaging
    # of NVML's power reading cancels between the ramp up and the ramp down).
    assert whole["power_integral_j"] == pytest.approx(whole["energy_j"], rel=0.03)


def test_energy_is_counter_difference_interpolated(runs):
    lo, hi = window("train_a")
    t, e = [], []
    for line in (runs / "train_a" / "energy.csv").read_text().splitlines()[1:]:
        ts, _, mj, _ = line.split(",")
        t.append(float(ts))
        e.append(float(mj))
    want = (np.interp(hi, t, e) - np.interp(lo, t, e)) / 1000
    assert summarize_run(runs / "train_a", (lo, hi))["energy_j"] == pytest.approx(want, abs=0.1)


def test_killed_sampler_reported(runs):
    s = summarize_run(runs / "killed", window("killed"))
    assert s["sampler_died"] is True
    assert "SIGKILL" in s["sampler_note"] and "52%" in s["sampler_note"]
    assert 0.4 < s["window_coverage"] < 0.6


def test_killed_without_harness_exit_file(runs):
    # The harness itself may have been killed too: then only the sampler's own state says "running".
    (runs / "killed" / "sampler_exit.json").unlink()
    s = summarize_run(runs / "killed", window("killed"))
    assert s["sampler_died"] is True and "final reading" in s["sampler_note"]


def test_torn_last_line_is_skipped(runs):
    csv = runs / "train_b" / "telemetry.csv"
    full = summarize_run(runs / "train_b", None)["samples"]
    with open(csv, "a") as f:
        f.write("1795748160.5,0,19")  # a sampler killed mid-write
    assert summarize_run(runs / "train_b", None)["samples"] == full


def test_npz_written_and_equivalent(runs):
    s1 = summarize_run(runs / "train_c", window("train_c"))
    npz = runs / "train_c" / "telemetry.npz"
    assert npz.is_file() and npz.stat().st_size < (runs / "train_c" / "telemetry.csv").stat().st_size
    (runs / "train_c" / "telemetry.csv").unlink()
    (runs / "train_c" / "energy.csv").unlink()
    s2 = summarize_run(runs / "train_c", window("train_c"))
    assert s2["sm_clock_mean_mhz"] == s1["sm_clock_mean_mhz"]
    assert s2["energy_j"] == s1["energy_j"] and s2["throttle_s"] == s1["throttle_s"]


def test_no_telemetry_is_none(tmp_path):
    assert summarize_run(tmp_path, (0.0, 1.0)) is None
    assert load_trace(tmp_path) is None


def test_sampler_failed_at_start_is_reported(tmp_path):
    (tmp_path / "telemetry_meta.json").write_text(json.dumps({"state": "died", "error": "NVML init failed: x"}))
    s = summarize_run(tmp_path, None)
    assert s["sampler_died"] is True and "NVML init failed" in s["sampler_note"]


def test_bad_window_falls_back_to_whole_trace(runs):
    s = summarize_run(runs / "train_a", (5.0, 1.0))
    assert s["window"] is None and "invalid timed window" in s["window_note"]
    assert s["per_gpu"]["0"]["samples_in_window"] == s["samples"]
    assert summarize_run(runs / "train_a", window("train_a"))["window_note"] is None


# --- campaign outliers and the record.md table -----------------------------------------------------------


def test_power_capped_run_is_named_outlier(runs):
    lines = campaign_outliers(summaries(runs, ["train_a", "train_b", "train_c", "matmul"]))
    assert len(lines) == 1
    assert lines[0].startswith("run matmul: mean SM clock 1398 MHz vs campaign median 1966 MHz")
    assert "power cap" in lines[0]


def test_uniform_runs_have_no_outliers(runs):
    assert campaign_outliers(summaries(runs, ["train_a", "train_b", "train_c"])) == []


def test_two_runs_are_too_few_for_clock_outliers(runs):
    assert campaign_outliers(summaries(runs, ["train_a", "matmul"])) == []


def test_different_gpu_named(runs):
    # A copy of train_c's trace relabelled as another GPU model (the only edited trace in these tests):
    # the real clocks are unchanged, so only the GPU model can make it stand out.
    meta_path = runs / "train_c" / "telemetry_meta.json"
    meta = json.loads(meta_path.read_text())
    meta["devices"][0]["name"] = "NVIDIA H100 PCIe"
    meta_path.write_text(json.dumps(meta))
    lines = campaign_outliers(summaries(runs, ["train_a", "train_b", "train_c"]))
    assert lines == ["run train_c: a different GPU (NVIDIA H100 PCIe vs NVIDIA H100 80GB HBM3 in most runs)"]


def test_died_sampler_named(runs):
    lines = campaign_outliers(summaries(runs, ["train_a", "train_b", "killed"]))
    assert len(lines) == 1 and lines[0].startswith("run killed: telemetry incomplete (killed by SIGKILL")


def test_markdown_table(runs):
    runs_s = summaries(runs, ["train_a", "train_b", "train_c", "matmul", "killed"]) + [("6", None)]
    md = telemetry_markdown(runs_s)
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert len(rows) == 1 + 6  # header + runs
    assert rows[4].startswith("| matmul | 1398 / 1274 / 1125 | 5.8 |")
    assert "(partial)" in rows[5] and "died: killed by SIGKILL" in rows[5]
    assert rows[6].startswith("| 6 | no telemetry")
    assert "- run matmul: mean SM clock 1398 MHz" in md


def test_markdown_without_telemetry():
    md = telemetry_markdown([("0", None), ("1", None)])
    assert "Telemetry was off" in md and "|" not in md


# --- the sampler process (stand-in NVML; no telemetry values are asserted) -------------------------------


@pytest.fixture(autouse=True)
def restore_pynvml():
    """fake_env imports the stand-in pynvml into this process: put the real one (or none) back after."""
    saved = sys.modules.get("pynvml")
    yield
    if saved is None:
        sys.modules.pop("pynvml", None)
    else:
        sys.modules["pynvml"] = saved


def fake_env(monkeypatch, **extra):
    monkeypatch.setenv("PYTHONPATH", f"{FAKE_NVML}{os.pathsep}{REPO}")
    for k, v in extra.items():
        monkeypatch.setenv(k, v)
    monkeypatch.syspath_prepend(str(FAKE_NVML))
    sys.modules.pop("pynvml", None)


def test_start_sampler_none_without_nvml(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as if not installed
    assert nvml_available() == (False, "nvidia-ml-py (pynvml) is not installed")
    assert start_sampler(tmp_path, [0]) is None


def test_sampler_clean_stop(monkeypatch, tmp_path):
    fake_env(monkeypatch)
    h = start_sampler(tmp_path, [0], hz=20.0)
    assert isinstance(h, SamplerHandle) and h.alive
    time.sleep(1.3)
    h.stop()
    assert not h.alive and h.died_reason is None and h.proc.returncode == 0
    meta = json.loads((tmp_path / "telemetry_meta.json").read_text())
    assert meta["state"] == "stopped" and meta["unsupported_fields"] == ["reasons"]
    kinds = [line.rsplit(",", 1)[1] for line in (tmp_path / "energy.csv").read_text().splitlines()[1:]]
    assert kinds[0] == "start" and kinds[-1] == "end" and "tick" in kinds
    s = summarize_run(tmp_path, None)
    assert s["sampler_died"] is False and s["samples"] >= 10
    assert s["throttle_s"]["sw_power_cap"] is None  # reasons unsupported: unknown, not zero


def test_sampler_exits_when_parent_gone(monkeypatch, tmp_path):
    fake_env(monkeypatch)
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    proc = subprocess.Popen([sys.executable, "-m", "harness.telemetry.sampler", "--out", str(tmp_path),
                             "--gpus", "0", "--hz", "20", "--parent-pid", str(parent.pid)])
    parent.wait()
    assert proc.wait(timeout=10) == 0
    meta = json.loads((tmp_path / "telemetry_meta.json").read_text())
    assert meta["state"] == "stopped" and meta["stop_reason"] == "parent process gone"


def test_sampler_records_lost_gpu(monkeypatch, tmp_path):
    fake_env(monkeypatch, FAKE_NVML_FAIL_AFTER="40")
    h = start_sampler(tmp_path, [0], hz=100.0)
    h.proc.wait(timeout=10)
    h.stop()
    assert "stopped answering" in h.died_reason
    s = summarize_run(tmp_path, None)
    assert s["sampler_died"] is True and "stopped answering" in s["sampler_note"]


def test_sampler_bad_gpu_index(monkeypatch, tmp_path):
    fake_env(monkeypatch)
    h = start_sampler(tmp_path, [3], hz=10.0)
    h.proc.wait(timeout=10)
    h.stop()
    assert "cannot open GPU(s) [3]" in h.died_reason


def test_stop_kills_a_sampler_that_ignores_sigterm(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c",
                             "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
    time.sleep(0.3)
    h = SamplerHandle(proc, tmp_path, [0], 10.0)
    h.stop(grace_s=0.5)
    assert not h.alive and "killed" in h.died_reason
    assert json.loads((tmp_path / "sampler_exit.json").read_text())["alive_at_stop"] is True


def test_sampler_cli_rejects_bad_args(tmp_path):
    r = subprocess.run([sys.executable, "-m", "harness.telemetry.sampler", "--out", str(tmp_path), "--gpus", "x"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "--gpus must be comma-separated integers" in r.stderr


# --- the overhead A/B's statistics, on the measurement taken on the H100 ---------------------------------


def test_ab_stats_on_recorded_overhead():
    from harness.telemetry.bench import ab_stats

    rec = json.loads((FIX / "overhead_h100.json").read_text())
    st = ab_stats(rec["step_ms_without"], rec["step_ms_with"])
    assert st["ratio_median"] == pytest.approx(rec["ratio_median"], rel=1e-12)
    lo, hi = st["ratio_median_boot95"]
    assert st["ratio_min_max"][0] <= lo <= st["ratio_median"] <= hi <= st["ratio_min_max"][1]
    # Pairing is by round: swapping the arms inverts every ratio.
    assert ab_stats(rec["step_ms_with"], rec["step_ms_without"])["ratio_median"] == pytest.approx(
        1 / st["ratio_median"], rel=1e-3)
    with pytest.raises(ValueError):
        ab_stats([1.0, 2.0], [1.0])


def test_sampler_dead_at_start_is_named_once_without_identity_noise(runs, tmp_path):
    # no samples, so no GPU model, units or power limit to compare: only the death is a cause, and the run is
    # not split into a group of its own (it watched 1 GPU, like the others)
    dead = tmp_path / "dead"
    dead.mkdir()
    (dead / "telemetry_meta.json").write_text(json.dumps({"state": "died", "gpus": [0], "error": "NVML init failed: x"}))
    lines = campaign_outliers(summaries(runs, ["train_a", "train_b"]) + [("d", summarize_run(dead, None))])
    assert lines == ["run d: telemetry incomplete (NVML init failed: x)"]
