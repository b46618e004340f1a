"""`speedrun scaling`: the same script on 1..K processes, interleaved, with step-time scaling and the loss at
equal steps. CPU: the tiny track on 1 and 2 gloo ranks (real torchrun); the parsing on a real H100 short log."""

from __future__ import annotations

import pytest

from harness.errors import HarnessError
from harness.commands.scaling import cmd_scaling
from harness.scaling import parse_gpu_counts, scaling_schedule, scaling_table, stage_step_times
from conftest import REPO, run_cli

PROXY = REPO / "results" / "short" / "2026-11-27-h100-proxy" / "runs" / "0"


def test_gpu_counts_parse_sorted_and_reject_bad_lists():
    assert parse_gpu_counts("4,1,2") == [1, 2, 4]
    for bad in ("1", "1,1", "0,2", "1,two", ""):
        with pytest.raises(HarnessError):
            parse_gpu_counts(bad)


def test_schedule_alternates_order_and_shares_seeds_per_round():
    schedule, seeds = scaling_schedule([1, 2, 4], 3)
    assert schedule == ["gpus1", "gpus2", "gpus4", "gpus4", "gpus2", "gpus1", "gpus1", "gpus2", "gpus4"]
    assert seeds == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_stage_times_come_from_the_short_tracks_stage_lines():
    log = next((PROXY / "logs").glob("*.txt")).read_text()
    assert stage_step_times(log) == {"s0": 338.44, "s1": 598.34, "s2": 854.68, "s3": 865.18, "ext": 866.04}


def test_stage_times_fall_back_to_the_median_step_delta():
    lines = ["step:0/9 val_loss:5.0 train_time:0ms step_avg:0.00ms"]
    t = 0
    for step, dt in enumerate([900, 50, 50, 50, 50, 10, 12, 11, 40], start=1):  # 5 warm-up steps, then steady
        t += dt
        lines.append(f"step:{step}/9 train_time:{t}ms step_avg:{t / step:.2f}ms")
    lines.append(f"step:9/9 val_loss:4.0 train_time:{t}ms step_avg:{t / 9:.2f}ms")
    assert stage_step_times("\n".join(lines)) == {"all": 11.5}  # median of 10, 12, 11, 40 (steps 6..9)


def test_a_gpu_track_asking_for_more_gpus_than_the_node_has_is_refused(tmp_path):
    with pytest.raises(HarnessError, match="asks for up to 2 GPUs; this node shows 1"):
        cmd_scaling("short", "1,2", runs=1, out=str(tmp_path / "c"), gpu_count=lambda: 1)
    assert not (tmp_path / "c").exists()


def test_tiny_on_one_and_two_ranks_scales_and_gives_the_same_loss(tmp_path):
    out = tmp_path / "scaling"
    r = run_cli("scaling", "tiny", "--gpus", "1,2", "--runs", "1", "--out", out, "--quiet", "--no-telemetry",
                timeout=600)
    assert r.returncode == 4, r.stderr[-2000:]  # every run ok; one run per count gives no p-value: FAIL
    t = scaling_table(out)
    assert t["counts"] == [1, 2]
    one, two = t["per_count"][1], t["per_count"][2]
    assert one["runs"] == two["runs"] == 1
    assert one["loss_by_seed"] == two["loss_by_seed"]  # 2 gloo ranks x 1 = 1 process x 2 accumulation steps
    assert one["stage_ms"]["all"] > 0 and two["stage_ms"]["all"] > 0
    record = (out / "record.md").read_text()
    assert "gpus1 (1 process):" in record and "gpus2 (2 processes):" in record
    assert "| stage | 1 process (ms) | 2 processes (ms) |" in record  # tiny runs on CPU: processes, not GPUs
    assert "## Scaling" in record and "speedup 2/1 (efficiency)" in record
    assert "| 2 | 1 | " in record and "+0.0000 (max \\|d\\| 0.0000)" in record
    assert "## Scaling" in r.stdout  # the console shows the same tables
    assert "![scaling](plots/scaling.png)" in record
    assert (out / "plots" / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
