"""The stop rules of --until-significant: after every finished run, a reason to stop the campaign, or None.

A campaign kind names its rule (results.KINDS); run_campaign calls the rule with the finished runs.
"""

from __future__ import annotations

from harness.results import CANDIDATE, Run, ok_runs, pair_differences
from harness.rules import ALPHA, DEFAULT_MAX_RUNS
from harness.sequential import LOSS_PRIOR, TIME_PRIOR, Decision, decide


def make_stop_rule(target: float, alpha: float = ALPHA, max_runs: int = DEFAULT_MAX_RUNS, kind: str = "one-sample"):
    """stop_rule(completed runs) -> a reason to stop, or None, for harness.campaign.run_campaign.

    one-sample: the runs' final losses against the target (`speedrun run --until-significant`).
    compare: the candidate must be both faster than the baseline (paired time differences, one per A/B
      pair) and below the target (its losses); decided after every complete pair. Each claim has its own
      alpha-level e-process, and both must pass (an intersection-union test), so the chance of wrongly
      claiming a record stays at alpha. A futile claim ends the campaign: the record cannot be made.
    """
    if kind not in RULES:
        raise ValueError(f"unknown stop-rule kind {kind!r}")

    def one_sample(completed: list[Run]) -> str | None:
        losses = [r.final_val_loss for r in ok_runs(completed)]
        d = decide(losses, target, alpha, max_runs, LOSS_PRIOR)
        return _reason(d, "loss") if d.stop and d.outcome != "budget" else None

    def compare(completed: list[Run]) -> str | None:
        if len(completed) % 2:  # decide only on complete A/B pairs
            return None
        pairs = pair_differences(completed)
        losses = [r.final_val_loss for r in ok_runs(completed, CANDIDATE)]
        dt = decide(pairs, 0.0, alpha, max_runs, TIME_PRIOR)
        dl = decide(losses, target, alpha, max_runs, LOSS_PRIOR)
        for d, what, unit in ((dt, "time gain", "pairs"), (dl, "candidate loss", "runs")):
            if d.stop and d.outcome == "futile":
                return _reason(d, what, unit)
        if dt.outcome == "significant" and dl.outcome == "significant":
            return f"{_reason(dt, 'time gain', 'pairs')}; {_reason(dl, 'candidate loss', 'runs')}"
        return None

    return {"one-sample": one_sample, "compare": compare}[kind]


RULES = ("one-sample", "compare")


def _reason(d: Decision, what: str, unit: str = "runs") -> str:
    return f"{what}: {d.outcome} after {d.n} {unit} ({d.reason})"
