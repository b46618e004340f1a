"""How many runs a claim needs, fixed-N against sequential (`speedrun plan`).

    speedrun plan --target 3.28 --sigma 0.0013 --mean 3.2785 [--power 0.9]
    speedrun plan --from results/short/<campaign>      # sigma and mean from a finished campaign

Fixed-N: the smallest n at which the one-sided one-sample t-test at alpha (the record rule) has the asked
power, computed exactly from the noncentral t distribution. Sequential: the procedure of
`--until-significant` (harness.sequential), simulated at the same mean and sigma, with a budget of twice
that n (at least 20 runs): its power, expected runs and how often it has stopped by the fixed-N count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness import sequential
from harness.errors import HarnessError
from harness.results import arm_series, claim_arm, load_campaign, load_runs
from harness.rules import ALPHA

PLAN_SIMS = 20000
# Bounded work for any input: the sequential budget is capped, and the simulated campaigns shrink as the
# budget grows (the work is about sims * budget * (budget + 400), the 400 being log_J's backward tail), in
# chunks that keep memory near 100 MB.
MAX_BUDGET = 200
SIM_WORK = 1.5e8
SIM_CHUNK_CELLS = 500_000
# The procedure only sees the direction of the data (it is scale invariant), so it is simulated at sigma 1;
# beyond this many sigmas every run is far below the target and the result no longer changes, while float64
# sums of squares would lose the spread.
SIM_EFFECT_LIMIT = 1000.0


@dataclass
class Plan:
    target: float
    sigma: float
    mean: float
    power: float
    alpha: float
    effect: float  # (mean - target) / sigma
    fixed_runs: int | None
    max_runs: int
    seq_power: float
    seq_mean_runs: float
    seq_stopped_by_fixed: float | None  # share of campaigns that stopped within fixed_runs runs
    sims: int = PLAN_SIMS  # simulated campaigns behind the sequential numbers


def campaign_estimates(campaign_dir: str | Path) -> tuple[float, float, float, int]:
    """(target, sigma, mean, runs) of the claim arm's finished runs of a campaign."""
    campaign = load_campaign(campaign_dir)
    losses, _ = arm_series(load_runs(campaign_dir), claim_arm(campaign))
    if len(losses) < 2:
        raise HarnessError(f"{campaign_dir}: needs at least 2 finished runs to estimate sigma, has {len(losses)}")
    return float(campaign.track["target"]), float(np.std(losses, ddof=1)), float(np.mean(losses)), len(losses)


def make_plan(target: float, sigma: float, mean: float, power: float = 0.9, alpha: float = ALPHA,
              sims: int = PLAN_SIMS, seed: int = 0) -> Plan:
    if not (math.isfinite(sigma) and sigma > 0):
        raise HarnessError(f"--sigma must be a positive number, got {sigma}")
    if not (0 < power < 1):
        raise HarnessError(f"--power must be between 0 and 1, got {power}")
    if not (0 < alpha < 1):
        raise HarnessError(f"--alpha must be between 0 and 1, got {alpha}")
    if not (math.isfinite(target) and math.isfinite(mean)):
        raise HarnessError("--target and --mean must be finite numbers")
    with np.errstate(over="ignore"):
        effect = float(np.float64(mean - target) / np.float64(sigma))  # -inf for a sigma next to nothing
    if effect >= 0:
        raise HarnessError(f"the mean {mean} is not below the target {target}: no number of runs gives the "
                           f"one-sided test any power")
    fixed = sequential.fixed_n_runs(effect, alpha=alpha, power=power)
    budget = min(max(20, 2 * fixed), MAX_BUDGET) if fixed else MAX_BUDGET
    sims = max(1, min(sims, int(SIM_WORK // (budget * (budget + 400)))))
    sim = sequential.simulate_sequential(max(effect, -SIM_EFFECT_LIMIT), 1.0, 0.0, sims, budget, alpha=alpha,
                              rng=np.random.default_rng(seed), chunk=max(1, SIM_CHUNK_CELLS // budget))
    by_fixed = float(np.mean(sim.rejected & (sim.runs <= fixed))) if fixed else None
    return Plan(target, sigma, mean, power, alpha, effect, fixed, budget, sim.reject_rate, sim.mean_runs, by_fixed,
                sims)


def plan_text(p: Plan) -> str:
    lines = [
        f"target {p.target}, mean {p.mean}, sigma {p.sigma}: the mean is {-p.effect:.2f} sigma below the target",
        (f"fixed-N (one-sided t-test, alpha {p.alpha:g}): {p.fixed_runs} runs for {p.power:.0%} power"
         if p.fixed_runs else f"fixed-N: more than {sequential.FIXED_N_MAX} runs for {p.power:.0%} power"),
        (f"sequential (--until-significant --max-runs {p.max_runs}): {p.seq_mean_runs:.1f} runs expected, "
         f"power {p.seq_power:.1%} within the budget"
         + (f", significant within {p.fixed_runs} runs in {p.seq_stopped_by_fixed:.0%} of campaigns"
            if p.seq_stopped_by_fixed is not None else "")),
        f"  ({sequential.PROCEDURE}, prior {sequential.LOSS_PRIOR.describe()}; {p.sims} simulated campaigns)",
    ]
    return "\n".join(lines) + "\n"
