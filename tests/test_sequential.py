"""The sequential test of --until-significant: its arithmetic, its validity under continuous monitoring
(simulated), and its hooks into campaigns (stop rule, the line under the block)."""

import math
from dataclasses import replace

import numpy as np
import pytest
import scipy.integrate
import scipy.stats

from harness.results import Run
from harness.stop_rules import make_stop_rule
from harness.sequential import (ALPHA, LOSS_PRIOR, TIME_PRIOR, EffectPrior, _stop_times, anytime_p_value, decide,
                                e_values, fixed_n_runs, log_e_values, log_J,
                                naive_repeated_ttest_error, paired_sequential_markdown, sequential_markdown,
                                simulate_sequential)

TARGET = 3.28
SEED_001 = [3.2767, 3.2777, 3.2795, 3.2774, 3.2799, 3.2779, 3.2777]  # seed 001's block
SEED_003 = [3.2788, 3.2774, 3.2786, 3.2792, 3.2762, 3.2769, 3.2781, 3.2778, 3.2761, 3.2783, 3.2809]


def _log_j_quad(k: int, z: float) -> float:
    # Reference: the defining integral by adaptive quadrature, scaled at its peak to avoid overflow.
    peak = (z + math.sqrt(z * z + 4 * (k - 1))) / 2 if k > 1 else max(z, 0.0)
    log_f = lambda v: (k - 1) * math.log(v) - v * v / 2 + z * v  # noqa: E731
    ref = log_f(peak) if peak > 0 else 0.0
    val, _ = scipy.integrate.quad(lambda v: math.exp(log_f(v) - ref) if v > 0 else float(k == 1 and ref == 0),
                                  0, max(60, 3 * peak + 60), points=[peak] if peak > 0 else None, limit=500,
                                  epsabs=0, epsrel=1e-12)
    return math.log(val) + ref - ((k / 2 - 1) * math.log(2) + math.lgamma(k / 2))


@pytest.mark.parametrize("k", [1, 2, 3, 5, 10, 20, 50, 150])
def test_log_j_matches_quadrature(k):
    zs = [-40.0, -10.0, -3.0, -0.6, -0.5, -0.01, 0.0, 0.3, 2.0, 10.0, 25.0]
    got = log_J(np.full(len(zs), k), np.array(zs))
    for z, g in zip(zs, got):
        want = _log_j_quad(k, z)
        assert abs(g - want) <= 1e-8 * max(1.0, abs(want)), (k, z, g, want)


def test_e_value_is_the_noncentral_t_likelihood_ratio_mixed_over_the_prior():
    # Independent route: ratio of noncentral-t to central-t densities of the t statistic, integrated over
    # the prior on delta with scipy. This is the definition the closed form must reproduce.
    e = e_values(SEED_001, TARGET, LOSS_PRIOR)
    for k in range(2, len(SEED_001) + 1):
        y = np.array(SEED_001[:k]) - TARGET
        t = y.mean() / (y.std(ddof=1) / math.sqrt(k))
        f = lambda d: (scipy.stats.norm.pdf(d, LOSS_PRIOR.mean, LOSS_PRIOR.sd)  # noqa: E731
                       * scipy.stats.nct.pdf(t, k - 1, d * math.sqrt(k)) / scipy.stats.t.pdf(t, k - 1))
        want, _ = scipy.integrate.quad(f, -10, 10, epsabs=0, epsrel=1e-10)
        assert e[k - 1] == pytest.approx(want, rel=1e-7)


def test_first_run_only_carries_its_sign():
    # With one run, the scale-invariant evidence is P(sign | delta) / P(sign | 0), mixed over the prior.
    prior = EffectPrior(-1.0, 0.5)
    below = e_values([TARGET - 0.001], TARGET, prior)[0]
    above = e_values([TARGET + 0.004], TARGET, prior)[0]
    p_below = scipy.stats.norm.cdf(-prior.mean / math.sqrt(1 + prior.sd**2))
    assert below == pytest.approx(2 * p_below, rel=1e-10)
    assert above == pytest.approx(2 * (1 - p_below), rel=1e-10)


def test_scale_and_location_invariance():
    x = np.array(SEED_003)
    e1 = log_e_values(x, TARGET, LOSS_PRIOR)
    e2 = log_e_values((x - TARGET) * 37.0 + 100.0, 100.0, LOSS_PRIOR)
    np.testing.assert_allclose(e1, e2, rtol=1e-9, atol=1e-12)


def test_e_value_has_mean_one_under_the_null():
    # A test martingale: E[E_n] = 1 at delta = 0 for every n (here n = 4, 200k draws; Monte-Carlo check).
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200_000, 4)) * 0.0013 + TARGET
    e4 = np.exp(log_e_values(x, TARGET, LOSS_PRIOR)[:, -1])
    assert e4.mean() == pytest.approx(1.0, abs=4 * e4.std() / math.sqrt(len(e4)))


