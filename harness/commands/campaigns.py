"""What every command that runs a campaign (run, resume, compare, scaling) shares: the data path of its
runs and its ending: the summary, the verdict line last, and the exit status."""

from __future__ import annotations

from pathlib import Path

from harness.commands.summary import print_summary
from harness.errors import HarnessError
from harness.results import OK, load_campaign, load_runs
from harness.verdict import verdict

EXIT_SOME_RUNS_FAILED = 3
EXIT_CLAIM_FAILED = 4  # every run finished, but the verdict is FAIL


def finish_campaign(campaign_dir: Path) -> int:
    """Print the campaign's summary and, last, its verdict line; the exit status of every campaign command:
    3 if some runs failed, else 4 if the verdict is FAIL, else 0."""
    campaign, runs = load_campaign(campaign_dir), load_runs(campaign_dir)
    print_summary(campaign_dir, campaign, runs)
    passed, line = verdict(campaign, runs)
    print(line, flush=True)
    if any(r.status != OK for r in runs):
        return EXIT_SOME_RUNS_FAILED
    return 0 if passed else EXIT_CLAIM_FAILED


def with_data_path(env: dict[str, str], data_path: str | None) -> dict[str, str]:
    """env with DATA_PATH set to the absolute --data-path ROOT, the folder holding data/fineweb10B/ (runs
    start in their own folders)."""
    if data_path:
        data = Path(data_path)
        if not data.is_dir():
            raise HarnessError(f"--data-path {data}: no such folder")
        env = {**env, "DATA_PATH": str(data.resolve())}
    return env
