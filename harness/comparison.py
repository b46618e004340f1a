"""A comparison of two arms on one node (`speedrun compare BASELINE CANDIDATE`), interleaved A B B A ...: its
schedule, its statistics and its section of record.md.

Why: nodes differ by about a second (seed 003: "appears I got a slightly slower machine this time"), so a
new record is argued against the previous record re-timed on the same machine (seed 001). Interleaving in
balanced A B B A blocks makes a linear drift of the node (warming up, a neighbour's load) cancel exactly
within every block of four runs, and each A/B pair gives a time difference measured minutes apart.

What the comparison reports (fixed-N, whatever the stopping rule was):
  * time: candidate - baseline, Welch's unequal-variance t interval (99%) and the one-sided Welch test
    that the candidate is faster (scipy.stats.ttest_ind(equal_var=False, alternative="less"));
  * loss: the same for the final validation loss (the candidate's own block tests it against the target);
  * telemetry, where it exists: whether SM clocks or throttling differed between the two arms;
  * with --until-significant: the anytime-valid sequential line (harness.sequential) for the time gain,
    computed on the per-pair differences.
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.logs import parse_log
from harness.results import (BASELINE, CANDIDATE, Run, arm_values, load_campaign, load_runs, ok_runs, pair_differences,
                             read_run_log)
from harness.rules import ALPHA, CONFIDENCE
from harness.sequential import TIME_PRIOR, paired_sequential_markdown
from harness.step_times import STAGE_WARMUP_STEPS, stage_windows, window_step_ms


# ---------------------------------------------------------------------------------------------------------
# The schedule


def balanced_order(runs_per_arm: int, first: str = BASELINE, second: str = CANDIDATE) -> list[str]:
    """A B B A A B B A ...: runs_per_arm of each, every consecutive pair (0,1), (2,3), ... holds one of each.

    Within each block of four (A B B A) the mean position of A equals that of B, so a drift that is linear
    in time adds the same to both arms' means; with an odd number of pairs the last pair is A B.
    """
    if runs_per_arm < 1:
        raise HarnessError(f"--runs must be at least 1, got {runs_per_arm}")
    order: list[str] = []
    for pair in range(runs_per_arm):
        order += [first, second] if pair % 2 == 0 else [second, first]
    return order


# ---------------------------------------------------------------------------------------------------------
# Statistics


@dataclass
class Difference:
    """candidate - baseline, with Welch's t interval and one-sided test of `candidate lower`."""

    n_baseline: int
    n_candidate: int
    mean_baseline: float
    mean_candidate: float
    std_baseline: float
    std_candidate: float
    diff: float  # mean_candidate - mean_baseline (negative: the candidate is lower / faster)
    se: float
    df: float
    ci_low: float
    ci_high: float
    p_lower: float  # one-sided Welch p-value that the candidate's mean is lower
    confidence: float = CONFIDENCE


def welch_difference(baseline: list[float], candidate: list[float], confidence: float = CONFIDENCE) -> Difference | None:
    """Welch's t on candidate - baseline; None when either arm has fewer than 2 values (no spread)."""
    a = np.asarray(baseline, dtype=float)
    b = np.asarray(candidate, dtype=float)
    if a.size < 2 or b.size < 2:
        return None
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    diff = float(b.mean() - a.mean())
    if se == 0:
        # Identical values within each arm: the difference is exact.
        p = 0.0 if diff < 0 else 1.0
        return Difference(a.size, b.size, float(a.mean()), float(b.mean()), 0.0, 0.0, diff, 0.0, math.inf,
                          diff, diff, p, confidence)
    # Welch-Satterthwaite degrees of freedom.
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    t = diff / se
    import scipy.stats  # deferred: a second of import that every campaign command would pay before its first launch

    q = scipy.stats.t.ppf(0.5 + confidence / 2, df)
    return Difference(
        n_baseline=int(a.size),
        n_candidate=int(b.size),
        mean_baseline=float(a.mean()),
        mean_candidate=float(b.mean()),
        std_baseline=float(a.std(ddof=1)),
        std_candidate=float(b.std(ddof=1)),
        diff=diff,
        se=se,
        df=float(df),
        ci_low=diff - q * se,
        ci_high=diff + q * se,
        p_lower=float(scipy.stats.t.cdf(t, df)),
        confidence=confidence,
    )