def test_seed_records_evidence():
    # Seed 003's 11 runs are strong evidence; the anytime p is larger than the fixed-N p (the price of looking).
    p003 = anytime_p_value(SEED_003, TARGET, LOSS_PRIOR)
    fixed = scipy.stats.ttest_1samp(SEED_003, TARGET, alternative="less").pvalue
    assert p003 < ALPHA
    assert p003 > fixed
    # Runs above the target give no evidence at all.
    assert anytime_p_value([3.2810, 3.2805, 3.2820, 3.2811], TARGET, LOSS_PRIOR) == 1.0


def test_error_rate_under_continuous_monitoring_stays_at_alpha():
    # 20k campaigns at the null's worst case (mean == target) with the seeds' sigma, looked at after every
    # run from 3 to 20: the false-positive rate must not exceed alpha beyond Monte-Carlo error.
    sims = 20_000
    se_at_alpha = math.sqrt(ALPHA * (1 - ALPHA) / sims)
    seq = simulate_sequential(TARGET, 0.0013, TARGET, sims, 20, rng=np.random.default_rng(7))
    assert seq.reject_rate <= ALPHA + 2.6 * se_at_alpha
    # ...and it is not a test that never rejects: well above zero.
    assert seq.reject_rate > 0.002
    # The naive rule (fixed-N t-test after every run, stop at p < 0.01) inflates it to about 0.056.
    naive = naive_repeated_ttest_error(sims, 3, 20, rng=np.random.default_rng(8))
    assert 0.045 < naive.reject_rate < 0.068


def test_futility_stops_never_add_rejections():
    # Same data with and without the futility rules: every campaign that rejects with them rejects without.
    rng = np.random.default_rng(3)
    for effect in (0.0, -0.5, -1.2):
        x = TARGET + 0.0013 * (effect + rng.standard_normal((4000, 20)))
        with_f, runs_f = _stop_times(x, TARGET, ALPHA, 20, LOSS_PRIOR, True, 3)
        without, runs_n = _stop_times(x, TARGET, ALPHA, 20, LOSS_PRIOR, False, 3)
        assert not np.any(with_f & ~without)
        assert np.all(runs_f <= runs_n)
        if effect == 0.0:
            null_runs = runs_f
    # Under the null, futility ends campaigns early: far fewer runs than the budget.
    assert null_runs.mean() < 20


def test_vectorized_simulation_follows_decide():
    # The simulation must apply exactly the rules a real campaign applies (decide, run by run).
    rng = np.random.default_rng(11)
    x = TARGET + 0.0013 * (-1.0 + rng.standard_normal((60, 12)))
    rejected, runs = _stop_times(x, TARGET, ALPHA, 12, LOSS_PRIOR, True, 3)
    for row, rej, n in zip(x, rejected, runs):
        for k in range(1, 13):
            d = decide(row[:k], TARGET, ALPHA, 12, LOSS_PRIOR)
            if d.stop:
                break
        assert k == n
        assert (d.outcome == "significant") == bool(rej)


def test_fixed_n_power_against_simulation():
    n = fixed_n_runs(-1.0, power=0.9)
    # n is the smallest with power >= 0.9: check by simulation at n and the exact value at n - 1.
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40_000, n)) - 1.0
    p = scipy.stats.ttest_1samp(x, 0.0, axis=1, alternative="less").pvalue
    assert (p < ALPHA).mean() == pytest.approx(0.9, abs=0.03)
    crit = scipy.stats.t.ppf(ALPHA, n - 2)
    assert scipy.stats.nct.cdf(crit, n - 2, -1.0 * math.sqrt(n - 1)) < 0.9


def test_sequential_saves_runs_at_the_seed_numbers():
    # sigma 0.0014, mean 3.2787 (delta = -0.93): fixed-N needs 18 runs for 90% power; the sequential
    # procedure with a budget of 20 stops earlier on average.
    n90 = fixed_n_runs((3.2787 - TARGET) / 0.0014, power=0.9)
    sim = simulate_sequential(3.2787, 0.0014, TARGET, 4000, 20, rng=np.random.default_rng(2))
    assert sim.mean_runs < n90 - 2


def _runs(losses, arm="main", times=None):
    times = times or [100.0] * len(losses)
    return [Run.from_json({"index": k, "arm": arm, "status": "ok", "final_val_loss": v, "train_time_s": t})
            for k, (v, t) in enumerate(zip(losses, times))]


