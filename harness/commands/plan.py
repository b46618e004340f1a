"""`speedrun plan`: the runs a claim needs, fixed-N against sequential (harness/plan.py), for given numbers or
a finished campaign's."""

from __future__ import annotations

from harness.errors import HarnessError
from harness.plan import campaign_estimates, make_plan, plan_text
from harness.rules import ALPHA


def cmd_plan(target: float | None = None, sigma: float | None = None, mean: float | None = None,
             power: float = 0.9, alpha: float = ALPHA, from_campaign: str | None = None) -> int:
    if from_campaign:
        c_target, c_sigma, c_mean, n = campaign_estimates(from_campaign)
        target = c_target if target is None else target
        sigma = c_sigma if sigma is None else sigma
        mean = c_mean if mean is None else mean
        print(f"from {from_campaign}: {n} finished runs, mean {c_mean:.4f}, sigma {c_sigma:.4f}")
    missing = [name for name, v in (("--target", target), ("--sigma", sigma), ("--mean", mean)) if v is None]
    if missing:
        raise HarnessError(f"plan needs {', '.join(missing)} (or --from CAMPAIGN)")
    print(plan_text(make_plan(target, sigma, mean, power=power, alpha=alpha)), end="")
    return 0

