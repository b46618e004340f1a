"""`speedrun profile A [B] --step N`: one run of each arm with the PyTorch profiler over the steps after step N,
then their kernels side by side (profile.md in the campaign folder, and a table on the console).

The scripts stay unmodified: harness/profile_hook is put first on the runs' PYTHONPATH, and its sitecustomize
opens the profiler when the script prints its step line `step:N/...`. The runs share the arms' compile caches
with every other campaign, so a profile after a compare starts warm. A profiled run is slower than an unprofiled
one: its times are no timing result, and this campaign gets no record.md."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

import harness.profile_hook
from harness.campaign import is_code_spec, make_arm, new_campaign_dir, run_campaign
from harness.commands.campaigns import EXIT_SOME_RUNS_FAILED, with_data_path
from harness.commands.compare import build_arms, track_of
from harness.commands.progress import LiveDisplay
from harness.fsio import write_text_atomic
from harness.profiles import (Profile, kinds_side_by_side, load_profile, profile_markdown, profiled_runs_markdown,
                              top_kernels)
from harness.record_preflight import prepare_arms
from harness.results import BASELINE, CANDIDATE, COMPARE, OK, RUN, load_runs
from harness.tracks import load_track

HOOK_DIR = Path(harness.profile_hook.__file__).resolve().parent
START_VAR, STEPS_VAR = "SPEEDRUN_PROFILE_STEP", "SPEEDRUN_PROFILE_STEPS"  # read by the hook (its own copy)
EXIT_NO_PROFILE = 1


def profile_environment(env: dict[str, str], step: int, steps: int) -> dict[str, str]:
    """env plus what makes the hook profile: its folder first on PYTHONPATH (before the arm's own or this
    shell's), and the window (step, steps >= 1: the CLI checks both)."""
    inherited = env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    path = os.pathsep.join(p for p in (str(HOOK_DIR), inherited) if p)
    return {**env, "PYTHONPATH": path, START_VAR: str(step), STEPS_VAR: str(steps)}


def cmd_profile(baseline: str, candidate: str | None = None, *, step: int, steps: int = 1, nproc: int | None = None,
                env: dict[str, str] | None = None, data_path: str | None = None, out: str | None = None,
                telemetry: bool = True, quiet: bool = False, add_files: list[str] | None = None,
                track: str | None = None, run_anyway: bool = False) -> int:
    """Exit 0 with every arm profiled, 3 if a run failed, 1 if a run finished without reaching the window."""
    env = profile_environment(with_data_path(dict(env or {}), data_path), step, steps)
    if candidate is None:
        track_name = track_of(baseline, baseline, track)  # the arm's own track, or --track for code
        out_dir = new_campaign_dir(track_name, out)
        default = load_track(track_name) if is_code_spec(baseline) else None
        arms = [make_arm(baseline, name="main", default_track=default, nproc=nproc, env=env,
                         code_dir=Path(out_dir) / "code" / "main", add_files=add_files)]
        kind, sources = RUN, {"main": baseline}
    else:
        out_dir = new_campaign_dir(track_of(baseline, candidate, track), out)
        arms = list(build_arms(baseline, candidate, nproc, env, code_dir=Path(out_dir) / "code",
                               add_files=add_files, track=track))
        kind, sources = COMPARE, {BASELINE: baseline, CANDIDATE: candidate}
    prepare_arms(arms, add_files=add_files, run_anyway=run_anyway)
    schedule = [a.name for a in arms]
    extra = {"profile": {"step": step, "steps": steps, "arms": sources}}
    campaign_dir = run_campaign(out_dir, arms, schedule, telemetry=telemetry, kind=kind, seeds=[0] * len(schedule),
                                extra=extra, display=LiveDisplay(len(schedule), quiet=quiet))
    return report_profiles(campaign_dir, sources, step)


def report_profiles(campaign_dir: str | Path, sources: dict[str, str], step: int, console=None) -> int:
    """Read each run's profile, write profile.md, print the tables; the exit status of the command."""
    d = Path(campaign_dir)
    runs = load_runs(d)
    profiles: dict[str, Profile] = {}
    status = 0
    for r in runs:
        p = load_profile(d / "runs" / str(r.index))
        if p is not None:
            profiles[r.arm] = p
        elif r.status != OK:
            print(f"run {r.index} ({r.arm}) failed before its profile: {r.reason}")
            status = EXIT_SOME_RUNS_FAILED
        else:
            print(f"run {r.index} ({r.arm}) wrote no profile: it never printed the step line step:{step}/... "
                  f"(its last step was {r.final_step}); pick a smaller --step")
            status = status or EXIT_NO_PROFILE
    if not profiles:
        return status or EXIT_NO_PROFILE
    write_text_atomic(d / "profile.md", profile_markdown(profiles, sources) + profiled_runs_markdown(runs))
    print_profiles(profiles, console)
    print(f"\nprofile: {d / 'profile.md'}  (each run's kernels.json, table.txt and trace.json.gz in runs/<k>/profile/)")
    return status


def print_profiles(profiles: dict[str, Profile], console=None) -> None:
    console = console or Console()
    arms = list(profiles)
    # Text cells only: kernel names and arm names come from runs and the command line, never markup
    kinds = Table(title=Text("device time per profiled step (ms)"))
    kinds.add_column("kind")
    for a in arms:
        kinds.add_column(Text(a), justify="right")
    if len(arms) == 2:
        kinds.add_column(Text(f"{arms[1]} - {arms[0]}"), justify="right")
    for row in kinds_side_by_side(profiles):
        cells = [Text(f"{row.ms_per_step[a]:.2f}") for a in arms]
        if len(arms) == 2:
            cells.append(Text(f"{row.ms_per_step[arms[1]] - row.ms_per_step[arms[0]]:+.2f}"))
        kinds.add_row(Text(row.kind), *cells)
    console.print(kinds)
    for a, p in profiles.items():
        table = Table(title=Text(f"{a}: longest kernels (steps {p.first_step}-{p.last_step or 'end'})"))
        for col, justify in (("ms/step", "right"), ("calls/step", "right"), ("kind", "left"), ("name", "left")):
            table.add_column(col, justify=justify)
        for k, kind, ms in top_kernels(p, 10):
            table.add_row(Text(f"{ms:.3f}"), Text(f"{k.calls / (p.steps or 1):.1f}"), Text(kind),
                          Text(k.name if len(k.name) <= 100 else k.name[:97] + "..."))
        console.print(table)
