"""Several GPUs in one run: per-GPU summaries and the straggler check.

The multi-GPU traces are built from real single-H100 traces (tests/fixtures/telemetry): each recorded trace
becomes one GPU of the run, its timestamps shifted to a common start. No value is invented; only the GPU index
and the time origin change."""

import csv
import json
import shutil

from conftest import FIXTURES
from harness.telemetry import summarize_run, telemetry_markdown
from harness.telemetry.report import gpu_stragglers

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
