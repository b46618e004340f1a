"""`speedrun run`: turn command-line arguments into a campaign (new or resumed) and print its summary."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from harness.campaign import (Arm, arm_environment, gpu_indices, make_arm, new_campaign_dir, parse_env_pairs,
                              run_campaign)
from harness.clocks import locked_clocks
from harness.commands.campaigns import finish_campaign, with_data_path
from harness.commands.progress import LiveDisplay
from harness.errors import HarnessError
from harness.fsio import sha256_file
from harness.record_md import write_record
from harness.record_preflight import prepare_arms
from harness.results import KINDS, RUN, Campaign, kind_of, load_campaign
from harness.rules import DEFAULT_MAX_RUNS, DEFAULT_RUNS
from harness.stop_rules import make_stop_rule


def cmd_run(args: argparse.Namespace) -> int:
    if args.resume:
        given = [flag for flag, value in (("TRACK", args.track), ("--runs", args.runs), ("--script", args.script),
                                          ("--nproc", args.nproc), ("--out", args.out), ("--env", args.env),
                                          ("--data-path", args.data_path), ("--seed-base", args.seed_base),
                                          ("--until-significant", args.until_significant),
                                          ("--max-runs", args.max_runs), ("--add-file", args.add_file),
                                          ("--run-anyway", args.run_anyway)) if value]
        if given:
            raise HarnessError(f"--resume takes the campaign as it was asked; drop {', '.join(given)} "
                               f"(only --quiet, --no-telemetry and --lock-clocks go with it)")
        return resume_campaign(args.resume, telemetry=not args.no_telemetry, quiet=args.quiet,
                               lock_clocks=args.lock_clocks)
    if not args.track:
        raise HarnessError("name a track (e.g. 'speedrun run tiny --runs 5') or --resume CAMPAIGN")
    env = with_data_path(parse_env_pairs(args.env), args.data_path)
    base = make_arm(args.track, name="main", nproc=args.nproc, env=env)
    out = new_campaign_dir(base.track.name, args.out)
    arm = make_arm(args.script, name="main", default_track=base.track, nproc=args.nproc, env=env,
                   code_dir=Path(out) / "code" / "main", add_files=args.add_file) if args.script else base
    prepare_arms([arm], add_files=args.add_file, run_anyway=args.run_anyway)
    stop_rule, extra = None, {}
    if args.until_significant:
        n = args.max_runs or args.runs or DEFAULT_MAX_RUNS
        stop_rule = make_stop_rule(arm.track.target, arm.track.alpha, n, kind=KINDS[RUN].stop_rule)
        extra["until_significant"] = {"max_runs": n}
    elif args.max_runs:
        raise HarnessError("--max-runs goes with --until-significant")
    else:
        n = args.runs or DEFAULT_RUNS
    schedule = ["main"] * n
    seeds = [args.seed_base + k for k in range(n)]
    with _clock_lock(args.lock_clocks, arm):
        campaign_dir = run_campaign(out, [arm], schedule, stop_rule=stop_rule, telemetry=not args.no_telemetry,
                                    seeds=seeds, extra=extra, display=LiveDisplay(len(schedule), quiet=args.quiet),
                                    on_finish=write_record)
    return finish_campaign(campaign_dir)


def resume_campaign(path: str, telemetry: bool = True, quiet: bool = False, lock_clocks: int | None = None) -> int:
    campaign = load_campaign(path)
    if campaign.status == "complete":
        raise HarnessError(f"{path}: this campaign is already complete")
    arms = _stored_arms(campaign, path)
    for a, stored in zip(arms, campaign.arms.values()):
        if not a.script.is_file():
            raise HarnessError(f"{path}: arm {a.name!r} script {a.script} is gone; cannot resume")
        if sha256_file(a.script) != stored["script_sha256"]:
            raise HarnessError(f"{path}: script {a.script} changed since the campaign started; cannot resume")
    stop_rule = None
    if campaign.until_significant:
        t = arms[0].track
        seq = campaign.until_significant
        if not (isinstance(seq, dict) and isinstance(seq.get("max_runs"), int) and seq["max_runs"] >= 1):
            raise HarnessError(f"{Path(path) / 'campaign.json'}: 'until_significant' needs a whole 'max_runs'; "
                               f"cannot resume")
        rule = seq.get("kind", kind_of(campaign).stop_rule)  # compare stores its rule; a plain run does not
        stop_rule = make_stop_rule(t.target, t.alpha, seq["max_runs"], kind=rule)
    with _clock_lock(lock_clocks, arms[0]):
        stored_telemetry = campaign.telemetry if campaign.telemetry is not None else True
        campaign_dir = run_campaign(path, arms, campaign.schedule, stop_rule=stop_rule,
                                    telemetry=telemetry and stored_telemetry, resume=True, seeds=campaign.seeds,
                                    display=LiveDisplay(len(campaign.schedule), quiet=quiet), on_finish=write_record)
    return finish_campaign(campaign_dir)


ARM_KEYS = ("name", "track", "script", "script_sha256", "nproc", "env")


def _stored_arms(campaign: Campaign, path: str) -> list[Arm]:
    """The arms of a campaign.json to resume, checked first: a hand-edited file gets one error line."""
    where = f"{Path(path) / 'campaign.json'}"
    stored, schedule, seeds = campaign.arms, campaign.schedule, campaign.seeds
    if not isinstance(stored, dict) or not stored:
        raise HarnessError(f"{where}: 'arms' must name at least one arm; cannot resume")
    for name, a in stored.items():
        if not isinstance(a, dict):
            raise HarnessError(f"{where}: arm {name!r} is not an object; cannot resume")
        missing = [k for k in ARM_KEYS if k not in a]
        if missing:
            raise HarnessError(f"{where}: arm {name!r} lacks {', '.join(map(repr, missing))}; cannot resume")
    if not isinstance(schedule, list) or not all(isinstance(n, str) and n in stored for n in schedule):
        raise HarnessError(f"{where}: 'schedule' must be a list of the arms' names; cannot resume")
    if seeds is not None and not (isinstance(seeds, list) and len(seeds) == len(schedule)
                                  and all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)):
        raise HarnessError(f"{where}: 'seeds' must be one whole number per scheduled run; cannot resume")
    try:
        return [Arm.from_dict(a) for a in stored.values()]
    except HarnessError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise HarnessError(f"{where}: an arm is malformed ({type(e).__name__}: {e}); cannot resume") from None


def _clock_lock(mhz: int | None, arm: Arm):
    if mhz is None:
        return contextlib.nullcontext()
    return locked_clocks(gpu_indices(arm, arm_environment(arm)), target_mhz=mhz or None)
