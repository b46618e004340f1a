"""Step time per stage, measured the same way in every log of a campaign (pure: log text and parsed step lines in,
numbers out).

A comparison asks where the time goes: which stage of the schedule is faster, not only the total. The record's
script prints no stage lines; our tracks print one per stage (`stage:s1 first_step:40 steps:40
steady_step_ms:480.48 ...`). So the stages come from whichever log names them, and every run's time over a stage
is recomputed from its own step lines over the same steps: step k takes the train_time of step line k minus that
of step line k - 1, the first STAGE_WARMUP_STEPS steps of each stage are left out (a stage's first steps compile,
fill the allocator, change the batch), and so is any step right after a validation (its line k - 1 is printed
before the validation's synchronize, so its difference carries the tail of step k - 1's GPU work).
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass

from harness.logs import StepLine

# Our tracks' per-stage line; steady_step_ms is the script's own figure (harness.scaling reads it).
STAGE_LINE_RE = re.compile(r"^stage:(\S+) first_step:(\d+) steps:(\d+) steady_step_ms:([0-9.]+)")
STAGE_WARMUP_STEPS = 5


@dataclass(frozen=True)
class StageWindow:
    name: str
    first: int  # the first step whose time counts
    last: int  # the last one (inclusive)

    @property
    def label(self) -> str:
        return f"{self.first}-{self.last}"


def stage_lines(log_text: str) -> list[tuple[str, int, int, float]]:
    """(name, first step, number of steps, the script's steady ms) of every `stage:` line, in log order."""
    out = []
    for line in log_text.splitlines():
        m = STAGE_LINE_RE.match(line.strip())
        if m:
            out.append((m.group(1), int(m.group(2)), int(m.group(3)), float(m.group(4))))
    return out


def stage_windows(log_text: str) -> list[StageWindow]:
    """The steps each stage's steady time is measured over: steps first+1 .. first+n (step k ends at line k), less
    the first STAGE_WARMUP_STEPS where the stage is longer than that. Empty when the log prints no stage lines."""
    windows = []
    for name, first, n, _ in stage_lines(log_text):
        if n < 1:
            continue
        skip = STAGE_WARMUP_STEPS if n > STAGE_WARMUP_STEPS else 0
        windows.append(StageWindow(name, first + 1 + skip, first + n))
    return windows


def window_step_ms(steps: list[StepLine], window: StageWindow) -> float | None:
    """Mean ms per step over the window from a log's step lines; None when the log has none of its steps."""
    train = {s.step: s.train_time_ms for s in steps if s.val_loss is None}
    validated = {s.step for s in steps if s.val_loss is not None}
    # over the steps the log has, not the window's range: a `stage:` line may claim any number of steps
    deltas = [train[k] - train[k - 1] for k in sorted(train)
              if window.first <= k <= window.last and k - 1 in train and k - 1 not in validated]
    return statistics.fmean(deltas) if deltas else None
