"""`speedrun autotune TRACK`: benchmark the track's Triton kernel configs on this GPU and rewrite its frozen
configs (harness/autotune.py)."""

from __future__ import annotations

from harness.autotune import autotune_track
from harness.tracks import load_track


def cmd_autotune(track: str) -> int:
    t = load_track(track)
    autotune_track(t.folder)
    return 0
