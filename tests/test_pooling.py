"""`speedrun pool`: two real compare campaigns of the short track against the record's code (two H200 nodes,
2026-12-03), read as one."""

from __future__ import annotations

import json
import shutil
import statistics

import pytest
import scipy.stats

from conftest import REPO, run_cli
from harness.errors import HarnessError
from harness.pooling import mean_interval, pooled_markdown
from harness.results import load_runs

RESULTS = REPO / "results" / "short"
SEEDS_0_2 = RESULTS / "2026-12-03-h200-fused-head-3v3"  # our code with SPEEDRUN_FUSED_HEAD=1, before it was the default
SEEDS_3_5 = RESULTS / "2026-12-03-h200-fused-head-seeds3-5"  # the code with it as the default
PROFILE = RESULTS / "2026-12-03-h200-profile-step46"
RUN_ONLY = RESULTS / "2026-12-01-h200-short-s24-cold"


def _pairs_from_run_files(folder):
    """candidate - baseline train time of each pair, read straight from the run.json files in schedule order."""
    runs = sorted((json.loads(p.read_text()) for p in folder.glob("runs/*/run.json")), key=lambda r: r["index"])
    out = []
    for i in range(0, len(runs), 2):
        by_arm = {r["arm"]: r["train_time_s"] for r in runs[i:i + 2]}
        out.append(by_arm["candidate"] - by_arm["baseline"])
    return out


def test_campaigns_of_different_code_are_refused_with_what_differs(tmp_path):
    out = tmp_path / "pool.md"
    r = run_cli("pool", str(SEEDS_0_2), str(SEEDS_3_5), "--out", str(out))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the campaigns are not runs of one experiment")
    # the candidate's code digest and the switch the first campaign set on both arms
    assert "candidate code: 4f2d09948ff9" in lines[0] and "484b63d9a42d" in lines[0]
    assert "candidate env SPEEDRUN_FUSED_HEAD: 1 (2026-12-03-h200-fused-head-3v3), (unset)" in lines[0]
    assert "baseline code" not in lines[0]  # the record's code is the same in both
    assert not out.exists()


