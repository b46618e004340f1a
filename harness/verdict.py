"""The verdict of a campaign: PASS or FAIL of its claim arm's mean final loss against the target at alpha.

One line, printed last by every campaign command and at the top of record.md.
"""

from __future__ import annotations

from harness.record_block import block_numbers
from harness.results import Campaign, Run, arm_series, claim_arm, failed_runs, kind_of
from harness.sequential import LOSS_PRIOR, anytime_p_value


def verdict(campaign: Campaign, runs: list[Run]) -> tuple[bool, str]:
    """(passed, the one line): PASS or FAIL of the claim arm's mean final loss against the target at alpha,
    and why. The fixed-N t-test of the record block (on the numbers as the block prints them); after
    --until-significant the sequential test's anytime-valid p, the only one valid after looking every run."""
    track = campaign.track
    target, alpha = float(track["target"]), float(track["alpha"])
    arm = claim_arm(campaign)
    who = kind_of(campaign).claim_label(arm)
    losses, times = arm_series(runs, arm)
    n = len(losses)
    failed = len(failed_runs(runs, arm))
    notes = [who] if who else []
    if failed:
        notes.append(f"{failed} failed run(s) not counted")
    tail = f"; {', '.join(notes)}" if notes else ""
    if n == 0:
        return False, f"FAIL: no finished run to test against the target {target!r}{tail}"
    mean = sum(losses) / n
    about = f"mean {mean:.4f} over {n} run{'s' if n != 1 else ''}, target {target!r}{tail}"
    if campaign.until_significant:
        p, test = anytime_p_value(losses, target, LOSS_PRIOR), "anytime-valid p"
    else:
        p, test = block_numbers(losses, times, target).p, "p"
    if p != p:  # nan: one run has no spread, so no t-test
        return False, f"FAIL: {n} run gives no p-value, the t-test needs at least 2 ({about})"
    # the record rule is p < alpha; the sequential test stops with success at E >= 1/alpha, i.e. p <= alpha
    passed = p <= alpha if campaign.until_significant else p < alpha
    if passed:
        return True, f"PASS: {test}={p:.4f} {'<=' if p == alpha else '<'} alpha {alpha:g} ({about})"
    return False, f"FAIL: {test}={p:.4f} {'>' if campaign.until_significant else '>='} alpha {alpha:g} ({about})"