# ---------------------------------------------------------------------------------------------------------
# Telemetry: did the node behave the same for both arms?

# Reported as "different" only when the gap is both practically large and (with 2+ runs per arm) unlikely
# to be run-to-run noise (Welch two-sided p < 0.05). The H100 traces in tests/fixtures/telemetry show why
# the throttle threshold is wide: three identical training runs spent 59%, 69% and 75% of their window at
# the power cap, while their mean SM clocks agreed within 0.2%.
CLOCK_DIFF_FRACTION = 0.01  # mean SM clock differing by more than 1%
THROTTLE_DIFF_FRACTION = 0.10  # share of the timed window under a throttle reason differing by 10 points
NOISE_P = 0.05
THROTTLE_REASONS_SHOWN = ("sw_power_cap", "hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake")


def _throttle_fraction(summary: dict) -> float | None:
    """Share of the timed window during which a throttle reason was set (the worst single reason)."""
    window = summary.get("window")
    seconds = summary.get("throttle_s") or {}
    if not window or window[1] <= window[0] or not seconds:
        return None
    worst = max(float(seconds.get(r) or 0.0) for r in THROTTLE_REASONS_SHOWN)
    return worst / (window[1] - window[0])


def _differs(a: list[float], b: list[float], practical: float) -> bool:
    if abs(float(np.mean(b)) - float(np.mean(a))) <= practical:
        return False
    if len(a) >= 2 and len(b) >= 2 and (np.std(a) > 0 or np.std(b) > 0):
        import scipy.stats  # deferred, as in welch_difference

        with warnings.catch_warnings():  # one arm without spread makes scipy warn; the p-value is still right
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(scipy.stats.ttest_ind(a, b, equal_var=False).pvalue) < NOISE_P
    return True


def arm_telemetry(runs: list[Run]) -> dict[str, dict]:
    """Per arm: its finished runs, how many of them have telemetry, their mean SM clocks and throttle fractions."""
    arms = {}
    for arm in (BASELINE, CANDIDATE):
        done = ok_runs(runs, arm)
        sums = [r.telemetry for r in done if r.telemetry]
        clocks = [float(s["sm_clock_mean_mhz"]) for s in sums if s.get("sm_clock_mean_mhz") is not None]
        fracs = [f for f in (_throttle_fraction(s) for s in sums) if f is not None]
        arms[arm] = {"finished": len(done), "runs": len(sums), "sm_clock": clocks, "throttle_fraction": fracs}
    return arms


def telemetry_comparison(runs: list[Run]) -> dict | None:
    """Per-arm SM clock and throttling from the runs' telemetry summaries; None unless both arms have some."""
    arms = arm_telemetry(runs)
    if not arms[BASELINE]["sm_clock"] or not arms[CANDIDATE]["sm_clock"]:
        return None
    out = {"arms": arms, "differences": []}
    ca, cb = arms[BASELINE]["sm_clock"], arms[CANDIDATE]["sm_clock"]
    out["sm_clock_mean_mhz"] = {BASELINE: float(np.mean(ca)), CANDIDATE: float(np.mean(cb))}
    if _differs(ca, cb, CLOCK_DIFF_FRACTION * float(np.mean(ca))):
        out["differences"].append(f"mean SM clock {np.mean(ca):.0f} MHz (baseline) vs {np.mean(cb):.0f} MHz (candidate)")
    fa, fb = arms[BASELINE]["throttle_fraction"], arms[CANDIDATE]["throttle_fraction"]
    if fa and fb:
        out["throttle_fraction"] = {BASELINE: float(np.mean(fa)), CANDIDATE: float(np.mean(fb))}
        if _differs(fa, fb, THROTTLE_DIFF_FRACTION):
            out["differences"].append(f"throttled {np.mean(fa):.0%} (baseline) vs {np.mean(fb):.0%} (candidate) "
                                      f"of the timed window")
    return out


# ---------------------------------------------------------------------------------------------------------
# Where the two arms differ: the validation curve step by step, and the step time stage by stage

# The per-step loss table's interval: descriptive (is the candidate's curve level with the baseline's at each
# validation?), not the record rule's test, whose 99% the time and final-loss lines keep.
CURVE_CONFIDENCE = 0.95


def mean_sd_text(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1)"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} ({len(values)})"


