"""`speedrun pool CAMPAIGN CAMPAIGN... [--out FILE]`: compare campaigns of the same two codes read as one
(harness.pooling): each campaign's times, the pooled per-pair differences, val loss and stage times over all runs."""

from __future__ import annotations

from harness.fsio import write_text_atomic
from harness.pooling import pooled_markdown


def cmd_pool(campaigns: list[str], out: str | None = None, allow_differences: bool = False) -> int:
    text = pooled_markdown(campaigns, allow_differences=allow_differences)  # refuses before anything is written
    if out:
        write_text_atomic(out, text)
    print(text, end="")
    return 0
