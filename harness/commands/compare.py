"""`speedrun compare BASELINE CANDIDATE`: both on this node, in one campaign, interleaved A B B A ...

Why: nodes differ by about a second (seed 003: "appears I got a slightly slower machine this time"), so a
new record is argued against the previous record re-timed on the same machine (seed 001). The schedule, the
statistics and the record.md section are harness/comparison.py's.
"""

from __future__ import annotations

from pathlib import Path

from harness.campaign import is_code_spec, make_arm, new_campaign_dir, run_campaign
from harness.commands.campaigns import finish_campaign, with_data_path
from harness.commands.progress import LiveDisplay
from harness.comparison import balanced_order
from harness.errors import HarnessError
from harness.extract import discard_code
from harness.record_md import write_record
from harness.record_preflight import prepare_arms
from harness.results import BASELINE, CANDIDATE, COMPARE, KINDS
from harness.rules import DEFAULT_COMPARE_RUNS, DEFAULT_MAX_RUNS
from harness.stop_rules import make_stop_rule
from harness.tracks import load_track

def build_arms(baseline: str, candidate: str, nproc: int | None, env: dict[str, str], *,
               code_dir: str | Path | None = None, add_files: list[str] | None = None, track: str | None = None):
    """Two arms; a script, record log or record folder runs against the target of the other side's track (or
    of --track when neither side is one). Record code is extracted into code_dir/<arm>."""
    built = []

    def arm(spec: str, name: str, default_track=None):
        try:
            a = make_arm(spec, name=name, default_track=default_track, nproc=nproc, env=env,
                         code_dir=Path(code_dir) / name if code_dir else None, add_files=add_files)
        except HarnessError as e:
            fail(e)
        built.append(a)
        return a

    def fail(error: HarnessError | str):
        for other in built:  # code extracted for this campaign already: no half campaign folder is left
            if other.code.get("dir"):
                discard_code(other.code)
        raise error if isinstance(error, HarnessError) else HarnessError(error)

    if is_code_spec(baseline) and is_code_spec(candidate):
        side = track or _track_named_by_path(baseline) or _track_named_by_path(candidate)
        if side is None:
            raise HarnessError("name a track for at least one side (e.g. 'speedrun compare short my_train_gpt.py') "
                               "or pass --track: two scripts leave no target loss to compare against")
        t = load_track(side)
        base, cand = arm(baseline, BASELINE, t), arm(candidate, CANDIDATE, t)
    elif is_code_spec(baseline):
        cand = arm(candidate, CANDIDATE)
        base = arm(baseline, BASELINE, cand.track)
    else:
        base = arm(baseline, BASELINE)
        cand = arm(candidate, CANDIDATE, base.track)
    if base.track.target != cand.track.target:
        fail(f"the two tracks have different targets ({base.track.name}: {base.track.target}, "
             f"{cand.track.name}: {cand.track.target}); compare like with like")
    if base.nproc != cand.nproc:
        fail(f"the arms use different process counts ({base.nproc} vs {cand.nproc}); pass --nproc")
    return base, cand


# The competition's record folders live under records/track_1_short/ and records/track_2_medium/.
_TRACK_FOLDERS = {"track_1_short": "short", "track_2_medium": "medium"}


def _track_named_by_path(spec: str) -> str | None:
    return next((_TRACK_FOLDERS[part] for part in Path(spec).resolve().parts if part in _TRACK_FOLDERS), None)


def track_of(baseline: str, candidate: str, track: str | None = None) -> str:
    """The track whose campaign folder this comparison goes to (before any arm is built)."""
    for spec in (candidate, baseline):
        if not is_code_spec(spec):
            return load_track(spec).name
    side = track or _track_named_by_path(baseline) or _track_named_by_path(candidate)
    if side is None:
        raise HarnessError("name a track for at least one side (e.g. 'speedrun compare short my_train_gpt.py') "
                           "or pass --track: two scripts leave no target loss to compare against")
    return load_track(side).name


def cmd_compare(baseline: str, candidate: str, runs: int = DEFAULT_COMPARE_RUNS, until_significant: bool = False,
                max_runs: int | None = None, out: str | None = None, env: dict | None = None,
                nproc: int | None = None, data_path: str | None = None, telemetry: bool = True,
                quiet: bool = False, add_files: list[str] | None = None, track: str | None = None,
                run_anyway: bool = False, seed_base: int = 0) -> int:
    """Run both arms interleaved; print and write the comparison. The verdict (and exit 4 when it fails) is
    the candidate's loss claim against the target; the time gain is reported, not judged. Exit 3 if some
    runs failed."""
    if max_runs is not None and not until_significant:
        raise HarnessError("--max-runs goes with --until-significant")
    out_dir = new_campaign_dir(track_of(baseline, candidate, track), out)
    base, cand = build_arms(baseline, candidate, nproc, with_data_path(dict(env or {}), data_path),
                            code_dir=Path(out_dir) / "code", add_files=add_files, track=track)
    prepare_arms([base, cand], add_files=add_files, run_anyway=run_anyway)
    stop_rule, extra = None, {"compare": {"baseline": baseline, "candidate": candidate, "order": "ABBA"}}
    per_arm = runs
    if until_significant:
        per_arm = max_runs or max(runs, DEFAULT_MAX_RUNS)
        rule = KINDS[COMPARE].stop_rule
        stop_rule = make_stop_rule(cand.track.target, cand.track.alpha, per_arm, kind=rule)
        extra["until_significant"] = {"max_runs": per_arm, "kind": rule}
    schedule = balanced_order(per_arm)
    # Both runs of an A/B pair get the same seed, so seed-to-seed loss variation cancels within a pair. A seeded
    # script repeats its losses at a seed, so a second campaign to pool with the first needs new seeds
    # (--seed-base), or it only measures the same seeds again.
    seeds = [seed_base + k // 2 for k in range(len(schedule))]
    campaign_dir = run_campaign(out_dir, [base, cand], schedule, stop_rule=stop_rule, telemetry=telemetry,
                                kind=COMPARE, seeds=seeds, extra=extra, display=LiveDisplay(len(schedule), quiet=quiet),
                                on_finish=write_record)
    return finish_campaign(campaign_dir)
