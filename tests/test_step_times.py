"""Step time per stage and the per-step validation table of a comparison, on the real 3 + 3 campaign of
2026-12-03 (results/short/2026-12-03-h200-3v3: the record's code of seed 001 against our short track on one H200;
the reference's logs there have their embedded source replaced by a placeholder, their step lines verbatim)."""

from __future__ import annotations

import json
import re
import shutil
import statistics

import pytest

from conftest import REPO
from harness.comparison import comparison_markdown, stage_time_table, val_curve_table
from harness.logs import parse_log
from harness.results import load_runs
from harness.step_times import StageWindow, stage_lines, stage_windows, window_step_ms

CAMPAIGN = REPO / "results/short/2026-12-03-h200-3v3"


def _log(index: int) -> str:
    run = json.loads((CAMPAIGN / f"runs/{index}/run.json").read_text())
    return (CAMPAIGN / f"runs/{index}" / run["log_file"]).read_text()


def _arm_runs(arm: str) -> list[int]:
    return [r.index for r in load_runs(CAMPAIGN) if r.arm == arm]


def test_windows_reproduce_the_scripts_own_stage_times():
    """Our track prints each stage's steady ms itself; the windows the harness derives from its stage lines and the
    step-line differences over them give the same figures (the step lines round train_time to whole ms)."""
    for index in _arm_runs("candidate"):
        text = _log(index)
        lines, windows = stage_lines(text), stage_windows(text)
        assert [w.name for w in windows] == ["s0", "s1", "s2", "ext"] == [n for n, *_ in lines]
        assert [w.label for w in windows] == ["6-40", "46-80", "86-120", "126-128"]
        steps = parse_log(text).steps
        for (_, _, _, own_ms), w in zip(lines, windows):
            assert window_step_ms(steps, w) == pytest.approx(own_ms, abs=0.1), (index, w)


def test_a_step_right_after_a_validation_is_left_out():
    """The reference's log: no stage lines; over a window across the validation at step 40, step 41 (whose
    difference holds the end of step 40 before the validation's synchronize) does not count."""
    text = _log(_arm_runs("baseline")[0])
    assert stage_windows(text) == []
    steps = parse_log(text).steps
    train = {int(m[1]): int(m[2]) for m in re.finditer(r"^step:(\d+)/128 train_time:(\d+)ms", text, re.M)}
    assert 40 in train and any(s.step == 40 and s.val_loss is not None for s in steps)
    want = statistics.fmean(train[k] - train[k - 1] for k in range(36, 46) if k != 41)
    assert window_step_ms(steps, StageWindow("x", 36, 45)) == pytest.approx(want)
    assert window_step_ms(steps, StageWindow("x", 200, 210)) is None  # no such steps


def test_a_stage_no_longer_than_the_warmup_keeps_all_its_steps():
    text = "stage:a first_step:0 steps:3 steady_step_ms:10.00 (x)\nstage:b first_step:3 steps:6 steady_step_ms:1\n"
    windows = stage_windows(text)
    assert (windows[0].first, windows[0].last) == (1, 3)
    assert (windows[1].first, windows[1].last) == (9, 9)


def test_a_hostile_stage_line_or_log_costs_nothing(tmp_path):
    """A stage line claiming a billion steps is measured over the steps the log has (no loop over the claim); a
    binary file where a run's log should be is left out of the table like a missing one, with no traceback."""
    steps = parse_log(_log(_arm_runs("baseline")[0])).steps
    huge = stage_windows("stage:s9 first_step:0 steps:999999999 steady_step_ms:1.0\n")[0]
    assert huge.last == 999999999
    assert window_step_ms(steps, huge) == pytest.approx(window_step_ms(steps, StageWindow("all", 6, 128)))
    copy = tmp_path / "c"
    shutil.copytree(CAMPAIGN, copy)
    run3 = json.loads((copy / "runs/3/run.json").read_text())
    (copy / "runs/3" / run3["log_file"]).write_bytes(b"\x00\x01 not a log")
    lines = stage_time_table(copy, load_runs(copy))
    assert any("baseline): those runs" in line for line in lines)
    assert any(line.startswith("| s1 |") and "(2) |" in line for line in lines)


def test_val_curve_table_matches_an_independent_welch_interval():
    scipy_stats = pytest.importorskip("scipy.stats")
    runs = load_runs(CAMPAIGN)
    lines = val_curve_table(runs)
    rows = {int(line.split("|")[1]): line for line in lines if re.match(r"^\| \d+ \|", line)}
    assert sorted(rows) == [0, 40, 80, 120, 128]
    for step, line in rows.items():
        a = [dict(r.val_curve)[step] for r in runs if r.arm == "baseline"]
        b = [dict(r.val_curve)[step] for r in runs if r.arm == "candidate"]
        ci = scipy_stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert cells[1] == f"{statistics.fmean(a):.4f} ± {statistics.stdev(a):.4f} (3)"
        assert cells[2] == f"{statistics.fmean(b):.4f} ± {statistics.stdev(b):.4f} (3)"
        assert cells[3] == (f"{statistics.fmean(b) - statistics.fmean(a) + 0.0:+.4f} "
                            f"({ci.low + 0.0:+.4f} to {ci.high + 0.0:+.4f})")


def test_stage_table_uses_the_candidates_stages_for_both_arms(tmp_path):
    runs = load_runs(CAMPAIGN)
    lines = stage_time_table(CAMPAIGN, runs)
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in lines if re.match(r"^\| (s\d|ext) \|", line)]
    assert [r[:2] for r in rows] == [["s0", "6-40"], ["s1", "46-80"], ["s2", "86-120"], ["ext", "126-128"]]
    for row, w in zip(rows, stage_windows(_log(_arm_runs("candidate")[0]))):
        per_arm = {}
        for arm in ("baseline", "candidate"):
            ms = [window_step_ms(parse_log(_log(i)).steps, w) for i in _arm_runs(arm)]
            per_arm[arm] = statistics.fmean(ms)
            assert f"{per_arm[arm]:.1f} ± {statistics.stdev(ms):.1f} (3)" == row[2 if arm == "baseline" else 3]
        assert row[4] == f"{per_arm['candidate'] / per_arm['baseline']:.3f}"
    # a copy without one reference log: the table says so and counts the two runs left
    copy = tmp_path / "c"
    shutil.copytree(CAMPAIGN, copy)
    run0 = json.loads((copy / "runs/0/run.json").read_text())
    (copy / "runs/0" / run0["log_file"]).unlink()
    lines = stage_time_table(copy, load_runs(copy))
    assert any("(2) |" in line for line in lines) and any("baseline): those runs" in line for line in lines)
    # no log names stages (only the reference's logs left): no table
    for r in load_runs(copy):
        if r.arm == "candidate":
            (copy / f"runs/{r.index}" / r.log_file).unlink()
            (copy / f"runs/{r.index}/output.txt").unlink()
    assert stage_time_table(copy, load_runs(copy)) == []


def test_comparison_section_carries_both_tables():
    text = comparison_markdown(CAMPAIGN)
    assert text.index("Per-pair time differences") < text.index("Validation loss at each step") \
        < text.index("Step time per stage") < text.index("Node telemetry")