def val_curve_table(runs: list[Run]) -> list[str]:
    """Markdown lines: every validation step of the ok runs, each arm's mean ± sd (n) and candidate - baseline
    with its Welch interval at CURVE_CONFIDENCE; [] when no ok run recorded a curve."""
    per_arm: dict[str, dict[int, list[float]]] = {BASELINE: {}, CANDIDATE: {}}
    for arm, by_step in per_arm.items():
        for r in ok_runs(runs, arm):
            for step, loss in r.val_curve or []:
                by_step.setdefault(int(step), []).append(float(loss))
    steps = sorted(set(per_arm[BASELINE]) | set(per_arm[CANDIDATE]))
    if not steps:
        return []
    lines = [f"Validation loss at each step (mean ± sd (runs); the difference with its {CURVE_CONFIDENCE:.0%} "
             "Welch interval where each arm has 2 runs or more):", "",
             f"| step | baseline | candidate | candidate - baseline ({CURVE_CONFIDENCE:.0%} CI) |",
             "| --- | --- | --- | --- |"]
    for step in steps:
        a, b = per_arm[BASELINE].get(step, []), per_arm[CANDIDATE].get(step, [])
        d = welch_difference(a, b, CURVE_CONFIDENCE)
        if d is not None:
            diff = f"{d.diff + 0.0:+.4f} ({d.ci_low + 0.0:+.4f} to {d.ci_high + 0.0:+.4f})"
        elif a and b:
            diff = f"{statistics.fmean(b) - statistics.fmean(a) + 0.0:+.4f}"
        else:
            diff = "-"
        lines.append(f"| {step} | {mean_sd_text(a, 4)} | {mean_sd_text(b, 4)} | {diff} |")
    return lines


def stage_time_table(campaign_dir: str | Path, runs: list[Run]) -> list[str]:
    """Markdown lines: ms per step of each arm over the same steps of every stage (harness.step_times), the stages
    as the candidate's log names them (else the baseline's); [] when no ok run's log names stages."""
    return pooled_stage_time_table([(Path(campaign_dir), runs)])


def pooled_stage_time_table(sources: list[tuple[Path, list[Run]]]) -> list[str]:
    """stage_time_table over the ok runs of several campaigns (campaign folder, its runs), the stages named by the
    first log that names them, candidate logs first."""
    ok = {arm: [(d, r) for d, runs in sources for r in ok_runs(runs, arm)] for arm in (BASELINE, CANDIDATE)}
    texts = {arm: [t for t in (read_run_log(d, r) for d, r in ok[arm]) if t is not None] for arm in ok}
    windows, source = next(((w, arm) for arm in (CANDIDATE, BASELINE) for text in texts[arm]
                            if (w := stage_windows(text))), ([], ""))
    if not windows:
        return []
    steps = {arm: [parse_log(t).steps for t in texts[arm]] for arm in texts}
    lines = [f"Step time per stage (ms per step, mean ± sd (runs), from each run's step lines over the same steps: "
             f"the stages the {source}'s log names, each without its first {STAGE_WARMUP_STEPS} steps and any "
             "step right after a validation):", "",
             "| stage | steps | baseline (ms) | candidate (ms) | candidate / baseline |", "| --- | --- | --- | --- | --- |"]
    for w in windows:
        ms = {arm: [v for v in (window_step_ms(st, w) for st in steps[arm]) if v is not None] for arm in steps}
        a, b = ms[BASELINE], ms[CANDIDATE]
        ratio = f"{statistics.fmean(b) / statistics.fmean(a):.3f}" if a and b and statistics.fmean(a) > 0 else "-"
        lines.append(f"| {w.name} | {w.label} | {mean_sd_text(a, 1)} | {mean_sd_text(b, 1)} | {ratio} |")
    missing = [arm for arm in ok if len(texts[arm]) < len(ok[arm])]
    if missing:
        lines += ["", "Not every ok run's log is in the campaign folder (" + ", ".join(missing)
                  + "): those runs are not in the stage times."]
    return lines


# ---------------------------------------------------------------------------------------------------------
# The markdown section under the two blocks


def _fmt_diff(d: Difference, unit: str, digits: int, claim: str) -> str:
    return (f"{d.diff + 0.0:+.{digits}f}{unit} ({d.confidence:.0%} CI {d.ci_low:+.{digits}f} to {d.ci_high:+.{digits}f}{unit}; "
            f"one-sided Welch test that the candidate is {claim}: p={d.p_lower:.4f}, df={d.df:.1f})")


