"""Sequential testing that may look after every run: a scale-invariant t-test e-process.

Why: the record rule is a one-sided t-test at alpha 0.01 (docs/DESIGN.md "Record rules"). Running more runs
until p < 0.01 inflates the false-positive rate to about 0.056 when one looks after every run from n=3 to 20.
`--until-significant` must stop as soon as the evidence suffices without that inflation, with sigma unknown.

The procedure (named in every output line as PROCEDURE):
  * Data x_1..x_n, reference r (the target loss, or 0 for paired time differences); y_i = x_i - r.
    The claim is "mean < r". The standardized effect is delta = (mean - r) / sigma.
  * The e-value after n runs is the Bayes factor of the maximal invariant under rescaling (the direction of
    y), with a normal prior N(m, s^2) on delta against delta = 0. Because sigma is a group (scale) parameter
    and the right-Haar prior is used on it, this Bayes factor is a nonnegative martingale with mean 1 under
    the null for every sigma (Lai 1976, "On confidence sequences", Ann. Statist. 4; Perez-Ortiz, Lardy,
    de Heide, Grunwald 2024, "E-statistics, group invariance and anytime-valid testing", Ann. Statist. 52;
    Grunwald, de Heide, Koolen 2024, "Safe testing", JRSS-B 86).
  * Ville's inequality: P(sup_n E_n >= 1/alpha) <= alpha under the null. So stopping the first time
    E_n >= 1/alpha, or at any other data-dependent time, keeps the false-positive rate at alpha. The
    anytime-valid p-value is p_n = min(1, 1 / max_{k<=n} E_k).
  * Futility stops never reject, so they can only lower the false-positive rate.

Closed form used (derivation in the comments of `log_e_values`): with b_n = sum(y) / sqrt(sum(y^2)),
P = n + 1/s^2, A = 1 - b_n^2 / P, z = b_n m / (s^2 P sqrt(A)):
  log E_n = -1/2 log(1 + n s^2) - n/2 log A - n m^2 / (2 s^2 P) + log J(n, z),
  J(n, z) = int_0^inf v^(n-1) exp(-v^2/2 + z v) dv / (2^(n/2-1) Gamma(n/2)).
J is computed exactly by a three-term recurrence (see `log_J`); tests check it against scipy quadrature and
the e-value against the noncentral-t likelihood ratio integrated over the prior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harness.rules import ALPHA

PROCEDURE = "sequential t-test e-process (scale-invariant Bayes factor, Ville's inequality)"
CITATION = "Lai 1976; Perez-Ortiz et al. 2024, Ann. Statist. 52; Grunwald et al. 2024, JRSS-B 86"


@dataclass(frozen=True)
class EffectPrior:
    """Normal prior on the standardized effect delta = (mean - reference) / sigma; negative = below."""

    mean: float
    sd: float

    def describe(self) -> str:
        return f"delta ~ N({self.mean:g}, {self.sd:g}^2)"


# Loss: the seed records sit 0.9 to 1.7 sigma below the target (means 3.2780-3.2787, sigma 0.0012-0.0014
# against 3.28), so the prior is centred there. The e-value is valid for any prior; the prior only decides
# which effects are detected quickly (chosen by `speedrun bench-sequential`, see commands/bench_sequential.py).
LOSS_PRIOR = EffectPrior(mean=-1.25, sd=0.25)
# Paired time differences (candidate - baseline, one pair per A/B block): record gains are 0.3-3 s against a
# pair spread of 0.05-0.15 s, so effects range from about -2 to -30 sigma: a wide prior.
TIME_PRIOR = EffectPrior(mean=-3.0, sd=3.0)

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def log_J(k, z, tail: int = 400) -> np.ndarray:
    """log J(k, z), J(k, z) = I_k(z) / (2^(k/2-1) Gamma(k/2)), I_k(z) = int_0^inf v^(k-1) e^(-v^2/2 + z v) dv.

    I_1 = sqrt(2 pi) e^(z^2/2) Phi(z) and, integrating by parts, I_(k+2) = z I_(k+1) + k I_k. For z >= -1/2
    the forward recurrence on the ratio r_k = I_(k+1)/I_k only adds positive terms (stable). For z < -1/2,
    I_k is the minimal solution, so the ratio comes from the backward recurrence r_k = k / (r_(k+1) - z),
    started `tail` steps above at the saddle-point value, which contracts the starting error away.
    """
    import scipy.special  # deferred (all scipy here): its import costs every campaign command a second before launch
    k_arr, z_arr = np.broadcast_arrays(np.asarray(k, dtype=np.int64), np.asarray(z, dtype=float))
    shape = z_arr.shape
    k_flat = k_arr.ravel()
    z_flat = z_arr.ravel()
    if k_flat.size and k_flat.min() < 1:
        raise ValueError("log_J needs k >= 1")
    log_i1 = _LOG_SQRT_2PI + z_flat * z_flat / 2 + scipy.special.log_ndtr(z_flat)
    log_ik = log_i1.copy()

    forward = z_flat >= -0.5
    if forward.any():
        zz, kk = z_flat[forward], k_flat[forward]
        total = np.zeros_like(zz)
        ratio = zz + np.exp(-log_i1[forward])  # I_2 / I_1 = (1 + z I_1) / I_1
        for j in range(1, int(kk.max())):
            total += np.where(j < kk, np.log(ratio), 0.0)
            ratio = zz + j / ratio
        log_ik[forward] += total

    backward = ~forward
    if backward.any():
        zz, kk = z_flat[backward], k_flat[backward]
        total = np.zeros_like(zz)
        top = int(kk.max()) + tail
        ratio = (zz + np.sqrt(zz * zz + 4 * (top + 0.5))) / 2  # saddle point of v^top e^(-v^2/2+zv)
        for j in range(top, 0, -1):
            ratio = j / (ratio - zz)  # now r_j = I_(j+1) / I_j
            total += np.where(j < kk, np.log(ratio), 0.0)
        log_ik[backward] += total

    log_norm = (k_flat / 2 - 1) * math.log(2) + scipy.special.gammaln(k_flat / 2)
    return (log_ik - log_norm).reshape(shape)


def log_e_values(x, reference: float, prior: EffectPrior) -> np.ndarray:
    """log E_1..log E_n along the last axis of x (any leading axes: many campaigns at once).

    Derivation (Wijsman's representation of the invariant likelihood ratio, scale group, right-Haar measure):
      LR_n(delta) = int_0^inf c^(n-1) prod phi(c y_i - delta) dc / int_0^inf c^(n-1) prod phi(c y_i) dc
                  = e^(-n delta^2/2) J(n, delta b_n),  b_n = sum y / sqrt(sum y^2),
    which equals the ratio of noncentral-t to central-t densities of the t statistic (n >= 2). Mixing
    delta over N(m, s^2) inside the c-integral is a Gaussian integral and leaves J(n, z) with the z above.
    """
    y = np.asarray(x, dtype=float) - reference
    if y.shape[-1] == 0:
        return np.zeros(y.shape)
    n = np.arange(1, y.shape[-1] + 1, dtype=float)
    s1 = np.cumsum(y, axis=-1)
    s2 = np.cumsum(y * y, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        b = np.where(s2 > 0, s1 / np.sqrt(np.where(s2 > 0, s2, 1.0)), 0.0)  # no direction while every y is 0
    return log_e_from_direction(np.broadcast_to(n, y.shape), b, prior)


def log_e_from_direction(n, b, prior: EffectPrior) -> np.ndarray:
    """log E_n from n and b = sum(y) / sqrt(sum(y^2)) (the statistic the invariant e-value depends on)."""
    n = np.asarray(n, dtype=float)
    b = np.clip(np.asarray(b, dtype=float), -np.sqrt(n), np.sqrt(n))  # Cauchy-Schwarz bound; guards rounding
    m, g = prior.mean, prior.sd**2
    p = n + 1.0 / g
    a = 1.0 - b * b / p
    z = b * m / (g * p * np.sqrt(a))
    return -0.5 * np.log1p(n * g) - n / 2 * np.log(a) - n * m * m / (2 * g * p) + log_J(n.astype(np.int64), z)


def direction_from_t(n, t) -> np.ndarray:
    """b for a sample of size n whose t statistic is t: b^2 = n t^2 / (n - 1 + t^2), same sign as t."""
    n = np.asarray(n, dtype=float)
    t = np.asarray(t, dtype=float)
    return np.sign(t) * np.sqrt(n * t * t / (n - 1 + t * t))


def e_values(x, reference: float, prior: EffectPrior) -> np.ndarray:
    return np.exp(log_e_values(x, reference, prior))


def anytime_p_value(x, reference: float, prior: EffectPrior) -> float:
    """min(1, 1 / max_k E_k): valid at any stopping time (Ville)."""
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return 1.0
    return float(min(1.0, math.exp(-float(np.max(log_e_values(x, reference, prior))))))


# ---------------------------------------------------------------------------------------------------------
# Stopping: success when E >= 1/alpha; futility ("clearly will not") by two rules, both of which only ever
# stop without rejecting, so neither can raise the false-positive rate:
#   1. reverse evidence: the mirrored e-process (claim "mean > reference") reaches 1/FUTILITY_ALPHA, i.e.
#      there is anytime-valid evidence that the candidate is worse than the reference;
#   2. projection: even if the data kept the mean at the optimistic end of its one-sided 95% interval (and
#      their spread), the e-value after the full budget of runs would stay below 1/alpha.

FUTILITY_ALPHA = 0.05
FUTILITY_CONFIDENCE = 0.95
MIN_RUNS = 3  # no decision before 3 runs: the block needs a spread; the e-value is valid from n=1 anyway


@dataclass
class Decision:
    n: int
    e_value: float  # current E_n
    p_value: float  # anytime-valid p = min(1, 1/max E)
    stop: bool
    outcome: str  # "significant", "futile", "budget", "continue"
    reason: str


def _mirror(prior: EffectPrior) -> EffectPrior:
    return EffectPrior(mean=-prior.mean, sd=prior.sd)


def projected_log_e(mean_dev, sd, n_final: int, prior: EffectPrior) -> np.ndarray:
    """log E that n_final runs would give if their mean deviation and spread were mean_dev and sd."""
    mean_dev = np.asarray(mean_dev, dtype=float)
    sd = np.asarray(sd, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(sd > 0, mean_dev / np.where(sd > 0, sd, 1.0) * math.sqrt(n_final), -np.sign(mean_dev) * np.inf)
    t = np.clip(np.nan_to_num(t), -1e6, 1e6)
    return log_e_from_direction(np.full(t.shape, n_final), direction_from_t(n_final, t), prior)


def decide(x, reference: float, alpha: float, max_runs: int, prior: EffectPrior, min_runs: int = MIN_RUNS) -> Decision:
    """Whether a campaign with results x (in order) should stop now."""
    import scipy.stats  # deferred, see log_J
    x = np.asarray(x, dtype=float)
    n = int(x.size)
    if n == 0:
        return Decision(0, 1.0, 1.0, False, "continue", "no runs yet")
    log_e = log_e_values(x, reference, prior)
    e_now = float(np.exp(log_e[-1]))
    p = float(min(1.0, math.exp(-float(np.max(log_e)))))
    threshold = math.log(1.0 / alpha)
    if n >= min_runs and np.max(log_e) >= threshold:
        return Decision(n, e_now, p, True, "significant", f"E={float(np.exp(np.max(log_e))):.3g} >= 1/alpha={1 / alpha:g}")
    if n >= max_runs:
        return Decision(n, e_now, p, True, "budget", f"reached --max-runs {max_runs} without E >= {1 / alpha:g}")
    if n >= min_runs:
        log_e_rev = log_e_values(x, reference, _mirror(prior))
        if np.max(log_e_rev) >= math.log(1.0 / FUTILITY_ALPHA):
            return Decision(n, e_now, p, True, "futile", "anytime-valid evidence that the mean is above the reference")
        sd = float(np.std(x, ddof=1))
        mean_dev = float(np.mean(x)) - reference
        optimistic = mean_dev - scipy.stats.t.ppf(FUTILITY_CONFIDENCE, n - 1) * sd / math.sqrt(n)
        if float(projected_log_e(optimistic, sd, max_runs, prior)) < threshold:
            return Decision(n, e_now, p, True, "futile", f"even the optimistic end of the {FUTILITY_CONFIDENCE:.0%} interval would not reach E >= {1 / alpha:g} within {max_runs} runs")
    return Decision(n, e_now, p, False, "continue", "")


# ---------------------------------------------------------------------------------------------------------
# Simulation (vectorized over campaigns): the error rate under continuous monitoring and the runs it takes.


@dataclass
class SimulationResult:
    sims: int
    reject_rate: float  # fraction of campaigns that ended "significant"
    reject_se: float  # its Monte-Carlo standard error
    mean_runs: float  # expected runs until the campaign stopped
    runs: np.ndarray  # runs of every campaign
    rejected: np.ndarray  # whether each campaign ended significant


def simulate_sequential(
    mean: float,
    sigma: float,
    target: float,
    sims: int,
    max_runs: int,
    prior: EffectPrior = LOSS_PRIOR,
    alpha: float = ALPHA,
    futility: bool = True,
    min_runs: int = MIN_RUNS,
    rng: np.random.Generator | None = None,
    chunk: int = 20000,
) -> SimulationResult:
    """`sims` campaigns of normal runs N(mean, sigma^2), each monitored after every run by exactly the rules
    of `decide` against `target`, up to max_runs. Returns how often they end significant (the false-positive
    rate when mean >= target) and how many runs they take."""
    rng = rng or np.random.default_rng(0)
    runs_all, rejected_all = [], []
    for start in range(0, sims, chunk):
        size = min(chunk, sims - start)
        x = mean + sigma * rng.standard_normal((size, max_runs))
        rejected, runs = _stop_times(x, target, alpha, max_runs, prior, futility, min_runs)
        runs_all.append(runs)
        rejected_all.append(rejected)
    runs = np.concatenate(runs_all)
    rejected = np.concatenate(rejected_all)
    return _result(rejected, runs)


def _result(rejected: np.ndarray, runs: np.ndarray) -> SimulationResult:
    rate = float(rejected.mean())
    se = math.sqrt(max(rate * (1 - rate), 1e-12) / rejected.size)
    return SimulationResult(int(rejected.size), rate, se, float(runs.mean()), runs, rejected)


def _stop_times(x, reference, alpha, max_runs, prior, futility, min_runs):
    """For each row of x: (ended significant?, runs until stop) under the rules of `decide`."""
    import scipy.stats  # deferred, see log_J
    size, m = x.shape
    k = np.arange(1, m + 1)
    threshold = math.log(1.0 / alpha)
    log_e = log_e_values(x, reference, prior)
    success = (k >= min_runs) & (np.maximum.accumulate(log_e, axis=1) >= threshold)  # as decide: max E so far
    stop = success | (k >= max_runs)
    if futility:
        log_rev = log_e_values(x, reference, _mirror(prior))
        rev_hit = np.maximum.accumulate(log_rev, axis=1) >= math.log(1.0 / FUTILITY_ALPHA)
        y = x - reference
        s1 = np.cumsum(y, axis=1)
        s2 = np.cumsum(y * y, axis=1)
        mean = s1 / k
        with np.errstate(invalid="ignore", divide="ignore"):
            var = (s2 - k * mean * mean) / (k - 1)
        sd = np.sqrt(np.clip(np.nan_to_num(var), 0, None))
        tq = np.array([scipy.stats.t.ppf(FUTILITY_CONFIDENCE, kk - 1) if kk > 1 else 0.0 for kk in k])
        optimistic = mean - tq * sd / np.sqrt(k)  # column 1 is never used (k < min_runs)
        proj = np.full(x.shape, np.inf)
        cols = k >= min_runs
        proj[:, cols] = projected_log_e(optimistic[:, cols], sd[:, cols], max_runs, prior)
        futile = (k >= min_runs) & (rev_hit | (proj < threshold))
        stop = stop | futile
    first = np.argmax(stop, axis=1)  # every row stops by max_runs
    return success[np.arange(size), first], first + 1


def naive_repeated_ttest_error(sims: int, first_look: int, max_runs: int, alpha: float = ALPHA, rng: np.random.Generator | None = None) -> SimulationResult:
    """The false-positive rate of testing the fixed-N t-test after every run from first_look to max_runs and
    stopping at the first p < alpha (what adding runs until p < 0.01 does). Data at the null: mean = target."""
    import scipy.stats  # deferred, see log_J
    rng = rng or np.random.default_rng(0)
    x = rng.standard_normal((sims, max_runs))
    k = np.arange(1, max_runs + 1)
    s1 = np.cumsum(x, axis=1)
    s2 = np.cumsum(x * x, axis=1)
    mean = s1 / k
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(np.clip((s2 - k * mean * mean) / (k - 1), 0, None))
        t = mean / (sd / np.sqrt(k))
    crit = np.array([scipy.stats.t.ppf(alpha, kk - 1) if kk > 1 else -np.inf for kk in k])
    hit = (k >= first_look) & (t < crit)
    rejected = hit.any(axis=1)
    runs = np.where(rejected, np.argmax(hit, axis=1) + 1, max_runs)
    return _result(rejected, runs)


FIXED_N_MAX = 10**9


def t_test_power(n: int, effect: float, alpha: float = ALPHA) -> float:
    """Power of the one-sided one-sample t-test at alpha with n runs at standardized effect (exact)."""
    import scipy.integrate  # deferred, see log_J
    import scipy.stats  # deferred, see log_J
    crit = scipy.stats.t.ppf(alpha, n - 1)
    nc = effect * math.sqrt(n)
    # reject when t < crit; t ~ noncentral t(n-1, nc)
    with np.errstate(all="ignore"):
        p = float(scipy.stats.nct.cdf(crit, n - 1, nc))
    if math.isfinite(p):
        return p
    # scipy's series gives nan far out in the tails: average P(Z < crit sqrt(V/df) - nc) over V ~ chi2(df)
    df = n - 1
    f = lambda u: scipy.stats.norm.cdf(crit * math.sqrt(scipy.stats.chi2.ppf(u, df) / df) - nc)  # noqa: E731
    return float(scipy.integrate.quad(f, 0.0, 1.0, limit=200)[0])


def fixed_n_runs(effect: float, alpha: float = ALPHA, power: float = 0.9, n_max: int = FIXED_N_MAX) -> int | None:
    """Smallest n whose one-sided one-sample t-test at alpha has this power at standardized effect `effect`
    (negative = below the target). Exact: noncentral t. None when n_max runs are not enough. Power grows
    with n, so a bisection finds it in about log2(n_max) evaluations whatever the effect."""
    if not effect < 0:
        return None
    if t_test_power(2, effect, alpha) >= power:
        return 2
    if t_test_power(n_max, effect, alpha) < power:
        return None
    lo, hi = 2, n_max  # power(lo) < power <= power(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if t_test_power(mid, effect, alpha) >= power:
            hi = mid
        else:
            lo = mid
    return hi


# ---------------------------------------------------------------------------------------------------------
# The line under the record block (the stop rules that use this test are in stop_rules.py).


def sequential_markdown(losses: list[float], target: float, alpha: float = ALPHA) -> str:
    """The line under the record block of an --until-significant campaign."""
    losses = [float(x) for x in losses]
    if not losses:
        return "Sequential test: no finished runs."
    log_e = log_e_values(np.asarray(losses), target, LOSS_PRIOR)
    e_now, e_max = math.exp(float(log_e[-1])), math.exp(float(np.max(log_e)))
    p = min(1.0, 1.0 / e_max)
    verdict = "passes" if p <= alpha else "does not pass"
    return (f"Sequential test (--until-significant): {PROCEDURE}; prior {LOSS_PRIOR.describe()} on "
            f"delta = (mean - {target!r}) / sigma; {CITATION}. After {len(losses)} runs E = {e_now:.4g} "
            f"(max {e_max:.4g}), anytime-valid p = {p:.4f}: {verdict} at alpha = {alpha:g}. The block's p is the "
            f"fixed-N t-test's and is only valid for a run count fixed in advance; this p stays valid although "
            f"the campaign looked after every run.")


def paired_sequential_markdown(pair_diffs: list[float], alpha: float = ALPHA, prior: EffectPrior = TIME_PRIOR) -> str:
    """The sequential line for the time gain of a compare campaign (per-pair differences, reference 0)."""
    if not pair_diffs:
        return "Sequential test of the time gain: no complete A/B pair."
    log_e = log_e_values(np.asarray(pair_diffs, dtype=float), 0.0, prior)
    e_now, e_max = math.exp(float(log_e[-1])), math.exp(float(np.max(log_e)))
    p = min(1.0, 1.0 / e_max)
    verdict = "faster" if p <= alpha else "not shown faster"
    return (f"Sequential test of the time gain (--until-significant): {PROCEDURE} on the {len(pair_diffs)} "
            f"per-pair differences; prior {prior.describe()} on delta = mean difference / sigma; {CITATION}. "
            f"E = {e_now:.4g} (max {e_max:.4g}), anytime-valid p = {p:.4f}: {verdict} at alpha = {alpha:g}.")
