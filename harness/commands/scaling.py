"""`speedrun scaling TRACK --gpus 1,2,...`: run the scaling campaign (harness/scaling.py) and print its tables."""

from __future__ import annotations

from pathlib import Path

from harness.campaign import make_arm, new_campaign_dir, run_campaign
from harness.commands.campaigns import finish_campaign, with_data_path
from harness.commands.progress import LiveDisplay
from harness.errors import HarnessError
from harness.preflight import visible_gpu_count
from harness.record_md import write_record
from harness.record_preflight import prepare_arms
from harness.results import SCALING
from harness.scaling import arm_name, parse_gpu_counts, scaling_schedule
from harness.tracks import load_track


def cmd_scaling(track: str, gpus: str, runs: int, out: str | None = None, env: dict | None = None,
                script: str | None = None, data_path: str | None = None, telemetry: bool = True,
                quiet: bool = False, gpu_count=visible_gpu_count, add_files: list[str] | None = None,
                run_anyway: bool = False) -> int:
    """Run the scaling campaign; print the scaling table. Exit 3 if some runs failed, 4 if the largest count's
    loss claim fails (the verdict), else 0."""
    counts = parse_gpu_counts(gpus)
    env = with_data_path(dict(env or {}), data_path)
    track_def = load_track(track)
    # no GPU at all (or the CPU smoke mode): the pre-flight says so, naming the smoke mode
    if track_def.uses_gpu and not track_def.is_smoke(env) and 0 < (have := gpu_count()) < counts[-1]:
        raise HarnessError(f"--gpus asks for up to {counts[-1]} GPUs; this node shows {have}")
    schedule, seeds = scaling_schedule(counts, runs)
    out_dir = new_campaign_dir(track_def.name, out)
    # every count runs the same code: record code is extracted once, into one folder
    arms = [make_arm(script or str(track_def.script), name=arm_name(k), default_track=track_def, nproc=k, env=env,
                     code_dir=Path(out_dir) / "code" / "record", add_files=add_files) for k in counts]
    prepare_arms(arms, add_files=add_files, run_anyway=run_anyway)
    campaign_dir = run_campaign(out_dir, arms, schedule, telemetry=telemetry, kind=SCALING, seeds=seeds,
                                extra={"scaling": {"gpus": counts, "runs": runs}},
                                display=LiveDisplay(len(schedule), quiet=quiet), on_finish=write_record)
    return finish_campaign(campaign_dir)  # prints the blocks and the scaling tables (record.md's timing section)