def _why_no_telemetry(runs: list[Run]) -> str:
    """Which arm lacks what telemetry_comparison needs: a finished run, or a clock in its runs' telemetry."""
    unrecorded = "(CPU runs, no NVML, or --no-telemetry)"
    arms = arm_telemetry(runs)
    bare = [arm for arm, a in arms.items() if a["finished"] and not a["sm_clock"]]
    if len(bare) == 2:
        return f"not recorded for both arms {unrecorded}"
    reasons = [f"the {arm} has no finished run" for arm, a in arms.items() if not a["finished"]]
    reasons += [f"not recorded for the {arm}'s runs {unrecorded}" for arm in bare]
    return "; ".join(reasons)


def comparison_markdown(campaign_dir: str | Path) -> str:
    """The comparison of the two arms of a compare campaign, recomputed from its run.json files."""
    d = Path(campaign_dir)
    campaign = load_campaign(d)
    runs = load_runs(d)
    if not {BASELINE, CANDIDATE} <= set(campaign.arms or {}):
        raise HarnessError(f"{d}: not a compare campaign (it needs arms 'baseline' and 'candidate')")
    alpha = float(campaign.track.get("alpha", ALPHA))
    lines = ["### Candidate vs previous record (same node, interleaved A B B A)", ""]
    t_base, t_cand = arm_values(runs, BASELINE, "train_time_s"), arm_values(runs, CANDIDATE, "train_time_s")
    l_base, l_cand = arm_values(runs, BASELINE, "final_val_loss"), arm_values(runs, CANDIDATE, "final_val_loss")
    lines.append(f"- runs: {len(t_base)} baseline, {len(t_cand)} candidate finished ok")
    time_d = welch_difference(t_base, t_cand)
    loss_d = welch_difference(l_base, l_cand)
    if time_d is None or loss_d is None:
        lines.append("- too few finished runs in an arm (each needs at least 2) for an interval or a test")
    else:
        gain = -time_d.diff + 0.0
        verdict = "faster" if time_d.p_lower < alpha else f"not shown faster at alpha={alpha:g}"
        lines.append(f"- time (candidate - baseline): {_fmt_diff(time_d, ' s', 3, 'faster')}")
        lines.append(f"- loss (candidate - baseline): {_fmt_diff(loss_d, '', 4, 'lower')}")
        lines.append("")
        shown = (f"{gain:.3f} s of improvement" if gain >= 0 else f"the candidate {-gain:.3f} s slower")
        lines.append(f"These timings show {shown} ({time_d.confidence:.0%} CI of the gain "
                     f"{-time_d.ci_high + 0.0:.3f} to {-time_d.ci_low + 0.0:.3f} s): the candidate is {verdict}.")
    pairs = pair_differences(runs)
    if pairs:
        lines.append("")
        lines.append("Per-pair time differences (candidate - baseline, s): "
                     + ", ".join(f"{x:+.3f}" for x in pairs))
    seq = campaign.until_significant
    if seq and len(pairs) >= 1:
        lines.append("")
        lines.append(paired_sequential_markdown(pairs, alpha, TIME_PRIOR))
    for table in (val_curve_table(runs), stage_time_table(d, runs)):
        if table:
            lines += [""] + table
    tele = telemetry_comparison(runs)
    lines.append("")
    if tele is None:
        lines.append(f"Node telemetry: {_why_no_telemetry(runs)}, so clocks and throttling cannot be compared.")
    elif tele["differences"]:
        lines.append("Node telemetry: the arms ran under different conditions: " + "; ".join(tele["differences"])
                     + ". Part of the time difference may be the node, not the code (or the code's power draw).")
    else:
        c = tele["sm_clock_mean_mhz"]
        thr = tele.get("throttle_fraction")
        extra = (f", throttled {thr[BASELINE]:.0%} vs {thr[CANDIDATE]:.0%} of the timed window" if thr else "")
        lines.append(f"Node telemetry: no difference between the arms (mean SM clock {c[BASELINE]:.0f} vs "
                     f"{c[CANDIDATE]:.0f} MHz{extra}).")
    return "\n".join(lines) + "\n"
