"""Campaign plots from the real H100 traces (tests/fixtures/telemetry) laid out as a campaign."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from harness.plots import make_campaign_plots  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "telemetry"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def campaign(tmp_path: Path, names: list[str]) -> Path:
    c = tmp_path / "camp"
    for k, name in enumerate(names):
        shutil.copytree(FIX / name, c / "runs" / str(k))
    (c / "campaign.json").write_text(json.dumps({"target": 0.5}))
    return c


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_both_plots_written(tmp_path):
    c = campaign(tmp_path, ["train_a", "train_b", "matmul", "killed"])
    paths = make_campaign_plots(c)
    assert paths == [c / "plots" / "clocks_power.png", c / "plots" / "val_loss.png"]
    w, h = png_size(paths[0])
    assert w > 600 and h > 0.8 * w  # one panel per run: four runs make a tall figure
    assert png_size(paths[1])[0] > 600


def test_more_runs_make_a_taller_clock_plot(tmp_path):
    h2 = png_size(make_campaign_plots(campaign(tmp_path / "a", ["train_a", "train_b"]))[0])[1]
    h4 = png_size(make_campaign_plots(campaign(tmp_path / "b", ["train_a", "train_b", "train_c", "matmul"]))[0])[1]
    assert h4 > 1.6 * h2


def test_no_telemetry_skips_clock_plot(tmp_path):
    c = campaign(tmp_path, ["train_a", "train_b"])
    for run in (c / "runs").iterdir():
        for f in ("telemetry.csv", "energy.csv", "telemetry_meta.json", "sampler_exit.json"):
            (run / f).unlink()
        assert not (run / "telemetry.npz").exists()
    assert make_campaign_plots(c) == [c / "plots" / "val_loss.png"]


def test_malformed_run_json_is_left_out(tmp_path):
    c = campaign(tmp_path, ["train_a", "train_b"])
    (c / "runs" / "1" / "run.json").write_text("{not json")
    (c / "runs" / "0" / "run.json").write_text(json.dumps({"val_curve": [[0, 5.0], ["x", 1], [10, 4.0]]}))
    assert make_campaign_plots(c) == [c / "plots" / "clocks_power.png", c / "plots" / "val_loss.png"]


def test_nothing_to_plot(tmp_path):
    (tmp_path / "runs").mkdir()
    assert make_campaign_plots(tmp_path) == []
    assert not (tmp_path / "plots").exists()