def test_one_sample_stop_rule():
    rule = make_stop_rule(TARGET, ALPHA, 20)
    assert rule(_runs(SEED_003[:4])) is None  # too early to tell
    reason = rule(_runs(SEED_003))
    assert reason is not None and "significant" in reason
    futile = rule(_runs([3.2810, 3.2815, 3.2808, 3.2812]))
    assert futile is not None and "futile" in futile
    # Failed runs carry no loss and are skipped.
    runs = _runs(SEED_003) + [Run.from_json({"index": 11, "arm": "main", "status": "failed", "final_val_loss": None})]
    assert rule(runs) == reason


def test_compare_stop_rule_needs_both_claims():
    rule = make_stop_rule(TARGET, ALPHA, 20, kind="compare")
    runs = []
    for j in range(12):
        first, second = ("baseline", "candidate") if j % 2 == 0 else ("candidate", "baseline")
        for arm in (first, second):
            t = 98.80 + 0.02 * (j % 3) if arm == "baseline" else 97.77 + 0.02 * ((j + 1) % 3)
            loss = SEED_003[j % len(SEED_003)] if arm == "candidate" else 3.2790
            runs.append(Run(index=len(runs), arm=arm, seed=None, status="ok", final_val_loss=loss, train_time_s=t))
    assert rule(runs[:7]) is None  # odd: mid-pair
    assert rule(runs[:8]) is None  # faster already, but 4 candidate losses are not enough yet
    stops = [n for n in range(2, len(runs) + 1, 2) if rule(runs[:n])]
    assert stops and "time gain: significant" in rule(runs[: stops[0]])
    assert "candidate loss: significant" in rule(runs[: stops[0]])
    # A slower candidate is futile on time.
    slow = [replace(r, train_time_s=r.train_time_s + (2.0 if r.arm == "candidate" else 0.0)) for r in runs]
    reasons = [rule(slow[:n]) for n in range(2, 13, 2)]
    assert any(r and "time gain: futile" in r for r in reasons)


def test_markdown_lines_name_the_procedure_and_p():
    line = sequential_markdown(SEED_003, TARGET, ALPHA)
    p = anytime_p_value(SEED_003, TARGET, LOSS_PRIOR)
    assert "e-process" in line and "Ville" in line and f"p = {p:.4f}" in line and "passes" in line
    weak = sequential_markdown(SEED_001[:3], TARGET, ALPHA)
    assert "does not pass" in weak
    pl = paired_sequential_markdown([-1.0, -1.1, -0.95, -1.05], ALPHA, TIME_PRIOR)
    assert "faster at alpha" in pl and "4 per-pair differences" in pl


def test_bench_command_reports_error_rates_and_runs(capsys):
    from harness.commands.bench_sequential import bench_results
    from harness.cli import main

    res = bench_results(sims=3000, max_runs=(20,), seed=1)
    for row in res["null"]:
        assert row["sequential"] <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / 3000)
        assert row["naive"] > 3 * ALPHA  # the naive rule's inflation shows even at 3000 campaigns
        assert row["above_target"] <= row["sequential"] + 0.002
    for row in res["alternatives"]:
        assert row["fixed_90"] == fixed_n_runs(row["effect"], power=0.9)
        assert row["saved_vs_90"] == pytest.approx(row["fixed_90"] - row["mean_runs"])
        assert 3 <= row["mean_runs"] <= 20
    assert main(["bench-sequential", "--sims", "1000"]) == 0
    out = capsys.readouterr().out
    assert "False-positive rate at the null" in out and "compare at equal power" in out


def test_run_until_significant_end_to_end(tmp_path):
    # The fake track's runs all land below its target with little spread: the campaign must stop as soon as
    # E >= 100 (well before the budget) and put the sequential line under the fixed-N block.
    from pathlib import Path

    from harness.results import load_campaign, load_runs
    from harness.cli import main

    fake = Path(__file__).parent / "fixtures" / "fake_track"
    out = tmp_path / "seq"
    assert main(["run", str(fake), "--until-significant", "--max-runs", "15", "--out", str(out), "--no-telemetry",
                 "--quiet"]) == 0
    campaign = load_campaign(out)
    runs = load_runs(out)
    assert campaign.status == "stopped-early" and "loss: significant" in campaign.stop_reason
    losses = [r.final_val_loss for r in runs]
    log_e = log_e_values(losses, 3.28, LOSS_PRIOR)
    assert log_e[-1] >= math.log(100) and np.all(log_e[:-1] < math.log(100))  # stopped at the first crossing
    assert len(runs) < 15
    md = (out / "record.md").read_text()
    assert "# p=" in md  # the fixed-N block stays
    assert f"anytime-valid p = {anytime_p_value(losses, 3.28, LOSS_PRIOR):.4f}" in md
