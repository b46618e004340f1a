"""`speedrun report CAMPAIGN`: rewrite record.md and the plots from a campaign's files, print its summary."""

from __future__ import annotations

from harness.commands.summary import print_summary
from harness.fsio import remove_stale_tmp
from harness.lock import campaign_lock
from harness.record_md import write_record
from harness.results import load_campaign, load_runs
from harness.verdict import verdict


def cmd_report(campaign_dir: str) -> int:
    """Rewrite record.md and the plots of a campaign from its files; print its summary and verdict."""
    load_campaign(campaign_dir)  # a folder that is not a campaign gets no lock file
    with campaign_lock(campaign_dir):  # record.md and plots are rewritten: not beside a running campaign
        remove_stale_tmp(campaign_dir)
        write_record(campaign_dir)
    campaign, runs = load_campaign(campaign_dir), load_runs(campaign_dir)
    print_summary(campaign_dir, campaign, runs)
    print(verdict(campaign, runs)[1])  # the same last line as the campaign's
    return 0
