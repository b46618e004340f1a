"""The console summary of a campaign: the runs table, then the timing sections of its record.md."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness.record_md import cache_state, number_text, or_blank, timing_lines
from harness.results import Campaign, Run, is_ok


def print_summary(campaign_dir: str | Path, campaign: Campaign, runs: list[Run], console=None) -> None:
    """The end-of-campaign table and the block, on the console, from the campaign and runs the caller loaded."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console.width = max(console.width, 120)  # piped into a file or CI log: no column cut to "compi…"
    d = Path(campaign_dir)
    # Every cell and the title are Text, never markup: names, statuses and reasons come from files and runs.
    table = Table(title=Text(f"{campaign.track['name']} campaign {campaign.id} ({campaign.status})"))
    for col, justify in (("run", "right"), ("arm", "left"), ("seed", "right"), ("status", "left"),
                         ("val loss", "right"), ("train time (s)", "right"), ("compile (s)", "right"),
                         ("wall (s)", "right"), ("reason", "left")):
        table.add_column(col, justify=justify)
    for r in runs:
        status = Text(str(r.status), style="green" if is_ok(r) else "red")
        table.add_row(Text(str(r.index)), Text(or_blank(r.arm)), Text(or_blank(r.seed)), status,
                      Text(number_text(r.final_val_loss, 4)), Text(number_text(r.train_time_s, 3)),
                      Text(f"{number_text(r.compile_warmup_s, 1)} {cache_state(r)}"), Text(number_text(r.wall_s, 1)),
                      Text(str(r.reason or "")))
    console.print(table)
    # The block(s) and what follows them, record.md's timing sections: what a contributor pastes. Plain print,
    # never wrapped to the terminal width: the block must paste back as valid Python.
    console.file.flush()
    print("\n".join(timing_lines(d, campaign, runs)).strip())
    print(f"\nresults: {d}  (record.md there)")