def test_allowed_differences_pool_every_run_and_the_pairs_of_both_nodes(tmp_path):
    out = tmp_path / "pool.md"
    r = run_cli("pool", str(SEEDS_0_2), str(SEEDS_3_5), "--allow-differences", "--out", str(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert r.stdout == text
    assert "**Not one experiment**" in text and "- candidate code: 4f2d09948ff9" in text
    # one row per campaign, each naming its node: the two campaigns ran on two H200s
    assert "| 2026-12-03-h200-fused-head-3v3 | NVIDIA H200 (6aaddb6e) | 0-2 |" in text
    assert "| 2026-12-03-h200-fused-head-seeds3-5 | NVIDIA H200 (6d5906de) | 3-5 |" in text
    pairs = _pairs_from_run_files(SEEDS_0_2) + _pairs_from_run_files(SEEDS_3_5)
    assert len(pairs) == 6
    assert f"over 6 pairs: {statistics.fmean(pairs):+.3f} s ± {statistics.stdev(pairs):.3f}" in text
    # losses pool over the 6 runs of each arm; the final step's means recomputed from the run files
    finals = {"baseline": [], "candidate": []}
    for folder in (SEEDS_0_2, SEEDS_3_5):
        for p in folder.glob("runs/*/run.json"):
            run = json.loads(p.read_text())
            finals[run["arm"]].append(run["final_val_loss"])
    row = next(line for line in text.splitlines() if line.startswith("| 128 |"))
    assert f"{statistics.fmean(finals['baseline']):.4f} ± {statistics.stdev(finals['baseline']):.4f} (6)" in row
    assert f"{statistics.fmean(finals['candidate']):.4f} ± {statistics.stdev(finals['candidate']):.4f} (6)" in row
    stage = next(line for line in text.splitlines() if line.startswith("| s1 | 46-80 |"))
    assert stage.count("(6)") == 2  # every log of both campaigns is in the stage times
    assert "ran more than once" not in text  # seeds 0-2 and 3-5: no repeats


def test_a_seed_that_ran_twice_is_named(tmp_path):
    again = tmp_path / "2026-12-03-h200-fused-head-seeds3-5-again"
    shutil.copytree(SEEDS_3_5, again)
    text = pooled_markdown([SEEDS_3_5, again])
    assert "**Not one experiment**" not in text
    assert "The candidate's seeds 3, 4, 5 ran more than once" in text
    assert "The baseline's seeds 3, 4, 5 ran more than once" in text


@pytest.mark.parametrize("folders,message", [
    ([SEEDS_3_5], "pool needs two compare campaigns or more"),
    ([SEEDS_3_5, SEEDS_3_5], "the same campaign is named twice"),
    ([SEEDS_3_5, PROFILE], "a profile campaign"),
    ([SEEDS_3_5, RUN_ONLY], "not a compare campaign"),
    ([SEEDS_3_5, RESULTS / "nothere"], "no such campaign folder"),
])
def test_what_is_not_a_pool_of_compares_is_refused(folders, message):
    with pytest.raises(HarnessError, match=message):
        pooled_markdown(folders)


def test_pool_reads_and_writes_nothing_in_the_campaigns(tmp_path):
    copies = []
    for folder in (SEEDS_0_2, SEEDS_3_5):
        copies.append(tmp_path / folder.name)
        shutil.copytree(folder, copies[-1])
    before = {p: p.read_bytes() for c in copies for p in c.rglob("*") if p.is_file()}
    pooled_markdown(copies, allow_differences=True)
    after = {p: p.read_bytes() for c in copies for p in c.rglob("*") if p.is_file()}
    assert after == before
    assert len(load_runs(copies[0])) == 6


def test_mean_interval_is_the_one_sample_t_test():
    pairs = _pairs_from_run_files(SEEDS_0_2) + _pairs_from_run_files(SEEDS_3_5)
    mi = mean_interval(pairs, confidence=0.99)
    assert mi.p_lower == pytest.approx(scipy.stats.ttest_1samp(pairs, 0.0, alternative="less").pvalue)
    low, high = scipy.stats.t.interval(0.99, len(pairs) - 1, loc=statistics.fmean(pairs),
                                       scale=scipy.stats.sem(pairs))
    assert (mi.low, mi.high) == pytest.approx((low, high))
    assert mean_interval(pairs[:1]) is None


def test_a_hostile_campaign_is_inert_in_the_report_or_refused_in_one_line(tmp_path):
    evil = tmp_path / "<img src=x onerror=alert(1)>|x"
    shutil.copytree(SEEDS_3_5, evil)
    camp = json.loads((evil / "campaign.json").read_text())
    camp["arms"]["candidate"]["env"]["SPEEDRUN_X"] = "`</td><script>alert(1)</script>|"
    camp["environment"] = ["not", "an", "object"]
    (evil / "campaign.json").write_text(json.dumps(camp))
    text = pooled_markdown([SEEDS_3_5, evil], allow_differences=True)
    assert "<script>" not in text and "<img" not in text and "`</td>" not in text
    row = next(line for line in text.splitlines() if "onerror" in line and line.startswith("| "))
    assert row.count(" | ") == 6  # the folder's bar is escaped: the row keeps its 7 columns
    assert ("- candidate env SPEEDRUN_X: (unset) (2026-12-03-h200-fused-head-seeds3-5), '&lt;/td&gt;&lt;script&gt;"
            in text)
    assert "- gpu: NVIDIA H200 (2026-12-03-h200-fused-head-seeds3-5), None (" in text  # no fingerprint to read
    camp["arms"]["baseline"] = "not an object"
    (evil / "campaign.json").write_text(json.dumps(camp))
    r = run_cli("pool", str(SEEDS_3_5), str(evil), "--allow-differences")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [f"error: {evil}: campaign.json's arm 'baseline' is not an object"]
