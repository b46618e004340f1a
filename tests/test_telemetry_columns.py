"""The telemetry columns defined once (harness/telemetry/columns.py) and the CSVs read by their header: the
committed traces (tests/fixtures/telemetry, results/*/*/runs/*) edited the ways a newer or older sampler, or
a hand, would edit them."""

from __future__ import annotations

import csv
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, committed_files, run_cli
from harness.errors import HarnessError
from harness.telemetry import sampler as sampler_module
from harness.telemetry import start_sampler, summarize_run
from harness.telemetry.columns import (ENERGY_COLUMNS, ENERGY_HEADER, SAMPLED_COLUMNS, TELEMETRY_COLUMNS,
                                       TELEMETRY_HEADER, Column)
from harness.telemetry.trace import load_trace, write_npz

TRACES = REPO / "tests" / "fixtures" / "telemetry"
FAKE_NVML = REPO / "tests" / "fake_nvml"
COMMITTED = [p.parent for p in committed_files("tests/fixtures/telemetry/*/telemetry.csv")
             + committed_files("results/*/*/runs/*/telemetry.csv")]
TINY_CAMPAIGN = REPO / "results" / "tiny" / "2026-11-27-h100"


def _table(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_table(path: Path, rows: list[dict], fields: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def _copy_run(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(TRACES / name, dst, ignore=shutil.ignore_patterns("telemetry.npz"))
    return dst


def _same_arrays(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


def test_the_sampler_header_is_the_one_the_committed_traces_carry():
    assert len(COMMITTED) >= 8
    for run in COMMITTED:
        assert (run / "telemetry.csv").read_text().splitlines()[0] == TELEMETRY_HEADER
        assert (run / "energy.csv").read_text().splitlines()[0] == ENERGY_HEADER


@pytest.mark.parametrize("run", COMMITTED, ids=[str(p.relative_to(REPO)) for p in COMMITTED])
def test_every_committed_trace_loads_every_column(run):
    trace = load_trace(run)
    assert list(trace.cols) == [c.name for c in TELEMETRY_COLUMNS]
    assert list(trace.energy) == [c.name for c in ENERGY_COLUMNS]
    assert len(trace.cols["t_unix"]) > 10 and len(trace.energy["t_unix"]) >= 2
    for c in TELEMETRY_COLUMNS:  # every reading has values in a real H100 trace: no column was lost
        assert not np.isnan(trace.cols[c.name]).all(), c.name
    assert set(np.unique(trace.energy["kind"])) <= {0.0, 1.0, 2.0}


def test_an_extra_column_and_another_order_load_by_name(tmp_path):
    run = _copy_run("matmul", tmp_path)
    before = load_trace(run)
    summary = summarize_run(run, None)
    rows = _table(run / "telemetry.csv")
    for k, r in enumerate(rows):
        r["fan_pct"] = str(30 + k % 3)  # a column a newer sampler might add
    fields = ["fan_pct"] + list(reversed(TELEMETRY_HEADER.split(",")))
    _write_table(run / "telemetry.csv", rows, fields)
    (run / "telemetry.npz").unlink()
    after = load_trace(run)
    assert _same_arrays(after.cols, before.cols)  # fan_pct ignored, every known column found by its name
    assert summarize_run(run, None) == summary


def test_a_missing_optional_column_reads_as_blank(tmp_path):
    run = _copy_run("train_a", tmp_path)
    before = summarize_run(run, None)
    rows = _table(run / "telemetry.csv")
    _write_table(run / "telemetry.csv", rows, [n for n in TELEMETRY_HEADER.split(",") if n != "temp_c"])
    trace = load_trace(run)
    assert np.isnan(trace.cols["temp_c"]).all() and len(trace.cols["temp_c"]) == len(rows)
    after = summarize_run(run, None)
    assert after["peak_temp_c"] is None and before["peak_temp_c"] is not None
    assert after["sm_clock_mean_mhz"] == before["sm_clock_mean_mhz"] and after["energy_j"] == before["energy_j"]


@pytest.mark.parametrize("file, dropped", [("telemetry.csv", "gpu"), ("telemetry.csv", "t_unix"),
                                           ("energy.csv", "energy_mj")])
def test_a_missing_required_column_is_refused_naming_it(tmp_path, file, dropped):
    run = _copy_run("train_b", tmp_path)
    rows = _table(run / file)
    _write_table(run / file, rows, [n for n in rows[0] if n != dropped])
    with pytest.raises(HarnessError) as e:
        load_trace(run)
    assert f"no column {dropped!r}" in str(e.value) and file in str(e.value)
    # after a run, the summary says so instead of failing the campaign or reporting an empty trace
    s = summarize_run(run, None)
    assert s["sampler_died"] is True and f"no column {dropped!r}" in s["sampler_note"] and s["per_gpu"] == {}


def test_a_duplicated_column_is_refused(tmp_path):
    run = _copy_run("train_c", tmp_path)
    text = (run / "telemetry.csv").read_text().splitlines()
    (run / "telemetry.csv").write_text("\n".join([text[0].replace("mem_mhz", "sm_mhz")] + text[1:]) + "\n")
    with pytest.raises(HarnessError, match="'sm_mhz' appears twice"):
        load_trace(run)


def test_npz_is_read_by_name_too(tmp_path):
    run = _copy_run("train_c", tmp_path)
    trace = load_trace(run)
    write_npz(run, trace)
    (run / "telemetry.csv").unlink()
    (run / "energy.csv").unlink()
    assert _same_arrays(load_trace(run).cols, {k: v.astype(c.stored) for (k, v), c in
                                                zip(trace.cols.items(), TELEMETRY_COLUMNS)})
    with np.load(run / "telemetry.npz") as z:
        kept = {k: z[k] for k in z.files if k not in ("util_pct", "energy_gpu")}
    np.savez(run / "telemetry.npz", **kept)
    with pytest.raises(HarnessError, match="no column 'gpu'"):  # energy's gpu is required
        load_trace(run)
    kept["energy_gpu"] = trace.energy["gpu"]
    np.savez(run / "telemetry.npz", **kept)
    assert np.isnan(load_trace(run).cols["util_pct"]).all()


def test_report_refuses_a_campaign_whose_trace_lost_a_required_column(tmp_path):
    camp = tmp_path / "camp"
    shutil.copytree(TINY_CAMPAIGN, camp)
    before = (camp / "record.md").read_bytes()
    tel = camp / "runs" / "1" / "telemetry.csv"
    rows = _table(tel)
    _write_table(tel, rows, [n for n in rows[0] if n != "gpu"])
    r = run_cli("report", camp)
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "no column 'gpu'" in errors[0]
    assert str(tel) in errors[0] and "Traceback" not in r.stderr
    assert (camp / "record.md").read_bytes() == before  # not rewritten, not half-written


def test_the_writer_formats_each_cell_by_its_column_type():
    """Every sampled cell of every committed trace, parsed and written again by its column's type, gives back
    the same text: the writer is the one that wrote them."""
    for run in COMMITTED:
        for line in (run / "telemetry.csv").read_text().splitlines()[1:]:
            cells = line.split(",")[2:]
            values = [None if text == "" else float(text) for text in cells]
            assert [sampler_module._cell(c, v) for c, v in zip(SAMPLED_COLUMNS, values)] == cells, line
    by_name = {c.name: c for c in SAMPLED_COLUMNS}
    assert sampler_module._cell(by_name["sm_mhz"], 1979.6) == "1980"  # an int column holds integers
    assert sampler_module._cell(by_name["power_w"], 70.0) == "70"
    assert sampler_module._cell(by_name["power_w"], 283.53849) == "283.538"
    assert sampler_module._cell(by_name["temp_c"], None) == ""


def test_every_sampled_column_has_an_nvml_reading():
    reader = sampler_module.GpuReader.__new__(sampler_module.GpuReader)  # readings() only needs nvml, handle
    reader.nvml, reader.handle, reader._reasons_fn = object(), 0, None
    assert list(reader.readings()) == [c.name for c in SAMPLED_COLUMNS]


@pytest.fixture
def fake_nvml(monkeypatch):
    saved = sys.modules.pop("pynvml", None)
    monkeypatch.setenv("PYTHONPATH", f"{FAKE_NVML}:{REPO}")
    monkeypatch.syspath_prepend(str(FAKE_NVML))
    yield
    sys.modules.pop("pynvml", None)
    if saved is not None:
        sys.modules["pynvml"] = saved


def test_the_sampler_writes_each_reading_under_its_column(fake_nvml, tmp_path):
    h = start_sampler(tmp_path, [0], hz=20.0)
    assert h is not None
    time.sleep(0.6)
    h.stop()
    assert (tmp_path / "telemetry.csv").read_text().splitlines()[0] == TELEMETRY_HEADER
    trace = load_trace(tmp_path)
    # the stand-in NVML's constant readings, each found under its own name
    expected = {"gpu": 0, "sm_mhz": 1980, "mem_mhz": 2619, "power_w": 70.0, "temp_c": 30, "util_pct": 0,
                "mem_used_mib": 0}
    assert len(trace.cols["t_unix"]) >= 3
    for name, value in expected.items():
        assert (trace.cols[name] == value).all(), name
    assert np.isnan(trace.cols["reasons"]).all()  # not supported by the stand-in: blank, not zero
    assert trace.energy["kind"][0] == 0 and trace.energy["kind"][-1] == 2
    assert (trace.energy["energy_mj"] == 1000000).all() and (trace.energy["gpu"] == 0).all()


def test_the_sampler_refuses_a_column_it_cannot_read(fake_nvml, tmp_path, monkeypatch):
    monkeypatch.setattr(sampler_module, "SAMPLED_COLUMNS", SAMPLED_COLUMNS + (Column("fan_pct", "%", int, "fan"),))
    monkeypatch.setattr(sampler_module.signal, "signal", lambda *a: None)  # run in-process: keep pytest's handlers
    assert sampler_module.run_sampler(tmp_path, [0], 10.0, None) == 3
    meta = json.loads((tmp_path / "telemetry_meta.json").read_text())
    assert meta["state"] == "died" and "fan_pct" in meta["error"]
    assert not (tmp_path / "telemetry.csv").exists()
