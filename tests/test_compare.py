"""`speedrun compare`: the interleaving order, the Welch interval and test, the markdown, telemetry, and an
end-to-end comparison of the tiny track against a variant that is slower by a known amount."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from harness.commands.compare import build_arms, cmd_compare
from harness.comparison import balanced_order, comparison_markdown, telemetry_comparison, welch_difference
from harness.errors import HarnessError
from harness.results import BASELINE, CANDIDATE, Run, pair_differences
from harness.fsio import write_json_atomic
from harness.tracks import REPO_ROOT

FIXTURES = Path(__file__).parent / "fixtures"
TINY_SLOW = FIXTURES / "tiny_slow" / "train_gpt.py"
TINY_SCRIPT = REPO_ROOT / "tracks" / "tiny" / "train_gpt.py"
# a compare whose candidate was interrupted: only the baseline (the record's medium code) finished
MEDIUM_REF_ONLY = REPO_ROOT / "results" / "medium" / "2026-12-03-h200-ref-cold-fill"

# Seed 001: the candidate's block and the previous record re-timed on the same machine.
CAND_LOSSES = [3.2767, 3.2777, 3.2795, 3.2774, 3.2799, 3.2779, 3.2777]
CAND_TIMES = [97.825, 97.777, 97.818, 97.777, 97.745, 97.715, 97.728]
BASE_LOSSES = [3.2776, 3.2803, 3.2773, 3.2794, 3.2784, 3.2794]
BASE_TIMES = [98.908, 98.878, 98.796, 98.667, 98.800, 98.776]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8])
def test_balanced_order(n):
    order = balanced_order(n)
    assert len(order) == 2 * n
    assert order.count(BASELINE) == order.count(CANDIDATE) == n
    for j in range(0, 2 * n, 2):  # every pair holds one of each
        assert {order[j], order[j + 1]} == {BASELINE, CANDIDATE}
    if n % 2 == 0:  # complete A B B A blocks: a linear drift adds the same to both arms' means
        pos_a = [k for k, a in enumerate(order) if a == BASELINE]
        pos_b = [k for k, a in enumerate(order) if a == CANDIDATE]
        assert sum(pos_a) == sum(pos_b)
    assert order[:4] == [BASELINE, CANDIDATE, CANDIDATE, BASELINE][: len(order[:4])]


def test_balanced_order_rejects_zero():
    with pytest.raises(HarnessError):
        balanced_order(0)


def test_linear_drift_cancels_in_the_difference():
    order = balanced_order(6)
    drift = {k: 100.0 + 0.05 * k for k in range(len(order))}  # the node slows by 50 ms per run
    times = {k: drift[k] - (1.0 if a == CANDIDATE else 0.0) for k, a in enumerate(order)}
    base = [times[k] for k, a in enumerate(order) if a == BASELINE]
    cand = [times[k] for k, a in enumerate(order) if a == CANDIDATE]
    assert np.mean(cand) - np.mean(base) == pytest.approx(-1.0, abs=1e-9)


@pytest.mark.parametrize("data", ["seed001", "random"])
def test_welch_against_scipy(data):
    if data == "seed001":
        base, cand = BASE_TIMES, CAND_TIMES
    else:
        rng = np.random.default_rng(4)
        base, cand = list(rng.normal(10, 0.3, 5)), list(rng.normal(9.8, 0.1, 9))
    d = welch_difference(base, cand)
    ref = scipy.stats.ttest_ind(cand, base, equal_var=False, alternative="less")
    assert d.p_lower == pytest.approx(ref.pvalue, rel=1e-10)
    assert d.df == pytest.approx(ref.df, rel=1e-10)
    ci = scipy.stats.ttest_ind(cand, base, equal_var=False).confidence_interval(0.99)
    assert (d.ci_low, d.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert d.diff == pytest.approx(np.mean(cand) - np.mean(base))


def test_welch_needs_two_per_arm():
    assert welch_difference([1.0], [2.0, 3.0]) is None
    d = welch_difference([2.0, 2.0], [1.0, 1.0])  # no spread: the difference is exact
    assert d.diff == -1.0 and d.p_lower == 0.0


def test_pair_differences_skip_incomplete_pairs():
    runs = [
        {"index": 0, "arm": BASELINE, "status": "ok", "train_time_s": 10.0},
        {"index": 1, "arm": CANDIDATE, "status": "ok", "train_time_s": 9.0},
        {"index": 2, "arm": CANDIDATE, "status": "failed", "train_time_s": None},
        {"index": 3, "arm": BASELINE, "status": "ok", "train_time_s": 10.5},
        {"index": 4, "arm": BASELINE, "status": "ok", "train_time_s": 10.2},
        {"index": 5, "arm": CANDIDATE, "status": "ok", "train_time_s": 9.7},
        {"index": 6, "arm": CANDIDATE, "status": "ok", "train_time_s": 9.1},
    ]
    assert pair_differences([Run.from_json(r) for r in runs]) == pytest.approx([-1.0, -0.5])


def _campaign(tmp_path: Path, base, cand, telemetry=None, until=False) -> Path:
    """A compare campaign folder laid out like run_campaign's, holding the given results."""
    d = tmp_path / "campaign"
    order = balanced_order(max(len(base), len(cand)))
    queues = {BASELINE: list(base), CANDIDATE: list(cand)}
    runs = []
    for arm in order:
        if not queues[arm]:
            continue
        loss, t = queues[arm].pop(0)
        k = len(runs)
        r = {"index": k, "arm": arm, "seed": k // 2, "status": "ok", "final_val_loss": loss, "train_time_s": t}
        if telemetry:
            r["telemetry"] = telemetry[arm][sum(1 for x in runs if x["arm"] == arm)]
        runs.append(r)
        write_json_atomic(d / "runs" / str(k) / "run.json", r)
    track = {"name": "short", "target": 3.28, "alpha": 0.01}
    campaign = {"format": 1, "kind": "compare", "id": "test", "track": track, "status": "complete",
                "arms": {BASELINE: {"name": BASELINE}, CANDIDATE: {"name": CANDIDATE}},
                "schedule": [r["arm"] for r in runs], "seeds": [r["seed"] for r in runs]}
    if until:
        campaign["until_significant"] = {"max_runs": 20, "kind": "compare"}
    write_json_atomic(d / "campaign.json", campaign)
    return d


def test_comparison_markdown_on_seed_001(tmp_path):
    d = _campaign(tmp_path, list(zip(BASE_LOSSES, BASE_TIMES)), list(zip(CAND_LOSSES, CAND_TIMES)), until=True)
    md = comparison_markdown(d)
    gain = np.mean(BASE_TIMES) - np.mean(CAND_TIMES)  # seed 001: "about 1 second of improvement"
    assert f"These timings show {gain:.3f} s of improvement" in md
    ref = scipy.stats.ttest_ind(CAND_TIMES, BASE_TIMES, equal_var=False, alternative="less")
    assert f"p={ref.pvalue:.4f}" in md and "the candidate is faster" in md
    ci = scipy.stats.ttest_ind(CAND_TIMES, BASE_TIMES, equal_var=False).confidence_interval(0.99)
    assert f"CI of the gain {-ci.high:.3f} to {-ci.low:.3f} s" in md
    assert "loss (candidate - baseline): -0.0006" in md
    assert "Sequential test of the time gain" in md and "6 per-pair differences" in md
    assert "not recorded for both arms" in md  # no telemetry in this campaign


def test_record_md_holds_both_blocks(tmp_path):
    from harness.record_md import record_markdown

    d = _campaign(tmp_path, list(zip(BASE_LOSSES, BASE_TIMES)), list(zip(CAND_LOSSES, CAND_TIMES)))
    md = record_markdown(d)
    assert "# p=0.0025" in md  # the candidate's block, as in seed 001
    assert "Previous record (timed on same machine):" in md
    prev = md[md.index("Previous record"):]
    assert "ttest_1samp" not in prev.split("```")[1]  # the baseline block has no t-test line
    assert "mean=98.8042" in prev or "tensor(98.8042)" in prev
    assert "These timings show" in md


def _summaries(tmp_path: Path, names: list[str]) -> list[dict]:
    """Telemetry summaries of the real H100 traces in tests/fixtures/telemetry (copied: summarizing writes)."""
    from harness.telemetry.summary import summarize_run

    out = []
    for i, name in enumerate(names):
        dst = tmp_path / "tele" / f"{i}-{name}"
        shutil.copytree(FIXTURES / "telemetry" / name, dst)
        window = json.loads((dst / "run.json").read_text())["timed_window_unix"]
        out.append(summarize_run(dst, tuple(window)))
    return out


def test_telemetry_same_node_conditions(tmp_path):
    tele = {BASELINE: _summaries(tmp_path, ["train_a", "train_b"]), CANDIDATE: _summaries(tmp_path, ["train_b", "train_c"])}
    d = _campaign(tmp_path, [(3.279, 10.0), (3.279, 10.1)], [(3.279, 9.0), (3.279, 9.1)], telemetry=tele)
    from harness.results import load_runs

    comp = telemetry_comparison(load_runs(d))
    assert comp["differences"] == []
    assert "Node telemetry: no difference" in comparison_markdown(d)


def test_telemetry_different_node_conditions(tmp_path):
    # The matmul trace ran at the power cap with SM clocks near 1400 MHz; the training traces near 1965 MHz.
    tele = {BASELINE: _summaries(tmp_path, ["train_a", "train_b"]), CANDIDATE: _summaries(tmp_path, ["matmul", "matmul"])}
    d = _campaign(tmp_path, [(3.279, 10.0), (3.279, 10.1)], [(3.279, 9.0), (3.279, 9.1)], telemetry=tele)
    md = comparison_markdown(d)
    assert "different conditions" in md and "mean SM clock" in md


def test_telemetry_line_names_the_arm_that_lacks_it(tmp_path):
    # One arm traced (real traces from the GPU machine), the other without telemetry: the line says which.
    tele = {BASELINE: _summaries(tmp_path, ["train_a", "train_b"]), CANDIDATE: [None, None]}
    md = comparison_markdown(_campaign(tmp_path, [(3.279, 10.0), (3.279, 10.1)], [(3.279, 9.0), (3.279, 9.1)],
                                       telemetry=tele))
    assert "Node telemetry: not recorded for the candidate's runs (CPU runs" in md
    assert "both arms" not in md and "baseline" not in md.split("Node telemetry:")[1]
    # The medium campaign of 2026-12-03: the record code's run finished with telemetry; ours was interrupted.
    md = comparison_markdown(MEDIUM_REF_ONLY)
    assert "Node telemetry: the candidate has no finished run, so clocks" in md


def test_a_compare_whose_candidate_never_finished_says_so_and_keeps_the_baselines_block():
    from harness.record_md import record_markdown

    md = record_markdown(MEDIUM_REF_ONLY)
    assert "No candidate run finished successfully: there is no block to report." in md
    assert "losses = [5.3655]" in md and "times = [99.285]" in md  # the record code's run, as its block


def test_two_scripts_or_stray_max_runs_are_refused(tmp_path):
    with pytest.raises(HarnessError, match="name a track"):
        build_arms(str(TINY_SLOW), str(TINY_SLOW), None, {})
    with pytest.raises(HarnessError, match="--max-runs goes with"):
        cmd_compare(str(TINY_SLOW), "tiny", runs=2, max_runs=4, out=str(tmp_path / "x"))
    from harness.cli import main

    assert main(["compare", str(TINY_SLOW), str(TINY_SLOW), "--out", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def _tiny_track(tmp_path: Path) -> Path:
    """A track folder around the tiny track's real script, with its own target (the CPU test's 2-step runs
    end far above any real target; the comparison is about time)."""
    folder = tmp_path / "tinytrack"
    folder.mkdir()
    (folder / "track.toml").write_text(
        f'name = "tiny"\nscript = "{TINY_SCRIPT}"\nnproc = 1\ntarget = 3.5\ntimeout_s = 300\n'
        f"hang_timeout_s = 120\nuses_gpu = false\n")
    return folder


@pytest.mark.slow
@pytest.mark.skipif(not TINY_SCRIPT.is_file(), reason="tiny track not present")
def test_compare_end_to_end_known_slowdown(tmp_path, capsys):
    # Baseline: the tiny variant that sleeps 1 s in its one timed step. Candidate: the tiny track itself.
    # The reported gain must be that second, give or take the compute time's noise (one tiny step takes
    # about 0.05 s, a few tenths on a CPU shared with other jobs), with an interval that excludes 0.
    env = {"SPEEDRUN_NUM_ITERATIONS": "1", "SPEEDRUN_VAL_EVERY": "0", "SPEEDRUN_VAL_TOKENS": "2048",
           "SPEEDRUN_SLOW_MS_PER_STEP": "1000"}
    out = tmp_path / "cmp"
    rc = cmd_compare(str(TINY_SLOW), str(_tiny_track(tmp_path)), runs=3, out=str(out), env=env,
                     telemetry=False, quiet=True)
    assert rc == 0  # every run ok, and the candidate's loss claim (target 3.5) passes
    from harness.results import load_runs

    runs = load_runs(out)
    assert [r.arm for r in runs] == balanced_order(3)
    assert all(r.status == "ok" for r in runs)
    # Same seed within a pair and untouched math: identical losses for both arms of every pair.
    for j in range(0, 6, 2):
        assert runs[j].seed == runs[j + 1].seed
        assert runs[j].final_val_loss == runs[j + 1].final_val_loss
    base = [r.train_time_s for r in runs if r.arm == BASELINE]
    cand = [r.train_time_s for r in runs if r.arm == CANDIDATE]
    d = welch_difference(base, cand)
    assert d.diff == pytest.approx(-1.0, abs=0.4)
    assert d.ci_high < 0
    md = (out / "record.md").read_text()
    assert "Previous record (timed on same machine):" in md
    assert f"These timings show {-d.diff:.3f} s of improvement" in md
    assert "These timings show" in capsys.readouterr().out


def test_compare_until_significant_stops_a_futile_campaign(tmp_path):
    # The fake track against itself: every pair's time difference is 0, so no gain can be shown; the
    # sequential rule must end the campaign after 3 pairs instead of running the whole budget of 10.
    from harness.results import load_campaign, load_runs
    from harness.cli import main

    fake = FIXTURES / "fake_track"
    out = tmp_path / "futile"
    rc = main(["compare", str(fake), str(fake), "--until-significant", "--max-runs", "10", "--out", str(out),
               "--no-telemetry"])
    assert rc == 4  # every run ok; stopped early, the candidate's loss claim not shown at alpha: verdict FAIL
    campaign = load_campaign(out)
    assert campaign.status == "stopped-early"
    assert "time gain: futile" in campaign.stop_reason
    assert len(campaign.schedule) == 20 and len(load_runs(out)) == 6
    md = (out / "record.md").read_text()
    assert "Sequential test (--until-significant)" in md and "Sequential test of the time gain" in md


def test_comparison_markdown_slower_candidate(tmp_path):
    # Seed 001 with the arms swapped: the "candidate" is the previous record, about a second slower.
    d = _campaign(tmp_path, list(zip(CAND_LOSSES, CAND_TIMES)), list(zip(BASE_LOSSES, BASE_TIMES)))
    md = comparison_markdown(d)
    slower = np.mean(BASE_TIMES) - np.mean(CAND_TIMES)
    assert f"These timings show the candidate {slower:.3f} s slower" in md
    assert "not shown faster at alpha=0.01" in md
    assert "Sequential test" not in md  # a fixed-N campaign has no sequential line


def test_compare_seed_base_gives_each_pair_a_new_seed(tmp_path):
    # A second campaign to pool with a first must not rerun its seeds: a seeded script repeats its losses at a
    # seed (our short track's step-80 loss at seed 1 was 4.7509 and 4.7525 in two sessions).
    from harness.cli import main
    from harness.results import load_runs

    fake = FIXTURES / "fake_track"
    runs = {}
    for base in (0, 2):  # the fake script: loss 3.2770 + 0.0003 * (7 * seed % 5)
        out = tmp_path / f"seeds{base}"
        assert main(["compare", str(fake), str(fake), "--runs", "2", "--seed-base", str(base), "--out", str(out),
                     "--no-telemetry", "--quiet"]) in (0, 4)  # every run ok (3: some failed); 4 is the target's verdict
        runs[base] = load_runs(out)
        assert [r.seed for r in runs[base]] == [base, base, base + 1, base + 1]
        log = (out / "runs" / "1" / "output.txt").read_text()
        assert f"SPEEDRUN_SEED={base}" in log.splitlines()[0]  # the run header: the environment the run was started with
    # the fake script's loss depends on its seed: new seeds, new losses
    assert {r.final_val_loss for r in runs[0]}.isdisjoint({r.final_val_loss for r in runs[2]})
