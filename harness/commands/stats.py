"""`speedrun stats --target T --losses a,b,... --times x,y,...`: the record block for given numbers."""

from __future__ import annotations

from harness.record_block import render_block


def cmd_stats(losses: list[float], times: list[float], target: float, with_p: bool = True) -> int:
    print(render_block(losses, times, target, with_p=with_p), end="")
    return 0
