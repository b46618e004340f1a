"""The live progress of a campaign on the console (stderr): run i of N, step k of M, last val loss, elapsed
and ETA; a line per finished run. The command that runs a campaign gives it to run_campaign as its display.
Run names and reasons come from files and runs: never rendered as markup."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

from harness.results import OK, Run


class LiveDisplay:
    """rich live progress: run i of N, step k of M, last val loss, elapsed and ETA."""

    def __init__(self, n_runs: int, quiet: bool = False):
        self.console = Console(stderr=True, quiet=quiet)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console,
            transient=False,
        )
        self.n_runs = n_runs
        self.campaign_task = self.progress.add_task("campaign", total=n_runs, info="")
        self.run_task = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def run_start(self, k: int, arm: str) -> None:
        if self.run_task is not None:
            self.progress.remove_task(self.run_task)
        # the description is markup (TextColumn): the arm name is escaped, never rendered
        self.run_task = self.progress.add_task(f"run {k + 1}/{self.n_runs} {escape('[' + arm + ']')}", total=None,
                                               info="starting")

    def run_progress(self, p) -> None:  # a campaign.RunProgress
        if self.run_task is None:
            return
        loss = f"val_loss {p.last_val_loss:.4f}" if p.last_val_loss is not None else "val_loss -"
        info = f"step {p.step}  {loss}"
        if p.first_step_unix is None and p.last_compile_unix is not None:  # a silent cold start is compiling
            info += f"  compiling: {p.compile_files} cache files"
        self.progress.update(self.run_task, completed=p.step, total=p.total, info=info)

    def run_done(self, k: int, result: Run) -> None:
        self.progress.advance(self.campaign_task)
        # Text, never markup: a reason quotes the run's own output
        if result.status == OK:
            msg = Text.assemble((f"run {k + 1} ok", "green"), f"  val_loss {result.final_val_loss:.4f}  "
                                f"train_time {result.train_time_s:.3f} s")
        else:
            msg = Text.assemble((f"run {k + 1} failed", "red"), f": {result.reason}")
        self.progress.console.print(msg)
