"""Several GPUs in one run: per-GPU summaries and the straggler check.

The multi-GPU traces are built from real single-H100 traces (tests/fixtures/telemetry): each recorded trace
becomes one GPU of the run, its timestamps shifted to a common start. No value is invented; only the GPU index
and the time origin change."""

import csv
import json
import shutil

from conftest import FIXTURES
import pytest

from harness.telemetry import campaign_outliers, summarize_run, telemetry_markdown
from harness.telemetry.outliers import gpu_stragglers

TRACES = FIXTURES / "telemetry"


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def multi_gpu_run(run_dir, sources):
    """A run directory whose GPU k is the real trace sources[k]."""
    run_dir.mkdir(parents=True)
    tel, energy, devices = [], [], []
    base = None
    for k, name in enumerate(sources):
        src = TRACES / name
        rows = _rows(src / "telemetry.csv")
        t0 = float(rows[0]["t_unix"])
        base = t0 if base is None else base
        for r in rows:
            tel.append({**r, "gpu": str(k), "t_unix": f"{float(r['t_unix']) - t0 + base:.3f}"})
        for r in _rows(src / "energy.csv"):
            energy.append({**r, "gpu": str(k), "t_unix": f"{float(r['t_unix']) - t0 + base:.3f}"})
        meta = json.loads((src / "telemetry_meta.json").read_text())
        devices.append({**meta["devices"][0], "index": k})
    tel.sort(key=lambda r: (float(r["t_unix"]), int(r["gpu"])))
    energy.sort(key=lambda r: (float(r["t_unix"]), int(r["gpu"])))
    for fname, rows in (("telemetry.csv", tel), ("energy.csv", energy)):
        with open(run_dir / fname, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    meta = json.loads((TRACES / sources[0] / "telemetry_meta.json").read_text())
    meta.update(gpus=list(range(len(sources))), devices=devices)
    (run_dir / "telemetry_meta.json").write_text(json.dumps(meta))
    shutil.copy(TRACES / sources[0] / "sampler_exit.json", run_dir / "sampler_exit.json")
    return run_dir


def test_power_capped_gpu_is_named_the_straggler(tmp_path):
    run = multi_gpu_run(tmp_path / "r", ["train_a", "matmul", "train_b"])
    summary = summarize_run(run, None)
    assert sorted(summary["per_gpu"]) == ["0", "1", "2"]
    clocks = {g: v["sm_clock_mean_mhz"] for g, v in summary["per_gpu"].items()}
    assert clocks["1"] < min(clocks["0"], clocks["2"])  # the matmul trace sat at the power cap
    (line,) = gpu_stragglers([("0", summary)])
    assert line.startswith("run 0: slowest GPU 1 (NVIDIA H100 80GB HBM3)")
    assert "a straggler" in line and "most throttled GPU 1" in line and "sw_power_cap" in line
    md = telemetry_markdown([("0", summary)])
    assert "Per GPU" in md and "| 0 | 2 |" in md and "slowest GPU 1" in md


def test_matched_gpus_are_within_noise(tmp_path):
    summary = summarize_run(multi_gpu_run(tmp_path / "r", ["train_a", "train_b"]), None)
    (line,) = gpu_stragglers([("3", summary)])
    assert line.startswith("run 3: slowest GPU") and "within 1% of the others" in line


def test_single_gpu_runs_have_no_straggler_section(tmp_path):
    summary = summarize_run(multi_gpu_run(tmp_path / "r", ["train_a"]), None)
    assert gpu_stragglers([("0", summary)]) == []
    assert "Per GPU" not in telemetry_markdown([("0", summary)])


# --- real traces of one host with 2 H100s (tests/fixtures/telemetry/x2_*: a scaling campaign's 1-GPU and 2-GPU
# runs of the short track and a 2-run 2-GPU campaign, recorded by the harness's sampler; see the README there)

def _real(tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(TRACES / name, dst)
    window = tuple(json.loads((dst / "run.json").read_text())["timed_window_unix"])
    return summarize_run(dst, window)


def test_real_two_gpu_run_has_a_summary_per_gpu_and_a_straggler_line(tmp_path):
    s = _real(tmp_path, "x2_gpus2")
    assert sorted(s["per_gpu"]) == ["0", "1"] and len(set(s["gpu_uuids"])) == 2
    per_gpu = s["per_gpu"]
    # both GPUs trained for the whole window at their 700 W cap part of the time (the short track's s2/s3 stages)
    assert all(g["sm_clock_mean_mhz"] > 1700 for g in per_gpu.values())
    assert s["energy_j"] == pytest.approx(sum(g["energy_j"] for g in per_gpu.values()), rel=1e-6)
    (line,) = gpu_stragglers([("1", s)])
    slowest = min(per_gpu, key=lambda g: per_gpu[g]["sm_clock_mean_mhz"])
    assert line.startswith(f"run 1: slowest GPU {slowest} ") and "within 1% of the others" in line


def test_scaling_campaign_compares_runs_only_with_runs_on_as_many_gpus(tmp_path):
    runs = [(n, _real(tmp_path, n)) for n in ("x2_gpus1", "x2_gpus2", "x2_gpus2_b", "x2_gpus2_c")]
    # 1 GPU and 2 GPUs have different units by design: nothing to report
    assert campaign_outliers(runs) == []
    # the 2-GPU runs are still compared among themselves: one relabelled as other units stands out
    edited = dict(runs[3][1], gpu_uuids=["GPU-other-a", "GPU-other-b"])
    lines = campaign_outliers(runs[:3] + [("x2_gpus2_c", edited)])
    assert lines == ["run x2_gpus2_c: different GPU units than most runs (UUIDs differ) (among the 2-GPU runs)"]
