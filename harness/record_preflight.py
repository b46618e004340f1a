"""The pre-flight of arms that run a record's code: before anything launches, print where this node differs
from the pins of the arm's log and STOP when PyTorch does: a record written for one PyTorch may not compile on
another (the seed-001 record's code, written for a 2.10 nightly, failed on 2.11 after minutes of compile). It
also checks what the code downloads at run time against the download cache (`harness.prefetch`) and points
the runs at that cache, offline.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from harness import prefetch
from harness.errors import HarnessError
from harness.extract import RECORD_KINDS, describe_code, discard_code
from harness.fingerprint import fingerprint
from harness.record_pins import pin_differences, torch_mismatch



@dataclass
class ArmFindings:
    arm: str
    differences: list[str] = field(default_factory=list)  # node vs the log's pins
    downloads: list[str] = field(default_factory=list)  # what the code fetches at run time, and where from
    stops: list[str] = field(default_factory=list)  # why it must not launch


def check_arms(arms, fp: dict | None = None) -> list[ArmFindings]:
    """Pins and downloads of every arm; sets each arm's `pin_differences`, `downloads` and, when everything it
    downloads is in the cache, the offline cache environment of its runs."""
    fp = fp if fp is not None else fingerprint()
    out = []
    for arm in arms:
        f = ArmFindings(arm.name)
        if arm.pins:
            f.differences = pin_differences(arm.pins, fp)
            arm.pin_differences = list(f.differences)
            reason = torch_mismatch(arm.pins, fp)
            if reason:
                f.stops.append(reason)
        plan = prefetch.plan_for_script(arm.script, prefetch.data_root(arm.env))
        f.downloads = plan.lines()
        f.stops += plan.stops()
        arm.downloads = plan.records()
        if plan.needs and not plan.missing and not plan.bad:
            arm.env.update(plan.env)
        out.append(f)
    return out


def preflight(arms, *, run_anyway: bool = False, fp: dict | None = None, file=None) -> list[ArmFindings]:
    """Print what differs; raise HarnessError (before anything launches) when an arm must not run, unless
    run_anyway. Plain print: strings from a log are never rendered as markup."""
    file = file or sys.stderr
    findings = check_arms(arms, fp)
    for arm, f in zip(arms, findings):
        if not (f.differences or f.downloads):
            continue
        print(f"pre-flight, arm {arm.name} ({describe_code(arm.code)}):", file=file)
        if f.differences:
            print("  differs from the environment in its log:", file=file)
            for line in f.differences:
                print(f"    - {line}", file=file)
        if f.downloads:
            print("  downloads at run time:", file=file)
            for line in f.downloads:
                print(f"    - {line}", file=file)
    stops = [f"arm {f.arm}: {s}" for f in findings for s in f.stops]
    if stops and not run_anyway:
        raise HarnessError("pre-flight stopped before launching: " + "; ".join(stops)
                           + ". Pass --run-anyway to launch anyway")
    if stops:
        print("pre-flight: --run-anyway given, launching despite: " + "; ".join(stops), file=file)
    return findings


def prepare_arms(arms, *, add_files: list[str] | None = None, run_anyway: bool = False, fp: dict | None = None,
                 file=None) -> list[ArmFindings]:
    """What every campaign command does between building its arms and launching: the pre-flight. When it
    stops, the code it extracted for this campaign is removed again (nothing ran; no half campaign is left)."""
    if add_files and not any(a.code.get("kind") in RECORD_KINDS for a in arms):
        raise HarnessError("--add-file places files beside code extracted from a record log or folder; "
                           "no arm runs such code")
    try:
        return preflight(arms, run_anyway=run_anyway, fp=fp, file=file)
    except HarnessError:
        for a in arms:
            if a.code.get("kind") in RECORD_KINDS:
                discard_code(a.code)
        raise


